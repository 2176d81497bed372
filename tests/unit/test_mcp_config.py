"""MCP_SERVERS: JSON or a file, checked with messages that say what to fix; credentials in it
are kept out of the logs; persona allow-lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.mcp import parse_mcp_servers
from config.settings import Settings
from engine.errors import ConfigError
from engine.persona import load_persona_file
from tools.mcp import allows, wire_name

SERVERS = {
    "clock": {"command": "uvx", "args": ["mcp-server-time", "--local-timezone", "Europe/Lisbon"]},
    "notes": {
        "url": "https://notes.example.org/mcp",
        "headers": {"Authorization": "Bearer nts_3f9a8b7c6d5e", "X-Team": "kitchen"},
    },
    "files": {
        "command": "npx",
        "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv/shared"],
        "env": {"GITHUB_TOKEN": "ghp_0123456789abcdef", "LANG": "en_GB.UTF-8"},
    },
}


def test_json_in_the_variable() -> None:
    servers = parse_mcp_servers(json.dumps(SERVERS))
    assert [(name, s.transport) for name, s in servers.items()] == [
        ("clock", "stdio"),
        ("notes", "http"),
        ("files", "stdio"),
    ]
    assert servers["clock"].args == ["mcp-server-time", "--local-timezone", "Europe/Lisbon"]
    assert parse_mcp_servers(None) == {} and parse_mcp_servers("  ") == {}


def test_a_yaml_file_wrapped_like_desktop_clients_write_it(tmp_path: Path) -> None:
    path = tmp_path / "mcp.yaml"
    path.write_text(
        "mcpServers:\n  clock:\n    command: uvx\n    args: [mcp-server-time]\n", encoding="utf-8"
    )
    assert parse_mcp_servers(str(path))["clock"].command == "uvx"
    json_path = tmp_path / "mcp.json"
    json_path.write_text(json.dumps({"mcpServers": SERVERS}), encoding="utf-8")
    assert list(parse_mcp_servers(str(json_path))) == ["clock", "notes", "files"]


@pytest.mark.parametrize(
    ("servers", "complaint"),
    [
        ({"clock": {"command": "uvx", "url": "http://127.0.0.1:8000/mcp"}}, "either 'command'"),
        ({"clock": {}}, "either 'command'"),
        ({"notes": {"url": "ftp://example.org/mcp"}}, "http:// or https://"),
        ({"notes": {"url": "http://x/mcp", "args": ["-v"]}}, "go with 'command'"),
        ({"clock": {"command": "uvx", "headers": {"A": "b"}}}, "go with 'url'"),
        ({"clock": {"command": "uvx", "timeout": 3}}, "timeout"),
        ({"my.clock": {"command": "uvx"}}, "name 'my.clock'"),
        ({"my__clock": {"command": "uvx"}}, "name 'my__clock'"),
    ],
)
def test_mistakes_name_the_server_and_the_variable(servers: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigError, match="MCP_SERVERS") as raised:
        parse_mcp_servers(json.dumps(servers))
    assert complaint in str(raised.value)


def test_unreadable_input_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        parse_mcp_servers(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_mcp_servers('{"clock": ')


def test_credentials_in_it_are_redacted_from_logs_but_ordinary_values_are_not() -> None:
    secrets = Settings(_env_file=None, mcp_servers=json.dumps(SERVERS)).secrets()
    assert "Bearer nts_3f9a8b7c6d5e" in secrets and "ghp_0123456789abcdef" in secrets
    assert "kitchen" not in secrets and "en_GB.UTF-8" not in secrets
    assert Settings(_env_file=None, mcp_servers="{not json").secrets() == []


def test_allow_lists_and_the_names_the_model_sees(tmp_path: Path) -> None:
    path = tmp_path / "quill.yaml"
    path.write_text("name: Quill\nsystem_prompt: You keep notes.\ntools: [notes.add_note, clock.*]\n")
    persona = load_persona_file(path)
    assert persona.tools == ("notes.add_note", "clock.*")
    assert allows(persona.tools, "notes", "add_note") and allows(persona.tools, "clock", "get_current_time")
    assert not allows(persona.tools, "notes", "delete_all")
    assert wire_name("clock", "get.current/time") == "clock__get_current_time"
    assert len(wire_name("files", "x" * 100)) == 64
    for wrong in ("notes.add_note", "[add_note]", "[notes.]"):
        path.write_text(f"name: Quill\nsystem_prompt: You keep notes.\ntools: {wrong}\n")
        with pytest.raises(ConfigError, match="'tools' must be a list"):
            load_persona_file(path)
