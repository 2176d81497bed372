"""``whisperengine chat``: talk to the engine in a terminal, one local user, streamed."""

from __future__ import annotations

import asyncio
import getpass
import sys
from typing import TextIO

from engine.events import UniversalMessage
from engine.pipeline import Engine

PROMPT = "you> "
EXIT_WORDS = {"/quit", "/exit", ":q"}


async def _read_line(stream: TextIO) -> str | None:
    line = await asyncio.to_thread(stream.readline)
    return line if line else None


async def chat(
    engine: Engine,
    *,
    user_name: str | None = None,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    bot_label: str = "bot",
) -> int:
    """Read lines, answer each with a streamed reply; returns the number of messages answered."""
    name = user_name or getpass.getuser()
    interactive = stdin.isatty()
    if interactive:
        stdout.write(f"Chatting as {name}. Type /quit to leave.\n")
    answered = 0
    while True:
        if interactive:
            stdout.write(PROMPT)
            stdout.flush()
        line = await _read_line(stdin)
        if line is None:
            break
        text = line.strip()
        if not text:
            continue
        if text in EXIT_WORDS:
            break
        message = UniversalMessage(
            content=text,
            user_id=name,
            user_name=name,
            platform="cli",
            channel_id=f"terminal-{name}",
            is_direct=True,
        )
        stdout.write(f"{bot_label}> ")
        stdout.flush()
        async for chunk in engine.handle(message):
            stdout.write(chunk)
            stdout.flush()
        stdout.write("\n")
        stdout.flush()
        answered += 1
    return answered
