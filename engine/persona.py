"""Personas: who the bot is, loaded from YAML, chosen per channel or guild.

A persona file looks like::

    name: ember
    description: A warm, curious companion.
    system_prompt: |
      You are Ember, ...
    style: Short, warm sentences. Ask one question at a time.
    short_prompt: You are Ember, a warm companion.   # optional: the whole persona for a small
                                                     # model (compact prompts); default: the
                                                     # first sentence of system_prompt
    voice: en_US-joe-medium          # optional, for text-to-speech
    voice_replies: true              # optional: also answer in speech where the platform
                                     # can (Discord voice messages); default false
    examples:                        # optional example exchanges
      - user: I had a rough day.
        assistant: I'm sorry. Want to tell me what happened?

The active persona of a message is the one set for its channel, else for its guild,
else the default; choices are stored as settings in the conversation store. The default is
``DEFAULT_PERSONA`` unless the owner chose another (the owner's console): that choice is
stored too, under the scope :data:`DEFAULT_SCOPE`, and outlives a restart.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.errors import ConfigError
from engine.events import UniversalMessage
from engine.memo import SettingsMemo
from engine.ports import ConversationStore

logger = logging.getLogger(__name__)

PERSONA_SETTING = "persona"
DEFAULT_SCOPE = "global"
"""The scope of the owner's choice of default persona (no user key or channel scope is
without a colon, so none can collide with it)."""


@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    system_prompt: str
    description: str = ""
    style: str = ""
    voice: str | None = None
    examples: tuple[tuple[str, str], ...] = ()
    voice_replies: bool = False
    """Also speak each reply (in ``voice``) where the platform carries voice messages."""
    short_prompt: str = ""
    """The persona in a sentence or two, for a small model; empty: the system prompt's first sentence."""

    def system_text(self) -> str:
        """The persona's part of the system prompt: always sent, never trimmed."""
        parts = [self.system_prompt.strip()]
        if self.style:
            parts.append(f"Style: {self.style.strip()}")
        if self.examples:
            lines = ["Examples of how you talk:"]
            for user, assistant in self.examples:
                lines.append(f"User: {user}\nYou: {assistant}")
            parts.append("\n".join(lines))
        return "\n\n".join(parts)

    def compact_text(self) -> str:
        """The persona for a small model's short system prompt (see ``short_prompt``)."""
        if self.short_prompt.strip():
            return " ".join(self.short_prompt.split())
        text = " ".join(self.system_prompt.split())
        match = _FIRST_SENTENCE.match(text)
        return match.group(0) if match else text


_FIRST_SENTENCE = re.compile(r".+?[.!?](?=\s|$)")


def parse_persona(data: Mapping[str, Any], *, source: str) -> Persona:
    """Validate one persona document; raises ConfigError naming the file and the field."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"persona file {source} must be a mapping")
    name, prompt = data.get("name"), data.get("system_prompt")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"persona file {source} needs a non-empty 'name'")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"persona file {source} needs a non-empty 'system_prompt'")
    examples: list[tuple[str, str]] = []
    for item in data.get("examples") or []:
        if not isinstance(item, Mapping) or not {"user", "assistant"} <= item.keys():
            raise ConfigError(f"persona file {source}: each example needs 'user' and 'assistant'")
        examples.append((str(item["user"]), str(item["assistant"])))
    voice = data.get("voice")
    voice_replies = data.get("voice_replies")
    if voice_replies is None:  # absent, or an empty ``voice_replies:``
        voice_replies = False
    elif not isinstance(voice_replies, bool):
        raise ConfigError(
            f"persona file {source}: 'voice_replies' must be true or false, not {voice_replies!r}"
        )
    return Persona(
        name=name.strip().lower(),
        system_prompt=prompt,
        description=str(data.get("description") or ""),
        style=str(data.get("style") or ""),
        voice=str(voice) if voice else None,
        examples=tuple(examples),
        voice_replies=voice_replies,
        short_prompt=str(data.get("short_prompt") or ""),
    )


def load_persona_file(path: Path) -> Persona:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read persona file {path}: {exc}") from exc
    return parse_persona(data, source=str(path))


class PersonaLibrary:
    """The personas known to this process, by name."""

    def __init__(self, personas: Iterable[Persona], *, default: str) -> None:
        self._by_name = {p.name: p for p in personas}
        if default not in self._by_name:
            raise ConfigError(
                f"default persona {default!r} not found (have: {', '.join(sorted(self._by_name))})",
                variable="DEFAULT_PERSONA",
            )
        self.default = self._by_name[default]

    @classmethod
    def from_dirs(cls, dirs: Iterable[Path], *, default: str) -> PersonaLibrary:
        """Load every ``*.yaml`` of each directory; a later directory overrides an earlier one."""
        found: dict[str, Persona] = {}
        for directory in dirs:
            if not directory.is_dir():
                continue
            for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
                persona = load_persona_file(path)
                found[persona.name] = persona
                logger.debug("loaded persona %s from %s", persona.name, path)
        return cls(found.values(), default=default)

    def get(self, name: str) -> Persona | None:
        return self._by_name.get(name.strip().lower())

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)


def channel_scope(platform: str, channel_id: str) -> str:
    return f"channel:{platform}:{channel_id}"


def guild_scope(platform: str, guild_id: str) -> str:
    return f"guild:{platform}:{guild_id}"


class PersonaSelector:
    """Finds and sets the active persona of a channel or guild.

    Choices are read through a small in-process memo (they change rarely and are read on
    every message); a choice made through this selector is visible at once.
    """

    def __init__(
        self, library: PersonaLibrary, store: ConversationStore, *, memo_ttl_s: float = 30.0
    ) -> None:
        self.library = library
        self.configured_default = library.default
        """``DEFAULT_PERSONA``: the default while the owner has chosen none."""
        self._store = store
        self._memo: SettingsMemo[str, str | None] = SettingsMemo(ttl_s=memo_ttl_s)

    async def _choice(self, scope: str) -> str | None:
        async def read() -> str | None:
            value = await self._store.get_setting(scope, PERSONA_SETTING)
            return value if isinstance(value, str) else None

        return await self._memo.get(scope, read)

    def _remember(self, scope: str, name: str | None) -> None:
        self._memo.put(scope, name)

    async def for_message(self, message: UniversalMessage) -> Persona:
        scopes = [channel_scope(message.platform, message.channel_id)]
        if message.guild_id:
            scopes.append(guild_scope(message.platform, message.guild_id))
        for scope in scopes:
            name = await self._choice(scope)
            persona = self.library.get(name) if name else None
            if persona is not None:
                return persona
        return await self.default()

    async def default(self) -> Persona:
        """The default persona: the owner's stored choice, else ``DEFAULT_PERSONA``. Also kept
        as ``library.default``, which code without a store at hand reads."""
        name = await self._choice(DEFAULT_SCOPE)
        persona = (self.library.get(name) if name else None) or self.configured_default
        self.library.default = persona
        return persona

    async def set_default(self, name: str | None) -> Persona:
        """Make ``name`` the default persona, stored (``None``: back to ``DEFAULT_PERSONA``);
        raises ConfigError for unknown names."""
        if name is None:
            await self._store.delete_setting(DEFAULT_SCOPE, PERSONA_SETTING)
            self._remember(DEFAULT_SCOPE, None)
            self.library.default = self.configured_default
            return self.configured_default
        persona = await self.set(DEFAULT_SCOPE, name)
        assert persona is not None  # set() returns the persona of a name
        self.library.default = persona
        return persona

    async def set(self, scope: str, name: str | None) -> Persona | None:
        """Choose ``name`` for the scope (``None`` clears it); raises ConfigError for unknown names."""
        if name is None:
            await self._store.delete_setting(scope, PERSONA_SETTING)
            self._remember(scope, None)
            return None
        persona = self.library.get(name)
        if persona is None:
            raise ConfigError(f"unknown persona {name!r}; available: {', '.join(self.library.names())}")
        await self._store.set_setting(scope, PERSONA_SETTING, persona.name)
        self._remember(scope, persona.name)
        return persona
