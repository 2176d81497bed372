"""The web chat page in a real browser (Debian's chromium driven by Playwright) against a real server.

Install the browser with ``scripts/ensure-chromium``; without it these tests skip (and fail under CI).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from adapters.web import WebAdapter
from config.settings import PACKAGED_PERSONAS
from engine.health import ComponentHealth
from engine.memory import MemoryRecall, MemoryWriter
from engine.persona import PersonaLibrary, PersonaSelector
from engine.pipeline import Engine, EngineConfig
from storage.cache.memory import MemoryCache
from storage.sql import SQLConversationStore
from tests.fakes.ports import FakeEmbedder, FakeLLM, InMemoryVectorMemory

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPLY = (
    "What a lovely thing to hear! Biscuit sounds like a wonderful companion. "
    "How is the first week together going so far?"
)
TOKEN = "page-test-token"
WAIT_MS = 15_000


def require_chromium() -> None:
    if CHROMIUM.is_file():
        return
    reason = f"{CHROMIUM} is missing; run scripts/ensure-chromium to install it"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser must be installed)")
    pytest.skip(reason)


@dataclass(slots=True)
class Served:
    web: WebAdapter
    engine: Engine
    store: SQLConversationStore


async def _health() -> dict[str, ComponentHealth]:
    return {"store": ComponentHealth("store", "ok", "sqlite"), "llm": ComponentHealth("llm", "ok", "fake")}


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    async with AsyncExitStack() as stack:

        async def start(*, api_token: str | None = None) -> Served:
            store = SQLConversationStore(f"sqlite:///{tmp_path}/page.db")
            await store.start()
            stack.push_async_callback(store.aclose)
            cache = MemoryCache()
            await cache.start()
            stack.push_async_callback(cache.aclose)
            vectors, embedder = InMemoryVectorMemory(), FakeEmbedder()
            engine = Engine(
                llm=FakeLLM(REPLY, chunk_delay_s=0.03),
                store=store,
                cache=cache,
                personas=PersonaSelector(
                    PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember"), store
                ),
                recall=MemoryRecall(vectors, embedder, top_k=5, min_similarity=0.1),
                writer=MemoryWriter(store, vectors, embedder),
                config=EngineConfig(),
            )
            await engine.start()
            stack.push_async_callback(engine.aclose)
            web = WebAdapter(engine, host="127.0.0.1", port=0, api_token=api_token, health=_health)
            await web.start()
            stack.push_async_callback(web.aclose)
            return Served(web, engine, store)

        yield start


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Browser, url: str) -> Page:
    page = await browser.new_page(viewport={"width": 900, "height": 700})
    await page.goto(url)
    await expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=WAIT_MS)
    return page


async def test_a_message_sent_with_enter_gets_a_streamed_reply(
    browser: Browser, serve: Callable[..., Awaitable[Served]], tmp_path: Path
) -> None:
    served = await serve()
    page = await open_page(browser, served.web.url)
    await expect(page.locator("#token-row")).to_be_hidden()
    user_id = await page.evaluate("localStorage.getItem('whisperengine.userId')")
    assert user_id and user_id.startswith("web-")

    box = page.get_by_label("Message")
    await box.fill("I adopted a puppy called Biscuit!")
    await box.press("Shift+Enter")
    await box.press_sequentially("He is tiny.")
    assert await box.input_value() == "I adopted a puppy called Biscuit!\nHe is tiny."
    await box.press("Enter")

    user_msg = page.locator(".msg.user .text")
    bot_msg = page.locator(".msg.bot .text")
    await expect(user_msg).to_have_text("I adopted a puppy called Biscuit!\nHe is tiny.", timeout=WAIT_MS)
    # The reply is rendered while it streams: a partial text first, the whole reply at the end.
    await expect(page.locator(".msg.bot.streaming")).to_have_count(1, timeout=WAIT_MS)
    await expect(bot_msg).to_have_text(REPLY, timeout=WAIT_MS)
    await expect(page.locator(".msg.bot.streaming")).to_have_count(0, timeout=WAIT_MS)
    await expect(page.locator(".msg.bot .who")).to_have_text("Ember")
    await expect(page.locator("#error")).to_be_hidden()
    await expect(box).to_have_value("")
    await expect(page.locator("#send")).to_be_enabled()

    await page.screenshot(path=str(tmp_path / "web-chat.png"), full_page=True)

    await served.engine.writer.drain()
    stored = await served.store.recent_messages(f"web:{user_id}", 10)
    assert [(m.role, m.content) for m in stored] == [
        ("user", "I adopted a puppy called Biscuit!\nHe is tiny."),
        ("assistant", REPLY.strip()),
    ]


async def test_a_token_protected_server_asks_for_the_token(
    browser: Browser, serve: Callable[..., Awaitable[Served]], tmp_path: Path
) -> None:
    served = await serve(api_token=TOKEN)
    page = await open_page(browser, served.web.url)
    token = page.get_by_label("API token")
    await expect(token).to_be_visible()

    box = page.get_by_label("Message")
    await box.fill("Hello without a token")
    await box.press("Enter")

    error = page.get_by_role("alert")
    await expect(error).to_be_visible(timeout=WAIT_MS)
    await expect(error).to_contain_text("API token is missing or wrong")
    await expect(page.locator(".msg.user.failed")).to_have_count(1)
    await expect(page.locator(".msg.bot")).to_have_count(0)
    await expect(box).to_have_value("Hello without a token")
    await page.screenshot(path=str(tmp_path / "web-chat-token-error.png"), full_page=True)

    await token.fill(TOKEN)
    assert await page.evaluate("sessionStorage.getItem('whisperengine.apiToken')") == TOKEN
    await box.press("Enter")
    await expect(page.locator(".msg.bot .text")).to_have_text(REPLY, timeout=WAIT_MS)
    await expect(error).to_be_hidden()
