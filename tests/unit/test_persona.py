from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import PACKAGED_PERSONAS
from engine.errors import ConfigError
from engine.persona import PersonaLibrary, load_persona_file


def test_shipped_personas_load() -> None:
    library = PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember")
    assert {"ember", "sage"} <= set(library.names())
    assert library.default.name == "ember"
    assert library.default.examples
    assert "Ember" in library.default.system_text()


def test_user_directory_overrides_and_adds(tmp_path: Path) -> None:
    (tmp_path / "ember.yaml").write_text("name: Ember\nsystem_prompt: You are a pirate.\n")
    (tmp_path / "nova.yml").write_text("name: nova\nsystem_prompt: You are Nova.\nvoice: en_US-joe-medium\n")
    library = PersonaLibrary.from_dirs([PACKAGED_PERSONAS, tmp_path], default="ember")
    assert library.default.system_prompt == "You are a pirate."
    nova = library.get("NOVA")
    assert nova is not None and nova.voice == "en_US-joe-medium"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("name: x\n", "system_prompt"),
        ("system_prompt: hi\n", "name"),
        ("- just a list\n", "mapping"),
        ("name: x\nsystem_prompt: y\nexamples:\n  - user: only half\n", "example"),
        ("name: [unclosed\n", "cannot read"),
    ],
)
def test_invalid_persona_files_say_what_is_wrong(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=complaint) as info:
        load_persona_file(path)
    assert str(path) in str(info.value)


def test_unknown_default_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="DEFAULT_PERSONA"):
        PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="nobody")


async def test_a_choice_made_while_a_lookup_is_in_flight_is_not_overwritten() -> None:
    import asyncio

    from engine.persona import PersonaSelector

    class SlowSettings:
        """A settings store whose reads return the value from before the read was slow."""

        def __init__(self) -> None:
            self.value: str | None = None
            self.release = asyncio.Event()

        async def get_setting(self, scope: str, key: str) -> str | None:
            value = self.value
            await self.release.wait()
            return value

        async def set_setting(self, scope: str, key: str, value: str) -> None:
            self.value = value

    store = SlowSettings()
    selector = PersonaSelector(PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember"), store)  # type: ignore[arg-type]
    stale_read = asyncio.create_task(selector._choice("channel:test:c1"))
    await asyncio.sleep(0.01)  # the read has begun, and waits
    await selector.set("channel:test:c1", "sage")
    store.release.set()
    assert await stale_read is None
    assert await selector._choice("channel:test:c1") == "sage"


def test_voice_replies_is_an_optional_bool(tmp_path: Path) -> None:
    (tmp_path / "echo.yaml").write_text(
        "name: echo\nsystem_prompt: You are Echo.\nvoice: en-us\nvoice_replies: true\n"
    )
    (tmp_path / "quiet.yaml").write_text("name: quiet\nsystem_prompt: You are Quiet.\nvoice_replies:\n")
    library = PersonaLibrary.from_dirs([PACKAGED_PERSONAS, tmp_path], default="ember")
    echo, quiet = library.get("echo"), library.get("quiet")
    assert echo is not None and echo.voice_replies and echo.voice == "en-us"
    assert quiet is not None and not quiet.voice_replies
    assert not library.default.voice_replies


@pytest.mark.parametrize("value", ["'true'", "1", "[true]", "sometimes"])
def test_voice_replies_must_be_true_or_false(tmp_path: Path, value: str) -> None:
    path = tmp_path / "loud.yaml"
    path.write_text(f"name: loud\nsystem_prompt: You are Loud.\nvoice_replies: {value}\n")
    with pytest.raises(ConfigError, match="voice_replies") as info:
        load_persona_file(path)
    assert str(path) in str(info.value)


async def test_the_owners_default_persona_is_stored_and_wins_over_default_persona() -> None:
    from engine.events import UniversalMessage
    from engine.persona import DEFAULT_SCOPE, PERSONA_SETTING, PersonaSelector

    class Settings:
        def __init__(self) -> None:
            self.values: dict[tuple[str, str], str] = {}

        async def get_setting(self, scope: str, key: str) -> str | None:
            return self.values.get((scope, key))

        async def set_setting(self, scope: str, key: str, value: str) -> None:
            self.values[(scope, key)] = value

        async def delete_setting(self, scope: str, key: str) -> None:
            self.values.pop((scope, key), None)

    store = Settings()
    library = PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember")
    selector = PersonaSelector(library, store)  # type: ignore[arg-type]
    message = UniversalMessage(content="hi", user_id="1", user_name="A", platform="web", channel_id="c")
    assert (await selector.for_message(message)).name == "ember"

    assert (await selector.set_default("sage")).name == "sage"
    assert store.values[(DEFAULT_SCOPE, PERSONA_SETTING)] == "sage"
    assert (await selector.for_message(message)).name == "sage"
    assert library.default.name == "sage"

    # Another process (a fresh selector on the same store) reads the stored choice.
    other = PersonaSelector(PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember"), store)  # type: ignore[arg-type]
    assert (await other.default()).name == "sage"
    assert other.library.default.name == "sage"

    # A channel's own choice still wins over the default.
    await selector.set("channel:web:c", "ember")
    assert (await selector.for_message(message)).name == "ember"

    assert (await selector.set_default(None)).name == "ember"
    assert (DEFAULT_SCOPE, PERSONA_SETTING) not in store.values
    assert library.default.name == "ember"
