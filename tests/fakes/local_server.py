"""The aiohttp lifecycle the HTTP fakes share: one ``web.Application`` served on 127.0.0.1.

A fake subclasses ``LocalServer``, builds its ``web.Application`` and passes it to
``super().__init__``; it overrides ``start``/``aclose`` (calling ``super()``) for its own extras.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from aiohttp import web


class LocalServer:
    """Serves ``app`` on 127.0.0.1 (a free port unless ``port`` is given)."""

    def __init__(self, app: web.Application, *, port: int = 0, handler_cancellation: bool = False) -> None:
        self._app = app
        self._port = port
        self._handler_cancellation = handler_cancellation
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(
            self._app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=self._handler_cancellation,
            shutdown_timeout=0.5,
        )
        await self._runner.setup()
        await self.up()

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def down(self) -> None:
        """Stop listening and drop every open connection: clients get "connection refused"."""
        if self._site is None:
            return
        site, self._site = self._site, None
        await site.stop()
        assert self._runner is not None
        server = self._runner.server
        if server is not None:
            for handler in list(server.connections):
                handler.force_close()
        # Let the handlers of the dropped connections run their cancellation.
        await asyncio.sleep(0)

    async def up(self) -> None:
        """Listen (again, on the same port as before)."""
        if self._site is not None:
            return
        assert self._runner is not None, "start() the server first"
        site = web.TCPSite(self._runner, "127.0.0.1", self._port, reuse_address=True)
        await site.start()
        if self._port == 0:
            self._port = int(self._runner.addresses[0][1])
        self._site = site

    @property
    def is_up(self) -> bool:
        return self._site is not None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"
