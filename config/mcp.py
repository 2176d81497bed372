"""The MCP servers the owner configured (``MCP_SERVERS``), read and checked.

``MCP_SERVERS`` is a JSON object, or the path of a JSON or YAML file holding one, naming each
server (its name is how persona allow-lists call it: ``server.tool``)::

    {
      "clock": {"command": "uvx", "args": ["mcp-server-time"]},
      "notes": {"url": "http://127.0.0.1:8000/mcp", "headers": {"Authorization": "Bearer ..."}}
    }

``command`` (with ``args``, ``env``, ``cwd``) starts a server that speaks over its stdin and
stdout; ``url`` reaches one over streamable HTTP. A file may also wrap the servers in an
``mcpServers`` key, as desktop MCP clients' configuration files do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.errors import ConfigError

SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
SECRET_NAME = re.compile(r"key|token|secret|pass|auth|credential|cookie", re.IGNORECASE)
"""Environment variables and headers with such names hold credentials: kept out of the logs."""


class MCPServerConfig(BaseModel):
    """One MCP server: a command to run (stdio) or a URL (streamable HTTP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_transport(self) -> MCPServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either 'command' (stdio) or 'url' (streamable HTTP)")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("'url' must be an http:// or https:// address")
        if self.url is not None and (self.args or self.env or self.cwd):
            raise ValueError("'args', 'env' and 'cwd' go with 'command', not 'url'")
        if self.command is not None and self.headers:
            raise ValueError("'headers' go with 'url', not 'command'")
        return self

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"

    def secret_values(self) -> list[str]:
        """Values that are credentials: of its environment variables and headers whose names say
        so (``API_KEY``, ``Authorization``, ...)."""
        named = [*self.env.items(), *self.headers.items()]
        return [value for name, value in named if value and SECRET_NAME.search(name)]


def parse_mcp_servers(raw: str | None) -> dict[str, MCPServerConfig]:
    """The servers of an ``MCP_SERVERS`` value (JSON, or a file path); ConfigError if invalid."""
    if raw is None or not raw.strip():
        return {}
    text, source = raw, "MCP_SERVERS"
    if not raw.lstrip().startswith("{"):
        path = Path(raw.strip()).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read the MCP servers file {path}: {exc}", variable="MCP_SERVERS"
            ) from exc
        source = str(path)
    try:
        data: Any = yaml.safe_load(text) if source.endswith((".yaml", ".yml")) else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{source} is not valid JSON or YAML: {exc}", variable="MCP_SERVERS") from exc
    if isinstance(data, Mapping) and isinstance(data.get("mcpServers"), Mapping):
        data = data["mcpServers"]
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source} must be an object naming each server", variable="MCP_SERVERS")
    servers: dict[str, MCPServerConfig] = {}
    for name, entry in data.items():
        if not isinstance(name, str) or not SERVER_NAME.fullmatch(name) or "__" in name:
            raise ConfigError(
                f"{source}: MCP server name {name!r} must be 1-32 letters, digits, _ or - (no __) "
                "(it is how persona allow-lists name it)",
                variable="MCP_SERVERS",
            )
        try:
            servers[name] = MCPServerConfig.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or name}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"{source}: MCP server {name!r}: {problems}", variable="MCP_SERVERS") from exc
    return servers
