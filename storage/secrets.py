"""Secrets stored at run time, encrypted with Fernet (AES-128-CBC + HMAC-SHA256).

A :class:`SecretStore` keeps named secrets in the conversation store's settings table
(scope ``secrets``), each value written as ``fernet:v1:<token>`` so an encrypted value is
recognisable in the database; the plaintext is never stored. The key comes from
``ENCRYPTION_KEY`` (``whisperengine secret new-key`` makes one).

Which secrets may be stored: every secret setting (``OPENAI_API_KEY``, ``DISCORD_TOKEN``...)
except ``ENCRYPTION_KEY`` itself and ``API_TOKEN``. At start the bot fills each secret
setting left unset in the environment from the store (:func:`apply_stored_secrets`); one
that cannot be decrypted is reported and skipped, so a wrong key never stops the bot.
"""

from __future__ import annotations

import logging
from typing import get_args

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr

from config.settings import Settings
from engine.errors import ConfigError, StorageError
from engine.ports import ConversationStore

logger = logging.getLogger(__name__)

SECRETS_SCOPE = "secrets"
PREFIX = "fernet:v1:"
KEY_VARIABLE = "ENCRYPTION_KEY"

# Guarding the REST API (API_TOKEN) and the encryption itself must not depend on the database.
_NOT_STORABLE = frozenset({"encryption_key", "api_token"})


def storable_secrets() -> list[str]:
    """The environment names of the secrets that may be stored, sorted."""
    return sorted(
        name.upper()
        for name, field in Settings.model_fields.items()
        if name not in _NOT_STORABLE
        and (field.annotation is SecretStr or SecretStr in get_args(field.annotation))
    )


def new_key() -> str:
    """A fresh random key for ``ENCRYPTION_KEY``."""
    return Fernet.generate_key().decode()


def _fernet(key: SecretStr | str | None) -> Fernet:
    if key is None:
        raise ConfigError("storing or reading a secret needs an encryption key", variable=KEY_VARIABLE)
    raw = key.get_secret_value() if isinstance(key, SecretStr) else key
    try:
        return Fernet(raw.strip().encode())
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            "the encryption key is not a Fernet key (32 url-safe base64-encoded bytes; "
            "make one with `whisperengine secret new-key`)",
            variable=KEY_VARIABLE,
        ) from exc


class SecretStore:
    """Named secrets in the store's settings table, encrypted with ``key``."""

    def __init__(self, store: ConversationStore, key: SecretStr | str | None) -> None:
        self._store = store
        self._key = key

    @staticmethod
    def check_name(name: str) -> str:
        """The environment name of a storable secret (any case in, upper case out)."""
        upper = name.strip().upper()
        if upper not in storable_secrets():
            raise ConfigError(
                f"{name!r} is not a secret that can be stored; one of: {', '.join(storable_secrets())}"
            )
        return upper

    async def set(self, name: str, value: str) -> None:
        name = self.check_name(name)
        if not value:
            raise ConfigError(f"the value of {name} is empty")
        token = _fernet(self._key).encrypt(value.encode()).decode()
        await self._store.set_setting(SECRETS_SCOPE, name, PREFIX + token)

    async def get(self, name: str) -> str | None:
        """The secret's plaintext; None when not stored. ConfigError when it cannot be decrypted."""
        name = self.check_name(name)
        stored = await self._store.get_setting(SECRETS_SCOPE, name)
        if stored is None:
            return None
        if not isinstance(stored, str) or not stored.startswith(PREFIX):
            raise StorageError(f"the stored secret {name} is not a {PREFIX}… value")
        try:
            return _fernet(self._key).decrypt(stored.removeprefix(PREFIX).encode()).decode()
        except InvalidToken as exc:
            raise ConfigError(
                f"the stored secret {name} cannot be decrypted: it was stored with another key",
                variable=KEY_VARIABLE,
            ) from exc

    async def delete(self, name: str) -> bool:
        """Remove the secret; False when it was not stored."""
        name = self.check_name(name)
        if await self._store.get_setting(SECRETS_SCOPE, name) is None:
            return False
        await self._store.delete_setting(SECRETS_SCOPE, name)
        return True

    async def stored_names(self) -> list[str]:
        """The names of the secrets stored (their values are not decrypted)."""
        return [n for n in storable_secrets() if await self._store.get_setting(SECRETS_SCOPE, n) is not None]


async def apply_stored_secrets(
    settings: Settings, store: ConversationStore, notes: list[str]
) -> tuple[Settings, list[str]]:
    """``settings`` with each secret left unset filled from the store; and the values filled.

    Nothing stored: ``settings`` unchanged, whatever ENCRYPTION_KEY is. A stored secret that
    cannot be read (no key, wrong key) is logged, noted and skipped: the bot still starts.
    """
    secrets = SecretStore(store, settings.encryption_key)
    names = [n for n in await secrets.stored_names() if getattr(settings, n.lower()) is None]
    update: dict[str, SecretStr] = {}
    for name in names:
        try:
            value = await secrets.get(name)
        except (ConfigError, StorageError) as exc:
            note = f"stored secret {name} not used: {exc}"
            logger.error("%s", note)
            notes.append(note)
            continue
        if value:
            update[name.lower()] = SecretStr(value)
    if not update:
        return settings, []
    logger.info("using stored secrets: %s", ", ".join(sorted(n.upper() for n in update)))
    return settings.model_copy(update=update), [v.get_secret_value() for v in update.values()]
