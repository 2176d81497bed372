"""The ``whisperengine`` command: run, chat, doctor, persona, secret, backup, restore, migrate.

Start-up problems (a missing setting, an unreachable service) end the process with one
line on stderr naming what to fix, and exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from bot.app import App, build_app, start_platforms
from bot.logs import configure_logging
from config.settings import Settings
from engine.errors import BackendUnavailable, ConfigError, InputError, LLMError
from engine.health import overall
from engine.llm import ResilientLLM

logger = logging.getLogger("whisperengine")

EXIT_CONFIG = 2
EXIT_INPUT = 1
_PORTABILITY = ("backup", "restore", "migrate")


def _load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from None


async def _wait_for_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


LLM_PING_TIMEOUT_S = 10.0


async def warn_about_unreachable_llms(llm: ResilientLLM, timeout_s: float = LLM_PING_TIMEOUT_S) -> int:
    """One WARNING for each LLM backend that does not answer its ping (an unreachable server, a
    model that is not there), at start-up rather than at the first message; returns how many."""
    unreachable = 0
    for backend in llm.backends:
        try:
            await asyncio.wait_for(backend.ping(), timeout_s)
        except TimeoutError:
            reason = f"no answer within {timeout_s:g}s"
        except (BackendUnavailable, LLMError) as exc:
            reason = str(exc)
        else:
            continue
        unreachable += 1
        logger.warning(
            "LLM backend %s is not reachable (%s); replies use the next backend or apologise until it is",
            backend.name,
            reason,
        )
    return unreachable


async def run(settings: Settings) -> int:
    async with build_app(settings) as app, contextlib.AsyncExitStack() as platforms:
        await start_platforms(app, platforms)
        _print_choices(app, sys.stderr)
        if app.web is not None:
            logger.info("web chat on %s", app.web.url)
        logger.info("WhisperEngine is running; Ctrl-C stops it")
        checked = asyncio.create_task(warn_about_unreachable_llms(app.llm))  # in the background
        platforms.callback(checked.cancel)
        await _wait_for_stop()
        logger.info("shutting down: finishing queued memory writes")
    return 0


async def worker(settings: Settings) -> int:
    """Do the background memory work the bot processes queue in Redis, until SIGINT/SIGTERM."""
    async with build_app(settings, with_web=False, role="worker") as app:
        logger.info(
            "memory worker started: jobs %s; store %s; vectors %s",
            app.choices["jobs"],
            app.choices["store"],
            app.choices["vectors"],
        )
        await _wait_for_stop()
        logger.info("memory worker stopping: finishing the jobs it holds")
    return 0


async def chat(settings: Settings, user: str | None) -> int:
    from bot.terminal import chat as terminal_chat

    async with build_app(settings, with_web=False) as app:
        await terminal_chat(app.engine, user_name=user)
    return 0


def _print_choices(app: App, out: TextIO) -> None:
    for port, choice in app.choices.items():
        print(f"  {port:<9} {choice}", file=out)
    for note in app.notes:
        print(f"  note: {note}", file=out)


async def _print_voice(settings: Settings) -> None:
    """Which speech engines would serve voice messages, and why others were skipped."""
    from voice import build_voice

    stt, tts, notes = await build_voice(settings)
    try:
        print("voice")
        for note in notes:
            print(f"  {note}")
    finally:
        for speech in (stt, tts):
            if speech is not None:
                await speech.aclose()


async def doctor(settings: Settings) -> int:
    print("WhisperEngine doctor")
    print(f"  data dir  {settings.data_dir.resolve()}")
    async with build_app(settings, with_web=False) as app:
        _print_choices(app, sys.stdout)
        health = await app.health()
        from adapters.probe import probe_platforms

        health.update(await probe_platforms(settings))  # each platform whose token is set
        print("health")
        for item in health.values():
            latency = f" {item.latency_ms:.1f} ms" if item.latency_ms is not None else ""
            detail = f" — {item.detail}" if item.detail else ""
            print(f"  {item.name:<9} {item.status}{latency}{detail}")
        print(f"overall: {overall(health)}")
        await _print_voice(settings)
        print(f"personas: {', '.join(app.engine.personas.library.names())}")
        tokens = {
            "discord": settings.discord_token,
            "telegram": settings.telegram_token,
            "slack": settings.slack_bot_token,
        }
        print(f"platforms: {', '.join(n for n, t in tokens.items() if t is not None) or 'none configured'}")
        web = f"http://{settings.web_host}:{settings.web_port}" if settings.web_enabled else "off"
        print(f"web: {web}")
        return 0 if all(h.status != "down" for h in health.values()) else 1


def persona_command(settings: Settings, action: str, file: Path | None, replace: bool) -> int:
    """``persona list``, and ``persona import FILE``: a character card (PNG or JSON) written to the
    persona directory. A running bot reads it at its next start (``/persona import`` on Discord
    makes it available at once)."""
    from engine.cards import MAX_CARD_FILE_BYTES, check_card_size, read_card
    from engine.persona import PersonaLibrary
    from engine.prompt import PromptBudget

    library = PersonaLibrary.from_dirs(settings.persona_dirs, default=settings.default_persona)
    if action == "list":
        for name in library.names():
            persona = library.get(name)
            default = " (default)" if name == library.default.name else ""
            description = f" — {persona.description}" if persona and persona.description else ""
            print(f"{name}{default}{description}")
        return 0
    if file is None:
        raise InputError("persona import needs the card file: whisperengine persona import FILE")
    try:
        check_card_size(file.stat().st_size, file.name)  # before reading it
        with file.open("rb") as handle:
            data = handle.read(MAX_CARD_FILE_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read {file}: {exc.strerror or exc}") from None
    card = read_card(data, filename=file.name)
    _, path = library.install(card.document, replace=replace)
    budget = PromptBudget(total_tokens=settings.context_token_budget, reply_tokens=settings.llm_max_tokens)
    print(f"{card.summary(budget)}\nwritten to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="whisperengine", description="A self-hosted AI companion bot.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the bot: web chat, and each platform whose token is set")
    chat_parser = sub.add_parser("chat", help="chat with the bot in this terminal")
    chat_parser.add_argument("--user", help="your name in the conversation (default: your login)")
    sub.add_parser("doctor", help="show what was detected and chosen for every port, and its health")
    sub.add_parser(
        "worker", help="do the background memory work that bots with MEMORY_WORKER=external queue in Redis"
    )
    persona_parser = sub.add_parser("persona", help="list personas, or import a character card as one")
    persona_actions = persona_parser.add_subparsers(dest="action", required=True)
    persona_actions.add_parser("list", help="the personas this bot knows")
    import_parser = persona_actions.add_parser(
        "import", help="import a character card (V1/V2/V3, PNG or JSON) into the persona directory"
    )
    import_parser.add_argument("file", type=Path, help="the card: a PNG with the card inside, or a JSON file")
    import_parser.add_argument("--replace", action="store_true", help="overwrite a persona of the same name")
    secret_parser = sub.add_parser("secret", help="store secrets encrypted with ENCRYPTION_KEY")
    secret_parser.add_argument("action", choices=["set", "delete", "list", "new-key"])
    secret_parser.add_argument("name", nargs="?", help="the secret's variable name, e.g. OPENAI_API_KEY")
    from bot.portability import add_commands as add_portability_commands

    add_portability_commands(sub)  # backup, restore, migrate
    args = parser.parse_args(argv)

    try:
        settings = _load_settings()
        quiet = (
            args.command in ("chat", "doctor", "persona", "secret", *_PORTABILITY)
            and settings.log_level.upper() == "INFO"
        )
        configure_logging("WARNING" if quiet else settings.log_level, settings.secrets(), settings.log_format)
        match args.command:
            case "run":
                return asyncio.run(run(settings))
            case "chat":
                return asyncio.run(chat(settings, args.user))
            case "doctor":
                return asyncio.run(doctor(settings))
            case "worker":
                return asyncio.run(worker(settings))
            case "persona":
                return persona_command(
                    settings, args.action, getattr(args, "file", None), getattr(args, "replace", False)
                )
            case "secret":
                from bot.secret_command import secret_command

                return asyncio.run(secret_command(settings, args.action, args.name))
            case "backup" | "restore" | "migrate":
                from bot.portability import run_command

                return run_command(settings, args)
    except (ConfigError, BackendUnavailable) as exc:
        print(f"whisperengine: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except InputError as exc:
        print(f"whisperengine: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
