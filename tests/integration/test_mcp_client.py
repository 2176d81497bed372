"""``tools.mcp.MCPTools`` against the tests' MCP server: a server that goes away is told to the
model as the call's error, its tools are no longer offered, and it is reconnected when it is back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from config.mcp import MCPServerConfig
from engine.errors import ToolError
from tests.fakes.mcp_server import free_port, started_mcp_server, stdio_command
from tools.mcp import MCPTools

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


async def eventually(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - a connection's state, polled
            await asyncio.sleep(0.05)


async def test_a_server_that_goes_away_is_reported_then_reconnected(tmp_path: Path) -> None:
    notes, port = tmp_path / "notes.jsonl", free_port()
    config = MCPServerConfig(url=f"http://127.0.0.1:{port}/mcp")
    tools = MCPTools({"desk": config}, connect_timeout_s=10, retry_s=0.2, retry_max_s=0.5)
    try:
        with started_mcp_server(notes, port=port):
            await tools.start()
            assert tools.health().status == "ok"
            assert await tools.call("desk__add_note", {"text": "Water the basil"}, timeout_s=5) == (
                "Noted: Water the basil"
            )
        with pytest.raises(ToolError, match="desk"):
            await tools.call("desk__list_notes", {}, timeout_s=5)
        await eventually(lambda: tools.offered(["desk.*"]) == [])
        assert tools.health().status == "degraded"

        with started_mcp_server(notes, port=port):
            await eventually(lambda: len(tools.offered(["desk.*"])) == 6)
            assert await tools.call("desk__list_notes", {}, timeout_s=5) == "- Water the basil"
            assert tools.health().status == "ok"
    finally:
        await tools.aclose()


async def test_a_stdio_server_is_stopped_with_the_app(tmp_path: Path) -> None:
    command, args = stdio_command(tmp_path / "notes.jsonl")
    tools = MCPTools({"desk": MCPServerConfig(command=command, args=args, cwd=str(ROOT))})
    await tools.start()
    assert [spec.name for spec in tools.offered(["desk.clock", "desk.list_notes"])] == [
        "desk__clock",
        "desk__list_notes",
    ]
    clock = next(spec for spec in tools.offered(["desk.clock"]))
    assert clock.parameters["properties"]["timezone"]["type"] == "string"  # type: ignore[index]
    assert (await tools.call("desk__clock", {"timezone": "Asia/Tokyo"}, timeout_s=5)).endswith("+09:00")
    with pytest.raises(ToolError, match="no tool named"):
        await tools.call("desk__teleport", {}, timeout_s=5)
    await tools.aclose()
    assert tools.offered(["desk.*"]) == []
