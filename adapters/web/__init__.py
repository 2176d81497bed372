"""The local web chat page and REST API (aiohttp)."""

from adapters.web.server import ChatRequest, WebAdapter

__all__ = ["ChatRequest", "WebAdapter"]
