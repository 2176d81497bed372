"""The ``Tools`` port over MCP servers, with the official ``mcp`` SDK.

Each configured server (``config/mcp.py``) gets one connection, owned by its own task: the
task starts the server (``command``: a child process spoken to over stdin/stdout) or reaches
it (``url``: streamable HTTP), initializes the session, lists the tools, and keeps the session
until the app closes or the connection is lost. A server that cannot be reached within
``connect_timeout_s``, or whose connection is lost, is logged as a WARNING and tried again in
the background (``retry_s``, doubling up to ``retry_max_s``); meanwhile its tools are not
offered, and the bot answers without them. Because the SDK's task groups live in that task,
a server that crashes can only end its own connection.

Names: a persona's allow-list names tools as ``server.tool`` (or ``server.*``). The model
sees ``server__tool`` (function names may hold only letters, digits, ``_`` and ``-``).

Errors are converted here: a call that takes longer than its timeout → ``ToolTimeout``; a
tool's own error result, a refused call, a lost connection, any other failure of the SDK →
``ToolError``, whose text the model is given. Nothing here logs a call's arguments or result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import pydantic
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import (
    CONNECTION_CLOSED,
    REQUEST_TIMEOUT,
    AudioContent,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    Implementation,
    PaginatedRequestParams,
    ResourceLink,
    TextContent,
    TextResourceContents,
    Tool,
)

from config.mcp import MCPServerConfig
from config.urls import redact_url
from engine.errors import ToolError, ToolTimeout
from engine.health import ComponentHealth, Status
from engine.ports import JSONValue, ToolSpec

logger = logging.getLogger(__name__)

SEPARATOR = "__"
"""Between the server's name and the tool's in the name the model sees."""
MAX_NAME = 64
"""The longest function name the OpenAI API accepts."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
CLIENT = Implementation(name="whisperengine", version="0.1.0")
STOP_WAIT_S = 5.0


def wire_name(server: str, tool: str) -> str:
    """The name the model calls ``server.tool`` by."""
    return f"{server}{SEPARATOR}{_UNSAFE.sub('_', tool)}"[:MAX_NAME]


def allows(allowed: Sequence[str], server: str, tool: str) -> bool:
    """Whether an allow-list (``server.tool``, ``server.*``) names the tool."""
    return f"{server}.{tool}" in allowed or f"{server}.*" in allowed


class MCPTools:
    """The tools of every configured MCP server (implements ``engine.ports.Tools``)."""

    def __init__(
        self,
        servers: Mapping[str, MCPServerConfig],
        *,
        connect_timeout_s: float = 20.0,
        retry_s: float = 30.0,
        retry_max_s: float = 300.0,
    ) -> None:
        self._servers = {
            name: _Server(
                name, config, connect_timeout_s=connect_timeout_s, retry_s=retry_s, retry_max_s=retry_max_s
            )
            for name, config in servers.items()
        }

    def __repr__(self) -> str:
        return f"MCPTools({', '.join(self._servers)})"

    @property
    def description(self) -> str:
        """The servers and how each is reached, for the start-up summary."""
        return ", ".join(f"{s.name} ({s.where})" for s in self._servers.values()) or "none"

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to every server at once; returns when each is connected or has failed its
        first attempt (then it is retried in the background)."""
        for server in self._servers.values():
            server.start()
        await asyncio.gather(*(server.first_attempt.wait() for server in self._servers.values()))

    async def aclose(self) -> None:
        await asyncio.gather(*(server.stop() for server in self._servers.values()))

    # --- the port -----------------------------------------------------------------------

    def offered(self, allowed: Sequence[str]) -> list[ToolSpec]:
        specs: list[ToolSpec] = []
        for server in self._servers.values():
            if server.session is None:
                continue
            for wire, tool in server.tools.items():
                if allows(allowed, server.name, tool.name):
                    parameters: dict[str, JSONValue] = dict(tool.input_schema or {"type": "object"})
                    specs.append(
                        ToolSpec(name=wire, description=tool.description or "", parameters=parameters)
                    )
        return specs

    async def call(self, name: str, arguments: Mapping[str, JSONValue], *, timeout_s: float) -> str:
        server = self._servers.get(name.partition(SEPARATOR)[0])
        if server is None:
            raise ToolError(f"there is no tool named {name!r}")
        return await server.call(name, dict(arguments), timeout_s=timeout_s)

    # --- health -------------------------------------------------------------------------

    def failures(self) -> list[str]:
        """One line per server not connected now, saying why."""
        return [f"MCP server {s.name}: {s.error}" for s in self._servers.values() if s.session is None]

    def health(self) -> ComponentHealth:
        """ok: every server connected; degraded: some are not (their tools are unavailable)."""
        down = self.failures()
        connected = [s for s in self._servers.values() if s.session is not None]
        status: Status = "ok" if not down else "degraded"
        tools = sum(len(s.tools) for s in connected)
        detail = f"{len(connected)}/{len(self._servers)} servers, {tools} tools"
        return ComponentHealth("tools", status, f"mcp: {self.description}", "; ".join([detail, *down]))


class _Server:
    """One MCP server's connection, owned by its task (see the module's docstring)."""

    def __init__(
        self,
        name: str,
        config: MCPServerConfig,
        *,
        connect_timeout_s: float,
        retry_s: float,
        retry_max_s: float,
    ) -> None:
        self.name = name
        self.config = config
        self.connect_timeout_s = connect_timeout_s
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.session: ClientSession | None = None
        self.tools: dict[str, Tool] = {}
        """The tools listed, by the name the model sees."""
        self.error: str | None = "not connected yet"
        self.first_attempt = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        if self.config.url is not None:
            return f"streamable HTTP {redact_url(self.config.url)}"
        return f"stdio: {self.config.command}"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"mcp-{self.name}")

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait([task], timeout=STOP_WAIT_S)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- the connection's task ------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.retry_s
        while not self._stopping.is_set():
            self._lost.clear()
            try:
                await self._serve()
            except Exception as exc:  # the connection task's error boundary: any SDK failure
                error, self.error = self.error, _describe(exc)
                logger.log(
                    logging.WARNING if error != self.error else logging.DEBUG,  # said once, not each retry
                    "MCP server %s (%s) unavailable: %s; its tools are left out, retrying in %gs",
                    self.name,
                    self.where,
                    self.error,
                    delay,
                )
                logger.debug("MCP server %s failed", self.name, exc_info=True)
            else:
                if self._stopping.is_set():
                    break
                delay = self.retry_s
                self.error = "connection lost"
                logger.warning("MCP server %s: connection lost; reconnecting in %gs", self.name, delay)
            finally:
                self.session = None
                self.first_attempt.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, self.retry_max_s)

    async def _serve(self) -> None:
        """Connect, list the tools, and hold the session until stopped or lost."""
        async with contextlib.AsyncExitStack() as stack:
            if self.config.command is not None:
                params = StdioServerParameters(
                    command=self.config.command,
                    args=list(self.config.args),
                    env=dict(self.config.env) or None,
                    cwd=self.config.cwd,
                )
                read, write = await stack.enter_async_context(stdio_client(params))
            else:
                assert self.config.url is not None
                http = await stack.enter_async_context(
                    create_mcp_http_client(headers=dict(self.config.headers) or None)
                )
                read, write = await stack.enter_async_context(
                    streamable_http_client(self.config.url, http_client=http)
                )
            session = await stack.enter_async_context(ClientSession(read, write, client_info=CLIENT))
            with anyio.fail_after(self.connect_timeout_s):
                await session.initialize()
                tools = await self._list_tools(session)
            self.session, self.tools, self.error = session, tools, None
            logger.info(
                "MCP server %s (%s): %d tools: %s",
                self.name,
                self.where,
                len(tools),
                ", ".join(t.name for t in tools.values()) or "none",
            )
            self.first_attempt.set()
            stopping = asyncio.ensure_future(self._stopping.wait())
            lost = asyncio.ensure_future(self._lost.wait())
            try:
                await asyncio.wait([stopping, lost], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                lost.cancel()
                self.session = None

    async def _list_tools(self, session: ClientSession) -> dict[str, Tool]:
        tools: dict[str, Tool] = {}
        cursor: str | None = None
        while True:
            page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
            for tool in page.tools:
                wire = wire_name(self.name, tool.name)
                if wire in tools:
                    logger.warning(
                        "MCP server %s: tools %s and %s have the same name for the model (%s); "
                        "only the first is offered",
                        self.name,
                        tools[wire].name,
                        tool.name,
                        wire,
                    )
                    continue
                tools[wire] = tool
            cursor = page.next_cursor
            if not cursor:
                return tools

    # --- calls (from the replies' tasks) ----------------------------------------------------

    async def call(self, name: str, arguments: dict[str, Any], *, timeout_s: float) -> str:
        session, tool = self.session, self.tools.get(name)
        if session is None:
            raise ToolError(f"the {self.name} tools are not available right now ({self.error})")
        if tool is None:
            raise ToolError(f"there is no tool named {name!r}")
        try:
            result = await session.call_tool(tool.name, arguments, read_timeout_seconds=timeout_s)
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise ToolTimeout(f"the tool {name} did not answer within {timeout_s:g} seconds") from exc
            if exc.code == CONNECTION_CLOSED:
                self._lost.set()
                raise ToolError(f"the {self.name} tool server closed the connection") from exc
            raise ToolError(f"the {self.name} tool server refused the call: {exc.message}") from exc
        except pydantic.ValidationError as exc:
            raise ToolError(f"the {self.name} tool server sent a malformed answer") from exc
        except (OSError, anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            self._lost.set()
            raise ToolError(f"the {self.name} tool server is unreachable ({_describe(exc)})") from exc
        except Exception as exc:  # the SDK's transports raise untyped errors too; a reply must not fail
            logger.warning("MCP server %s: call failed: %s", self.name, _describe(exc))
            raise ToolError(f"the {self.name} tool server failed ({type(exc).__name__})") from exc
        text = result_text(result)
        if result.is_error:
            raise ToolError(f"the tool {name} failed: {text or 'no reason given'}")
        return text


def result_text(result: CallToolResult) -> str:
    """A tool result as text for the model: its text blocks, what other blocks are, or its
    structured content as JSON when there is nothing else."""
    parts: list[str] = []
    for block in result.content:
        match block:
            case TextContent():
                parts.append(block.text)
            case ImageContent():
                parts.append(f"[an image ({block.mime_type}) the chat cannot show]")
            case AudioContent():
                parts.append(f"[audio ({block.mime_type}) the chat cannot play]")
            case ResourceLink():
                parts.append(f"[resource: {block.uri}]")
            case EmbeddedResource():
                resource = block.resource
                if isinstance(resource, TextResourceContents):
                    parts.append(resource.text)
                else:
                    parts.append(f"[resource: {resource.uri}]")
    if not parts and result.structured_content is not None:
        import json

        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


def _describe(exc: BaseException) -> str:
    """The first real failure inside (task groups wrap them), in one line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
