"""A small MCP server for the tests, built with the official SDK (``MCPServer``, which was
``FastMCP`` before mcp 2): a clock and a notes tool, plus tools that fail in known ways.

    python -m tests.fakes.mcp_server --notes FILE                      # stdio
    python -m tests.fakes.mcp_server --notes FILE --http --port PORT   # streamable HTTP, /mcp

Tools
    ``clock``           the current time (UTC, ISO 8601), or in ``timezone`` (an IANA name)
    ``add_note``        keeps a note (``text``) in FILE, one JSON line each
    ``list_notes``      the notes kept, one per line
    ``forget_notes``    deletes every note: a destructive tool a persona should not be allowed
    ``broken``          always raises (its error text is known: ``BROKEN_MESSAGE``)
    ``stall``           sleeps ``seconds`` (an hour by default): a tool that hangs

``started_mcp_server`` (below) runs the HTTP form for a test on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

BROKEN_MESSAGE = "the label printer is out of paper"


def build_server(notes: Path) -> MCPServer:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("desk", log_level="WARNING")

    @server.tool()
    def clock(timezone: str = "UTC") -> str:
        """The current date and time, in ISO 8601, in the given IANA time zone (default UTC)."""
        zone = UTC if timezone.upper() == "UTC" else ZoneInfo(timezone)
        return datetime.now(zone).isoformat(timespec="seconds")

    @server.tool()
    def add_note(text: str) -> str:
        """Keep a short note for later."""
        with notes.open("a", encoding="utf-8") as file:
            file.write(json.dumps({"text": text}) + "\n")
        return f"Noted: {text}"

    @server.tool()
    def list_notes() -> str:
        """Every note kept so far, one per line."""
        kept = read_notes(notes)
        return "\n".join(f"- {text}" for text in kept) if kept else "No notes yet."

    @server.tool()
    def forget_notes() -> str:
        """Delete every note."""
        notes.write_text("", encoding="utf-8")
        return "All notes deleted."

    @server.tool()
    def broken() -> str:
        """Print a label (always fails)."""
        raise ToolError(BROKEN_MESSAGE)  # an error the tool reports (a crash's text is not sent)

    @server.tool()
    async def stall(seconds: float = 3600.0) -> str:
        """Take a long time to answer."""
        await asyncio.sleep(seconds)
        return "finally done"

    return server


def read_notes(notes: Path) -> list[str]:
    if not notes.exists():
        return []
    return [json.loads(line)["text"] for line in notes.read_text(encoding="utf-8").splitlines() if line]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stdio_command(notes: Path) -> tuple[str, list[str]]:
    """The command and arguments that run this server over stdio."""
    return sys.executable, ["-m", "tests.fakes.mcp_server", "--notes", str(notes)]


@contextlib.contextmanager
def started_mcp_server(notes: Path, *, port: int | None = None, timeout_s: float = 30.0) -> Iterator[str]:
    """Run the server over streamable HTTP in a child process (on ``port``, else a free one);
    its URL (``.../mcp``). The server stops when the block ends."""
    port = port or free_port()
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.mcp_server",
            "--notes",
            str(notes),
            "--http",
            "--port",
            str(port),
        ],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fake MCP server did not start (exit status {process.poll()})")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=Path, required=True)
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = build_server(args.notes)
    if args.http:
        server.run("streamable-http", host="127.0.0.1", port=args.port)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
