"""The owner's console in a real browser (Debian's chromium driven by Playwright) against a real
server: log in, then overview -> metrics -> personas (switch the default) -> users (look up,
export, forget), with a screenshot of each page.

Install the browser with ``scripts/ensure-chromium``; without it these tests skip (and fail under CI).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from adapters.web import WebAdapter
from adapters.web.console import LoggedProblem, MetricsPoint, PlatformState
from config.settings import PACKAGED_PERSONAS
from engine.events import UniversalMessage
from engine.health import ComponentHealth
from engine.memory import MemoryRecall, MemoryWriter
from engine.persona import PersonaLibrary, PersonaSelector
from engine.pipeline import Engine, EngineConfig
from storage.cache.memory import MemoryCache
from storage.sql import SQLConversationStore
from tests.e2e.test_web_chat_page import WAIT_MS, browser  # noqa: F401 (the fixture)
from tests.fakes.ports import FakeEmbedder, FakeLLM, InMemoryVectorMemory

pytestmark = pytest.mark.slow

TOKEN = "console-page-token-4242"
USER_KEY = "telegram:987654321"
FACT = "My tortoise is called Bartholomew and he loves strawberries"


class Source:
    def platforms(self) -> Sequence[PlatformState]:
        return [
            PlatformState("web", True, "serving the test"),
            PlatformState("discord", False, "DISCORD_TOKEN is not set"),
        ]

    def metrics_history(self) -> Sequence[MetricsPoint]:
        return [
            MetricsPoint(
                1_700_000_000.0 + 5 * i,
                float(i % 4),
                0.1 * i,
                0.3 * i,
                float(i == 5),
                i % 3,
                {"memory_writer": i % 3},
            )
            for i in range(12)
        ]

    def recent_problems(self) -> Sequence[LoggedProblem]:
        return [
            LoggedProblem(1_700_000_000.0, "WARNING", "storage.cache", "Redis did not answer within 0.5s")
        ]


async def _health() -> dict[str, ComponentHealth]:
    return {
        "store": ComponentHealth("store", "ok", "sqlite", latency_ms=0.8),
        "llm": ComponentHealth("llm", "ok", "fake", latency_ms=0.1),
        "vectors": ComponentHealth(
            "vectors", "degraded", "chroma server", "3 writes queued while Chroma is down"
        ),
    }


@dataclass(slots=True)
class Served:
    web: WebAdapter
    engine: Engine
    store: SQLConversationStore
    llm: FakeLLM


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with AsyncExitStack() as stack:
        store = SQLConversationStore(f"sqlite:///{tmp_path}/console.db")
        await store.start()
        stack.push_async_callback(store.aclose)
        cache = MemoryCache()
        await cache.start()
        stack.push_async_callback(cache.aclose)
        vectors, embedder = InMemoryVectorMemory(), FakeEmbedder()
        llm = FakeLLM("How lovely! Tell me more about him.")
        engine = Engine(
            llm=llm,
            store=store,
            cache=cache,
            personas=PersonaSelector(PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember"), store),
            recall=MemoryRecall(vectors, embedder, top_k=5, min_similarity=0.1),
            writer=MemoryWriter(store, vectors, embedder),
            config=EngineConfig(),
        )
        await engine.start()
        stack.push_async_callback(engine.aclose)
        web = WebAdapter(engine, host="127.0.0.1", port=0, api_token=TOKEN, health=_health, console=Source())
        await web.start()
        stack.push_async_callback(web.aclose)
        yield Served(web, engine, store, llm)


async def _tell(engine: Engine, text: str) -> None:
    message = UniversalMessage(
        content=text,
        user_id="987654321",
        user_name="Robin",
        platform="telegram",
        channel_id="987654321",
        is_direct=True,
    )
    await engine.handle(message).collect()
    await engine.writer.drain()


async def test_the_owner_logs_in_and_clicks_through_the_console(
    browser: Browser,  # noqa: F811 (the fixture)
    served: Served,
    tmp_path: Path,
) -> None:
    await _tell(served.engine, FACT)
    page = await browser.new_page(viewport={"width": 1100, "height": 800}, accept_downloads=True)
    shots: list[Path] = []

    async def shot(name: str) -> None:
        path = tmp_path / f"console-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        shots.append(path)

    # --- log in ----------------------------------------------------------------------------
    response = await page.goto(served.web.url + "admin")
    assert response is not None and response.status == 401
    await page.get_by_label("API token").fill("not the token")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_contain_text("not the API token", timeout=WAIT_MS)
    await page.get_by_label("API token").fill(TOKEN)
    await shot("login")
    await page.get_by_role("button", name="Log in").click()

    # --- overview ----------------------------------------------------------------------------
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#components")).to_contain_text("3 writes queued while Chroma is down")
    await expect(page.locator("#platforms")).to_contain_text("DISCORD_TOKEN is not set")
    await expect(page.locator("#problems")).to_contain_text("Redis did not answer")
    await shot("overview")

    # --- metrics -----------------------------------------------------------------------------
    await page.get_by_role("link", name="Metrics").click()
    await expect(page.get_by_role("heading", name="Metrics")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("svg.spark")).to_have_count(5)
    await expect(page.locator("#chart-latency-p95")).to_contain_text("3300 ms")
    await shot("metrics")

    # --- personas: switch the default --------------------------------------------------------------
    await page.get_by_role("link", name="Personas").click()
    await expect(page.locator('[data-persona="ember"]')).to_contain_text("default", timeout=WAIT_MS)
    await page.get_by_role("button", name="Make sage the default").click()
    await expect(page.get_by_role("status")).to_have_text("sage is now the default", timeout=WAIT_MS)
    await expect(page.locator('[data-persona="sage"] strong')).to_have_text("default")
    await shot("personas")
    await page.get_by_role("link", name="sage", exact=True).click()
    await expect(page.locator("#system-prompt")).to_contain_text("Sage", timeout=WAIT_MS)
    await shot("persona-sage")
    await _tell(served.engine, "Good evening")
    assert "Sage" in served.llm.prompts[-1][0].content

    # --- users: look up, export, forget -------------------------------------------------------
    await page.get_by_role("link", name="Users").click()
    await page.get_by_label("User key").fill(USER_KEY)
    await page.get_by_role("button", name="Look up").click()
    await expect(page.locator("#memories")).to_contain_text("Bartholomew", timeout=WAIT_MS)
    await shot("user")
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="Export as JSON").click()
    download = await download_info.value
    assert download.suggested_filename == "whisperengine-telegram_987654321.json"
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    exported = json.loads(saved.read_text(encoding="utf-8"))
    assert exported["user_key"] == USER_KEY
    assert any("Bartholomew" in m["text"] for m in exported["memories"])

    await page.get_by_role("link", name="Forget this user…").click()
    await expect(page.get_by_role("heading", name="Forget a user?")).to_be_visible(timeout=WAIT_MS)
    await shot("forget-confirm")
    assert await served.store.count_memories(USER_KEY) > 0
    await page.get_by_role("button", name="Forget this user").click()
    await expect(page.get_by_role("status")).to_contain_text(f"Forgot {USER_KEY}", timeout=WAIT_MS)
    await shot("forgotten")
    assert await served.store.count_memories(USER_KEY) == 0
    assert await served.store.get_user(USER_KEY) is None

    await page.get_by_label("User key").fill(USER_KEY)
    await page.get_by_role("button", name="Look up").click()
    await expect(page.locator("#no-user")).to_contain_text("Nothing is held", timeout=WAIT_MS)

    # --- log out -----------------------------------------------------------------------------------
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_label("API token")).to_be_visible(timeout=WAIT_MS)

    for path in shots:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2_000, path
    await page.close()
