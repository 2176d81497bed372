"""The ``LLM`` port over an Ollama server, with the official ``ollama`` SDK.

Streams ``POST /api/chat`` (NDJSON). SDK errors are converted here: connection failures →
``BackendUnavailable`` (check ``OLLAMA_HOST``), timeouts → ``LLMTimeout``, HTTP errors →
``LLMError`` with ``status`` (404: the model is not pulled).

The SDK is built on ``httpx``; its streaming path lets ``httpx`` errors through
unconverted, so they are caught here too.

Tools (``stream_with_tools``): the request offers ``tools``; Ollama sends each call whole in
``message.tool_calls`` (arguments as an object, given to the engine as JSON text), handed over
once the stream has ended. Earlier rounds go after the prompt as an assistant message with
``tool_calls`` and one ``tool`` message (with ``tool_name``) per result.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import httpx
import ollama
import pydantic

from config.urls import redact_url
from engine.errors import BackendUnavailable, LLMError, LLMTimeout
from engine.events import ChatMessage
from engine.ports import ToolCall, ToolRound, ToolSpec
from inference import ToolChat, function_tools, llm_error

logger = logging.getLogger(__name__)

_CONNECT_ERRORS = (ConnectionError, httpx.ConnectError)


async def ollama_reachable(host: str, timeout_s: float = 1.0) -> bool:
    """Whether an Ollama server answers at ``host`` (for the composition root's ``auto``)."""
    try:
        client = ollama.AsyncClient(host=host, timeout=timeout_s)
    except ValueError as exc:
        logger.debug("not an Ollama address: %s: %s", redact_url(host), exc)
        return False
    try:
        await client.list()
    except (
        ConnectionError,
        httpx.HTTPError,
        ollama.ResponseError,
        pydantic.ValidationError,
        ValueError,
    ) as exc:
        logger.debug("no Ollama at %s: %s", redact_url(host), exc)
        return False
    finally:
        await client.close()  # type: ignore[no-untyped-call]
    return True


def _model_matches(wanted: str, available: str) -> bool:
    if wanted == available:
        return True
    return ":" not in wanted and available == f"{wanted}:latest"


class OllamaChat(ToolChat):
    """A model served by Ollama."""

    def __init__(self, host: str, model: str, timeout_s: float) -> None:
        self._host = host
        self._model = model
        self._timeout_s = timeout_s
        self._client: ollama.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"OllamaChat(host={redact_url(self._host)!r}, model={self._model!r})"

    @property
    def name(self) -> str:
        return f"ollama:{self._model}"

    @property
    def _service(self) -> str:
        return f"Ollama at {redact_url(self._host)}"

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = ollama.AsyncClient(host=self._host, timeout=self._timeout_s)
            logger.info("Ollama chat backend: %s at %s", self._model, redact_url(self._host))

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()  # type: ignore[no-untyped-call]

    async def ping(self) -> None:
        """Lists the local models: checks the server, and that the model is pulled."""
        client = self._require_client()
        try:
            listing = await client.list()
        except _CONNECT_ERRORS as exc:
            raise BackendUnavailable(self._service, str(exc), variable="OLLAMA_HOST") from exc
        except httpx.TimeoutException as exc:
            raise BackendUnavailable(
                self._service, f"no answer within {self._timeout_s:g}s", variable="OLLAMA_HOST"
            ) from exc
        except (httpx.HTTPError, ollama.ResponseError, pydantic.ValidationError, ValueError) as exc:
            raise BackendUnavailable(self._service, str(exc), variable="OLLAMA_HOST") from exc
        names = [m.model for m in listing.models if m.model]
        if not any(_model_matches(self._model, name) for name in names):
            raise BackendUnavailable(
                self._service,
                f"model {self._model!r} is not pulled (run `ollama pull {self._model}`)",
                variable="OLLAMA_MODEL",
            )

    # --- the port -----------------------------------------------------------------------

    async def _chat(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        rounds: Sequence[ToolRound],
        max_tokens: int,
        temperature: float,
        *,
        may_call: bool = True,
    ) -> AsyncGenerator[str | ToolCall, None]:
        client = self._require_client()
        payload: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in messages]
        for done in rounds:
            payload.extend(_round_messages(done))
        # Ollama has no tool_choice: a model that must answer is offered none
        offered = function_tools(tools) if may_call else []
        produced = False
        calls: list[ToolCall] = []
        try:
            parts = await client.chat(
                model=self._model,
                messages=payload,
                tools=offered or None,
                stream=True,
                options={"num_predict": max_tokens, "temperature": temperature},
            )
            try:
                async for part in parts:
                    text = part.message.content
                    if text:
                        produced = True
                        yield text
                    for asked in part.message.tool_calls or ():
                        calls.append(
                            ToolCall(
                                id=f"call_{len(calls)}",
                                name=asked.function.name,
                                arguments=json.dumps(dict(asked.function.arguments)),
                            )
                        )
            finally:
                await parts.aclose()  # type: ignore[attr-defined]
        except _CONNECT_ERRORS as exc:
            raise BackendUnavailable(self._service, str(exc), variable="OLLAMA_HOST") from exc
        except httpx.TimeoutException as exc:
            raise LLMTimeout(
                f"{self.name}: no answer from {redact_url(self._host)} within {self._timeout_s:g}s"
            ) from exc
        except ollama.ResponseError as exc:
            status = exc.status_code if exc.status_code > 0 else None
            hint = f" (run `ollama pull {self._model}`)" if status == 404 else ""
            raise llm_error(f"{self.name}: {exc.error}{hint}", status=status) from exc
        except httpx.HTTPError as exc:
            if produced:
                raise LLMError(f"{self.name}: connection lost mid-reply: {exc!r}") from exc
            raise BackendUnavailable(self._service, repr(exc), variable="OLLAMA_HOST") from exc
        except (json.JSONDecodeError, pydantic.ValidationError) as exc:
            raise LLMError(f"{self.name}: malformed answer: {exc}") from exc
        for call in calls:
            yield call

    # --- internals ----------------------------------------------------------------------

    def _require_client(self) -> ollama.AsyncClient:
        if self._client is None:
            raise LLMError(f"{self.name} is not started")
        return self._client


def _round_messages(done: ToolRound) -> list[dict[str, Any]]:
    """An earlier round as Ollama wants it: the assistant's calls, then each result."""
    assistant = {
        "role": "assistant",
        "content": done.text,
        "tool_calls": [
            {"function": {"name": r.call.name, "arguments": _as_object(r.call.arguments)}}
            for r in done.results
        ],
    }
    results = [{"role": "tool", "content": r.content, "tool_name": r.call.name} for r in done.results]
    return [assistant, *results]


def _as_object(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
