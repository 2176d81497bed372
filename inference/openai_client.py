"""The one place an OpenAI-compatible API is reached from (chat, speech-to-text, text-to-speech):
its address and key (:class:`OpenAIEndpoint`), the ``openai.AsyncOpenAI`` client made from them
(:func:`openai_client`), and how its errors are told without the key (:func:`describe_openai_error`).

The ``openai`` SDK is imported only when a client is made or an error described, so a module that
uses it only when chosen (speech) can import this one freely.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from config.urls import OFFICIAL_OPENAI_API, redact_url
from engine.errors import ConfigError

if TYPE_CHECKING:
    import openai


def openai_client(
    *, api_key: str, base_url: str | None, timeout_s: float, max_retries: int, purpose: str
) -> openai.AsyncOpenAI:
    """An ``AsyncOpenAI`` client; a missing key or a bad configuration is a ``ConfigError``.

    ``purpose`` starts the missing-key message: ``"{purpose} needs an API key"``.
    """
    import openai

    if not api_key:
        raise ConfigError(f"{purpose} needs an API key", variable="OPENAI_API_KEY")
    try:
        return openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries
        )
    except openai.OpenAIError as exc:
        raise ConfigError(f"cannot configure the OpenAI client: {exc}", variable="OPENAI_BASE_URL") from exc


def describe_openai_error(exc: Exception, secret: str) -> str:
    """The error's message (with its cause for connection errors and timeouts), never the key."""
    import openai

    text = str(getattr(exc, "message", "") or exc)
    cause = exc.__cause__
    if isinstance(exc, openai.APIConnectionError) and cause is not None and str(cause):
        text = f"{text} ({type(cause).__name__}: {cause})"
    if len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


class OpenAIEndpoint:
    """An OpenAI-compatible API (``base_url`` None: the official one) and, once :meth:`open`, its
    client. ``where`` names it for logs and errors, without credentials."""

    def __init__(
        self, *, api_key: str, base_url: str | None, timeout_s: float, max_retries: int, purpose: str
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/") if base_url else None
        self.timeout_s = timeout_s
        self._max_retries = max_retries
        self._purpose = purpose
        self.client: openai.AsyncOpenAI | None = None

    @property
    def where(self) -> str:
        return redact_url(self.base_url or OFFICIAL_OPENAI_API)

    @property
    def official(self) -> bool:
        """Whether this is the official OpenAI API (not a compatible server)."""
        return self.base_url is None or self.base_url.startswith(OFFICIAL_OPENAI_API.removesuffix("/v1"))

    def open(self) -> bool:
        """Make the client; False when it was already open."""
        if self.client is not None:
            return False
        self.client = openai_client(
            api_key=self.api_key,
            base_url=self.base_url,
            timeout_s=self.timeout_s,
            max_retries=self._max_retries,
            purpose=self._purpose,
        )
        return True

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.close()
