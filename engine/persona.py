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
    tools: [clock.now, notes.*]      # optional: the MCP tools it may use (server.tool or
                                     # server.*; see the README's "Tools over MCP"); default none

Personas imported from character cards (``engine/cards.py``) also use these optional keys::

    display_name: Seraphina          # how the persona is named in its texts ({{char}}); default: name
    character: ...                   # who the character is (the card's description)
    personality: ...
    scenario: ...
    first_message: ...               # the persona's opening line: the first turn of every prompt
    example_dialogue: ...            # example chat as written (when not given as ``examples``)
    post_history_instructions: ...   # said after the conversation, in the context message
    lorebook:                        # see engine/lorebook.py
      scan_depth: 4
      token_budget: 500
      entries:
        - keys: [Eldoria]
          content: Eldoria is a forest kingdom.
          # optional: secondary_keys, selective, constant, enabled, case_sensitive,
          # insertion_order, priority, name

In every text, ``{{char}}`` stands for the persona's display name and ``{{user}}`` for the name
of the person it is talking with (filled in when the prompt is built).

The active persona of a message is the one set for its channel, else for its guild,
else the default; choices are stored as settings in the conversation store. The default is
``DEFAULT_PERSONA`` unless the owner chose another (the owner's console): that choice is
stored too, under the scope :data:`DEFAULT_SCOPE`, and outlives a restart.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.errors import ConfigError, InputError
from engine.events import UniversalMessage
from engine.lorebook import Lorebook, LoreEntry
from engine.memo import SettingsMemo
from engine.ports import ConversationStore

logger = logging.getLogger(__name__)

PERSONA_SETTING = "persona"
DEFAULT_SCOPE = "global"
"""The scope of the owner's choice of default persona (no user key or channel scope is
without a colon, so none can collide with it)."""


_MACRO = re.compile(r"\{\{\s*(char|user)\s*\}\}", re.IGNORECASE)


def fill_macros(text: str, *, char: str, user: str) -> str:
    """``{{char}}`` and ``{{user}}`` (any case) replaced by the persona's and the user's name."""
    if "{{" not in text:
        return text
    return _MACRO.sub(lambda m: char if m.group(1).lower() == "char" else user, text)


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
    tools: tuple[str, ...] = ()
    """The tools it may use (allow-list: ``server.tool`` or ``server.*``); empty: none."""
    display_name: str = ""
    """How the persona is named in its texts (``{{char}}``); empty: ``name``."""
    character: str = ""
    """Who the character is, at length (a character card's description)."""
    personality: str = ""
    scenario: str = ""
    example_dialogue: str = ""
    """Example chat as written (``{{user}}: ...`` / ``{{char}}: ...`` lines)."""
    first_message: str = ""
    """The persona's opening line: the first turn of every prompt, after the persona."""
    post_history_instructions: str = ""
    """Said after the conversation's turns, in the context message."""
    lorebook: Lorebook | None = None

    @property
    def speaker(self) -> str:
        """The name ``{{char}}`` stands for."""
        return self.display_name.strip() or self.name

    def system_text(self) -> str:
        """The persona's part of the system prompt: always sent, never trimmed."""
        parts = [self.system_prompt.strip()]
        if self.character.strip():
            parts.append(self.character.strip())
        if self.personality.strip():
            parts.append(f"{self.speaker}'s personality: {self.personality.strip()}")
        if self.scenario.strip():
            parts.append(f"Scenario: {self.scenario.strip()}")
        if self.style:
            parts.append(f"Style: {self.style.strip()}")
        if self.examples:
            lines = ["Examples of how you talk:"]
            for user, assistant in self.examples:
                lines.append(f"User: {user}\nYou: {assistant}")
            parts.append("\n".join(lines))
        if self.example_dialogue.strip():
            parts.append(f"Example dialogue:\n{self.example_dialogue.strip()}")
        return "\n\n".join(parts)

    def compact_text(self) -> str:
        """The persona for a small model's short system prompt (see ``short_prompt``)."""
        if self.short_prompt.strip():
            return " ".join(self.short_prompt.split())
        text = " ".join(self.system_prompt.split())
        match = _FIRST_SENTENCE.match(text)
        return match.group(0) if match else text


_FIRST_SENTENCE = re.compile(r".+?[.!?](?=\s|$)")
_TOOL = re.compile(r"[^.\s]+\.[^\s]+")  # server.tool, server.*


def _text(data: Mapping[str, Any], key: str, source: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise ConfigError(f"persona file {source}: {key!r} must be text")
    return str(value)


def _keys(value: Any, field: str, source: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"persona file {source}: lorebook {field!r} must be a list of words")
    return tuple(k for k in value if k.strip())


def _flag(entry: Mapping[str, Any], key: str, default: bool, source: str) -> bool:
    value = entry.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"persona file {source}: lorebook {key!r} must be true or false, not {value!r}")
    return value


def _number(entry: Mapping[str, Any], key: str, source: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"persona file {source}: lorebook {key!r} must be a number, not {value!r}")
    return int(value)


def parse_lorebook(data: Any, *, source: str) -> Lorebook | None:
    """The ``lorebook`` mapping of a persona file (see the module docstring)."""
    if data is None:
        return None
    if not isinstance(data, Mapping) or not isinstance(data.get("entries") or [], list):
        raise ConfigError(f"persona file {source}: 'lorebook' needs a list of 'entries'")
    entries = []
    for item in data.get("entries") or []:
        if not isinstance(item, Mapping) or not isinstance(item.get("content"), str):
            raise ConfigError(f"persona file {source}: each lorebook entry needs a 'content' text")
        entries.append(
            LoreEntry(
                keys=_keys(item.get("keys"), "keys", source),
                content=item["content"],
                secondary_keys=_keys(item.get("secondary_keys"), "secondary_keys", source),
                selective=_flag(item, "selective", False, source),
                constant=_flag(item, "constant", False, source),
                enabled=_flag(item, "enabled", True, source),
                case_sensitive=_flag(item, "case_sensitive", False, source),
                insertion_order=_number(item, "insertion_order", source) or 0,
                priority=_number(item, "priority", source) or 0,
                name=str(item.get("name") or ""),
            )
        )
    scan_depth, token_budget = _number(data, "scan_depth", source), _number(data, "token_budget", source)
    return Lorebook(
        entries=tuple(entries),
        scan_depth=max(scan_depth, 0) if scan_depth is not None else None,
        token_budget=token_budget if token_budget and token_budget > 0 else None,
    )


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
    tools = data.get("tools") or []
    if not isinstance(tools, list) or not all(
        isinstance(t, str) and _TOOL.fullmatch(t.strip()) for t in tools
    ):
        raise ConfigError(f"persona file {source}: 'tools' must be a list of names like server.tool")
    return Persona(
        name=name.strip().lower(),
        system_prompt=prompt,
        description=_text(data, "description", source),
        style=_text(data, "style", source),
        voice=str(voice) if voice else None,
        examples=tuple(examples),
        voice_replies=voice_replies,
        short_prompt=_text(data, "short_prompt", source),
        display_name=_text(data, "display_name", source),
        character=_text(data, "character", source),
        personality=_text(data, "personality", source),
        scenario=_text(data, "scenario", source),
        example_dialogue=_text(data, "example_dialogue", source),
        first_message=_text(data, "first_message", source),
        post_history_instructions=_text(data, "post_history_instructions", source),
        lorebook=parse_lorebook(data.get("lorebook"), source=source),
        tools=tuple(t.strip() for t in tools),
    )


def load_persona_file(path: Path) -> Persona:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read persona file {path}: {exc}") from exc
    return parse_persona(data, source=str(path))


class PersonaLibrary:
    """The personas known to this process, by name.

    ``import_dir``: where :meth:`install` writes new persona files (the user's persona
    directory, the last one read by :meth:`from_dirs`); None: installing is refused.
    """

    def __init__(self, personas: Iterable[Persona], *, default: str, import_dir: Path | None = None) -> None:
        self._by_name = {p.name: p for p in personas}
        if default not in self._by_name:
            raise ConfigError(
                f"default persona {default!r} not found (have: {', '.join(sorted(self._by_name))})",
                variable="DEFAULT_PERSONA",
            )
        self.default = self._by_name[default]
        self.import_dir = import_dir

    @classmethod
    def from_dirs(cls, dirs: Iterable[Path], *, default: str) -> PersonaLibrary:
        """Load every ``*.yaml`` of each directory; a later directory overrides an earlier one."""
        found: dict[str, Persona] = {}
        directories = list(dirs)
        for directory in directories:
            if not directory.is_dir():
                continue
            for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
                persona = load_persona_file(path)
                found[persona.name] = persona
                logger.debug("loaded persona %s from %s", persona.name, path)
        return cls(found.values(), default=default, import_dir=directories[-1] if directories else None)

    def get(self, name: str) -> Persona | None:
        return self._by_name.get(name.strip().lower())

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def install(self, document: Mapping[str, Any], *, replace: bool = False) -> tuple[Persona, Path]:
        """Write a persona document to ``import_dir`` as ``NAME.yaml`` and add it to the library.

        Refused (InputError, nothing written) when a persona of that name exists and ``replace``
        is false, or when the document is not a valid persona. The file is written whole or not
        at all (a temporary file, then renamed)."""
        if self.import_dir is None:
            raise ConfigError("this bot has no persona directory to import into", variable="PERSONA_DIR")
        try:
            persona = parse_persona(document, source="(imported)")
        except ConfigError as exc:
            raise InputError(str(exc)) from exc
        if not _SAFE_NAME.fullmatch(persona.name):
            raise InputError(f"{persona.name!r} cannot be a persona name (letters, digits, - and _ only)")
        path = self.import_dir / f"{persona.name}.yaml"
        others = [self.import_dir / f"{persona.name}.yml"]
        if not replace and (persona.name in self._by_name or path.exists() or others[0].exists()):
            raise InputError(
                f"a persona named {persona.name!r} already exists; import it with replace to overwrite it"
            )
        text = _persona_yaml(document, persona)
        temporary = self.import_dir / f".{persona.name}.yaml.tmp"
        try:
            self.import_dir.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(text)
            temporary.replace(path)
            for other in others:  # a .yml of the same name would be read after it and win
                other.unlink(missing_ok=True)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise ConfigError(f"cannot write persona file {path}: {exc}", variable="PERSONA_DIR") from exc
        self._by_name[persona.name] = persona
        if persona.name == self.default.name:
            self.default = persona
        logger.info("installed persona %s in %s", persona.name, path)
        return persona, path


_SAFE_NAME = re.compile(r"[\w-]{1,64}")
# libyaml when PyYAML has it: a large imported card takes a tenth of the time
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _persona_yaml(document: Mapping[str, Any], persona: Persona) -> bytes:
    """The persona file of ``document``, checked to read back as ``persona``."""
    try:
        text = yaml.dump(dict(document), Dumper=_DUMPER, allow_unicode=True, sort_keys=False, width=100)
        encoded = text.encode("utf-8")
        again = parse_persona(yaml.load(encoded, Loader=_LOADER), source="(imported)")
    except (yaml.YAMLError, UnicodeError, ConfigError, RecursionError) as exc:
        raise InputError(f"persona {persona.name!r} cannot be stored as a persona file: {exc}") from None
    if again != persona:
        raise InputError(f"persona {persona.name!r} does not read back the same from a persona file")
    return encoded


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
