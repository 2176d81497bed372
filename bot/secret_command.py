"""``whisperengine secret``: store, list and delete encrypted secrets; make a key.

    whisperengine secret new-key          print a fresh ENCRYPTION_KEY
    whisperengine secret set NAME         read the value from the terminal (hidden) or stdin
    whisperengine secret delete NAME
    whisperengine secret list             the names stored (never the values)

The value is never taken from the command line, where it would land in the shell history
and the process list.
"""

from __future__ import annotations

import getpass
import sys
from typing import TextIO

from config.settings import Settings
from engine.errors import ConfigError
from storage.secrets import SecretStore, new_key, storable_secrets


def _read_value(name: str, stdin: TextIO) -> str:
    if stdin.isatty():
        return getpass.getpass(f"{name}: ")
    return stdin.readline().rstrip("\r\n")


async def secret_command(
    settings: Settings, action: str, name: str | None, *, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout
) -> int:
    if action == "new-key":
        print(new_key(), file=out)
        return 0
    if action in ("set", "delete"):
        if not name:
            raise ConfigError(f"`secret {action}` needs a NAME: one of {', '.join(storable_secrets())}")
        name = SecretStore.check_name(name)
    if action == "set" and settings.encryption_key is None:
        raise ConfigError("storing a secret needs an encryption key", variable="ENCRYPTION_KEY")
    value = _read_value(name, stdin) if action == "set" and name else ""

    from bot.app import make_store

    store, _ = make_store(settings)
    await store.start()
    try:
        secrets = SecretStore(store, settings.encryption_key)
        match action:
            case "set":
                assert name is not None
                await secrets.set(name, value)
                print(f"{name} stored, encrypted; the bot uses it when {name} is not set", file=out)
            case "delete":
                assert name is not None
                found = await secrets.delete(name)
                print(f"{name} {'deleted' if found else 'was not stored'}", file=out)
            case _:
                for stored in await secrets.stored_names():
                    print(stored, file=out)
    finally:
        await store.aclose()
    return 0
