"""The one place an ``openai.AsyncOpenAI`` client is created (chat, speech-to-text, text-to-speech).

Imports the ``openai`` SDK: import this module lazily where the SDK is optional.
"""

from __future__ import annotations

import openai

from engine.errors import ConfigError


def openai_client(
    *, api_key: str, base_url: str | None, timeout_s: float, max_retries: int, purpose: str
) -> openai.AsyncOpenAI:
    """An ``AsyncOpenAI`` client; a missing key or a bad configuration is a ``ConfigError``.

    ``purpose`` starts the missing-key message: ``"{purpose} needs an API key"``.
    """
    if not api_key:
        raise ConfigError(f"{purpose} needs an API key", variable="OPENAI_API_KEY")
    try:
        return openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries
        )
    except openai.OpenAIError as exc:
        raise ConfigError(f"cannot configure the OpenAI client: {exc}", variable="OPENAI_BASE_URL") from exc
