"""A local fake LLM server speaking the OpenAI and Ollama HTTP APIs, for the real clients.

Usage::

    async with FakeLLMServer(reply="Hello there!") as server:
        client = AsyncOpenAI(base_url=server.openai_base_url, api_key="k")
        ...
        assert server.requests[-1].json["messages"][0]["content"] == "hi"

Endpoints
    OpenAI: ``POST /v1/chat/completions`` (SSE streaming ending ``data: [DONE]``, or one JSON
    object), ``GET /v1/models``, ``POST /v1/embeddings`` (base64 float32 or float lists).
    Ollama: ``POST /api/chat`` (NDJSON streaming, or one object), ``POST /api/embed``,
    ``GET /api/tags``, ``GET /api/version``.

Replies
    ``reply`` is a string or a function of the request's ``messages`` (a list of dicts);
    the text is streamed in pieces of ``chunk_size`` characters, ``delay_s`` before each;
    ``first_chunk_delay_s`` more before the first one (the model's time to first token).
    Embeddings are deterministic unit vectors derived from a hash of each text.

Reasoning
    ``reasoning`` (empty by default): the thinking of a reasoning model, sent before the answer in
    the field each API keeps for it. OpenAI-compatible servers (DeepSeek, vLLM): streamed as
    ``delta.reasoning_content`` pieces, unstreamed as ``message.reasoning_content``. Ollama:
    streamed as ``message.thinking`` pieces with empty ``content``, unstreamed as
    ``message.thinking``.

Tool calls
    A reply function may return :class:`AskTools` instead of text: the model asks for those
    tool calls, in each API's wire format. OpenAI: ``delta.tool_calls`` streamed by ``index``
    (the id, type and name first, then the arguments' JSON in pieces of ``chunk_size``), ending
    ``finish_reason: "tool_calls"``; unstreamed, ``message.tool_calls`` with ``content: null``.
    Ollama: one chunk whose ``message.tool_calls`` holds every call whole (arguments as an
    object), then the ``done`` chunk. The request's offered tools are in
    ``RecordedRequest.tools``; the results come back as ``role: "tool"`` messages. As the real
    APIs do, no call is made when the request forbids it (OpenAI ``tool_choice: "none"``) or, on
    Ollama, offers no tools: the reply is then the ``AskTools``' text.

Faults (all take effect on the next request and can be changed while running)
    * ``fail_next(n, status=500)``: the next ``n`` requests, on any endpoint, answer an error
      in the API's error format.
    * ``hang = True``: requests are accepted and never answered (until ``hang = False``, the
      client disconnects, or the server stops).
    * ``hang_after_chunks = k``: streams send ``k`` chunks, then hang.
    * ``break_after_chunks = k``: streams send ``k`` chunks, then drop the connection.
    * ``await down()`` / ``await up()``: close the listener and every open connection (new
      connections are refused), then listen again on the same port.

Every request is recorded in ``requests`` (method, path, headers, parsed JSON body) unless
``record=False`` (for benchmarks). The zero-delay path writes a whole stream in one write.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from tests.fakes.local_server import LocalServer


@dataclass(frozen=True, slots=True)
class AskTools:
    """A reply that asks for tools: each call's (name, arguments), and any text said with them."""

    calls: Sequence[tuple[str, dict[str, Any]]]
    text: str = ""


Reply = str | Callable[[list[dict[str, Any]]], str | AskTools]
DEFAULT_REPLY = "Hello! I am a fake language model, streaming this reply in small chunks."

_Handler = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]
_Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: CIMultiDict[str]
    """Case-insensitive: ``headers["authorization"]`` works."""
    json: Any = None
    """The parsed JSON body, or None when there was none."""
    received_at: float = field(default_factory=time.monotonic)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list((self.json or {}).get("messages") or [])

    @property
    def model(self) -> str | None:
        return (self.json or {}).get("model")

    @property
    def tools(self) -> list[str]:
        """The names of the tools the request offered (both APIs: ``tools[].function.name``)."""
        return [t["function"]["name"] for t in (self.json or {}).get("tools") or []]

    def tool_results(self) -> list[str]:
        """The contents of the request's ``role: "tool"`` messages, in order."""
        return [str(m.get("content")) for m in self.messages if m.get("role") == "tool"]


def fake_embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit vector for ``text`` (same text, same vector)."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    rng = random.Random(seed)
    values = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


class FakeLLMServer(LocalServer):
    """An aiohttp server on 127.0.0.1 (a free port unless ``port`` is given)."""

    def __init__(
        self,
        reply: Reply = DEFAULT_REPLY,
        delay_s: float = 0.0,
        chunk_size: int = 4,
        *,
        models: Sequence[str] = ("fake-model", "llama3.2:latest"),
        embedding_dim: int = 384,
        api_key: str | None = None,
        port: int = 0,
        record: bool = True,
        first_chunk_delay_s: float = 0.0,
    ) -> None:
        self.reply = reply
        self.delay_s = delay_s
        self.first_chunk_delay_s = first_chunk_delay_s
        self.chunk_size = chunk_size
        self.reasoning = ""
        """A reasoning model's thinking, sent before each answer in the API's own field."""
        self.models = list(models)
        self.embedding_dim = embedding_dim
        self.api_key = api_key
        """When set, OpenAI requests must carry ``Authorization: Bearer <api_key>`` (else 401)."""
        self.record = record
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.most_in_flight = 0
        """Requests being answered now, and the most there ever were at once."""
        self.hang_after_chunks: int | None = None
        self.break_after_chunks: int | None = None
        self._hang = False
        self._fail_pending = 0
        self._fail_status = 500
        self._fail_message = "simulated failure"
        self._closed = False
        self._wake = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024**2)
        routes: list[tuple[str, str, _Handler]] = [
            ("POST", "/v1/chat/completions", self._openai_chat),
            ("GET", "/v1/models", self._openai_models),
            ("POST", "/v1/embeddings", self._openai_embeddings),
            ("POST", "/api/chat", self._ollama_chat),
            ("POST", "/api/embed", self._ollama_embed),
            ("GET", "/api/tags", self._ollama_tags),
            ("GET", "/api/version", self._ollama_version),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, self._guarded(handler))
        super().__init__(app, port=port, handler_cancellation=True)

    # --- lifecycle --------------------------------------------------------------------

    async def aclose(self) -> None:
        self._closed = True
        self._notify()
        await self.down()
        await super().aclose()

    # --- addresses --------------------------------------------------------------------

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def ollama_host(self) -> str:
        return self.url

    # --- faults -----------------------------------------------------------------------

    @property
    def hang(self) -> bool:
        return self._hang

    @hang.setter
    def hang(self, value: bool) -> None:
        self._hang = value
        self._notify()

    def fail_next(self, n: int = 1, status: int = 500, message: str = "simulated failure") -> None:
        """Answer the next ``n`` requests with HTTP ``status``."""
        self._fail_pending = n
        self._fail_status = status
        self._fail_message = message

    def clear(self) -> None:
        """Forget recorded requests and reset every fault."""
        self.requests.clear()
        self._fail_pending = 0
        self.hang_after_chunks = None
        self.break_after_chunks = None
        self.hang = False

    # --- plumbing ---------------------------------------------------------------------

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    async def _wait_while_hanging(self, still_hanging: Callable[[], bool]) -> None:
        while still_hanging() and not self._closed:
            await self._wake.wait()

    def _guarded(self, handler: _Handler) -> _Route:
        async def guarded(request: web.Request) -> web.StreamResponse:
            body: Any = None
            if request.can_read_body:
                raw = await request.read()
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    return self._error(request, 400, "request body is not valid JSON")
            if self.record:
                self.requests.append(
                    RecordedRequest(request.method, request.path, CIMultiDict(request.headers), body)
                )
            if self._hang:
                await self._wait_while_hanging(lambda: self._hang)
            if self._fail_pending > 0:
                self._fail_pending -= 1
                return self._error(request, self._fail_status, self._fail_message)
            if (
                self.api_key is not None
                and request.path.startswith("/v1/")
                and request.headers.get("Authorization") != f"Bearer {self.api_key}"
            ):
                return self._error(request, 401, "Incorrect API key provided")
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                return await handler(request, body)
            except ConnectionError:
                # The client went away (or a fault dropped the connection): nothing to answer.
                return web.Response()
            finally:
                self.in_flight -= 1

        return guarded

    @staticmethod
    def _error(request: web.Request, status: int, message: str) -> web.Response:
        if request.path.startswith("/v1/"):
            payload: dict[str, Any] = {
                "error": {"message": message, "type": "fake_error", "param": None, "code": str(status)}
            }
        else:
            payload = {"error": message}
        return web.Response(status=status, text=json.dumps(payload), content_type="application/json")

    def _reply_text(self, messages: list[dict[str, Any]]) -> str | AskTools:
        return self.reply if isinstance(self.reply, str) else self.reply(messages)

    def _pieces(self, text: str) -> list[str]:
        size = self.chunk_size
        if size <= 0 or len(text) <= size:
            return [text] if text else []
        return [text[i : i + size] for i in range(0, len(text), size)]

    async def _stream(
        self,
        request: web.Request,
        content_type: str,
        head: list[str],
        pieces: list[str],
        tail: list[str],
    ) -> web.StreamResponse:
        """Write ``head``, then one frame per piece (paced and faulted), then ``tail``."""
        response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
        await response.prepare(request)
        paced = (
            self.delay_s > 0
            or self.first_chunk_delay_s > 0
            or self.hang_after_chunks is not None
            or self.break_after_chunks is not None
        )
        if not paced:
            await response.write("".join((*head, *pieces, *tail)).encode())
            await response.write_eof()
            return response
        await response.write("".join(head).encode())
        if self.first_chunk_delay_s > 0:
            await asyncio.sleep(self.first_chunk_delay_s)
        for sent, piece in enumerate(pieces):
            if self.hang_after_chunks is not None and sent >= self.hang_after_chunks:
                await self._wait_while_hanging(lambda: self.hang_after_chunks is not None)
            if self.break_after_chunks is not None and sent >= self.break_after_chunks:
                if request.transport is not None:
                    request.transport.abort()
                return response
            if self.delay_s > 0:
                await asyncio.sleep(self.delay_s)
            await response.write(piece.encode())
        await response.write("".join(tail).encode())
        await response.write_eof()
        return response

    # --- OpenAI -----------------------------------------------------------------------

    async def _openai_chat(self, request: web.Request, body: Any) -> web.StreamResponse:
        body = body or {}
        model = str(body.get("model", ""))
        answer = self._reply_text(list(body.get("messages") or []))
        if isinstance(answer, AskTools) and body.get("tool_choice") == "none":
            answer = answer.text
        text = answer.text if isinstance(answer, AskTools) else answer
        calls = _call_ids(answer.calls) if isinstance(answer, AskTools) else []
        finish = "tool_calls" if calls else "stop"
        created = int(time.time())
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
            if self.reasoning:
                message["reasoning_content"] = self.reasoning
            if calls:
                message["tool_calls"] = [
                    {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
                    for cid, name, args in calls
                ]
            completion = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            if self.delay_s > 0 or self.first_chunk_delay_s > 0:
                await asyncio.sleep(self.first_chunk_delay_s + self.delay_s)
            return web.json_response(completion)
        prefix = (
            f'data: {{"id":"chatcmpl-fake","object":"chat.completion.chunk","created":{created},'
            f'"model":{json.dumps(model)},"choices":[{{"index":0,'
        )
        head = [prefix + '"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n']
        pieces = [
            f'{prefix}"delta":{{"reasoning_content":{json.dumps(p)}}},"finish_reason":null}}]}}\n\n'
            for p in self._pieces(self.reasoning)
        ]
        pieces += [
            f'{prefix}"delta":{{"content":{json.dumps(p)}}},"finish_reason":null}}]}}\n\n'
            for p in self._pieces(text)
        ]
        for index, (cid, name, args) in enumerate(calls):
            first = {
                "index": index,
                "id": cid,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            deltas = [first] + [
                {"index": index, "function": {"arguments": part}} for part in self._pieces(json.dumps(args))
            ]
            pieces += [
                f'{prefix}"delta":{{"tool_calls":[{json.dumps(d)}]}},"finish_reason":null}}]}}\n\n'
                for d in deltas
            ]
        tail = [prefix + f'"delta":{{}},"finish_reason":"{finish}"}}]}}\n\n']
        if (body.get("stream_options") or {}).get("include_usage"):
            tail.append(
                f'data: {{"id":"chatcmpl-fake","object":"chat.completion.chunk","created":{created},'
                f'"model":{json.dumps(model)},"choices":[],'
                '"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\n'
            )
        tail.append("data: [DONE]\n\n")
        return await self._stream(request, "text/event-stream", head, pieces, tail)

    async def _openai_models(self, request: web.Request, body: Any) -> web.StreamResponse:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _openai_embeddings(self, request: web.Request, body: Any) -> web.StreamResponse:
        body = body or {}
        raw = body.get("input", "")
        texts = [raw] if isinstance(raw, str) else [str(t) for t in raw]
        as_base64 = body.get("encoding_format", "float") == "base64"
        dim = int(body.get("dimensions") or self.embedding_dim)
        data = []
        for i, text in enumerate(texts):
            vector = fake_embedding(text, dim)
            embedding: str | list[float] = (
                base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", ""),
                "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
            }
        )

    # --- Ollama -----------------------------------------------------------------------

    async def _ollama_chat(self, request: web.Request, body: Any) -> web.StreamResponse:
        body = body or {}
        model = str(body.get("model", ""))
        answer = self._reply_text(list(body.get("messages") or []))
        if isinstance(answer, AskTools) and not body.get("tools"):
            answer = answer.text
        text = answer.text if isinstance(answer, AskTools) else answer
        tool_calls = (
            [{"function": {"name": name, "arguments": args}} for name, args in answer.calls]
            if isinstance(answer, AskTools)
            else []
        )
        created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        done: dict[str, Any] = {
            "model": model,
            "created_at": created_at,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "total_duration": 1,
            "load_duration": 1,
            "prompt_eval_count": 1,
            "prompt_eval_duration": 1,
            "eval_count": 1,
            "eval_duration": 1,
        }
        if body.get("stream", True) is False:
            if self.delay_s > 0:
                await asyncio.sleep(self.delay_s)
            done["message"] = {"role": "assistant", "content": text}
            if self.reasoning:
                done["message"]["thinking"] = self.reasoning
            if tool_calls:
                done["message"]["tool_calls"] = tool_calls
            return web.json_response(done)
        prefix = f'{{"model":{json.dumps(model)},"created_at":"{created_at}","message":{{"role":"assistant",'
        pieces = [
            f'{prefix}"content":"","thinking":{json.dumps(p)}}},"done":false}}\n'
            for p in self._pieces(self.reasoning)
        ]
        pieces += [f'{prefix}"content":{json.dumps(p)}}},"done":false}}\n' for p in self._pieces(text)]
        if tool_calls:
            pieces.append(f'{prefix}"content":"","tool_calls":{json.dumps(tool_calls)}}},"done":false}}\n')
        return await self._stream(request, "application/x-ndjson", [], pieces, [json.dumps(done) + "\n"])

    async def _ollama_embed(self, request: web.Request, body: Any) -> web.StreamResponse:
        body = body or {}
        raw = body.get("input", "")
        texts = [raw] if isinstance(raw, str) else [str(t) for t in raw]
        return web.json_response(
            {
                "model": body.get("model", ""),
                "embeddings": [fake_embedding(t, self.embedding_dim) for t in texts],
            }
        )

    async def _ollama_tags(self, request: web.Request, body: Any) -> web.StreamResponse:
        models = [
            {
                "name": m,
                "model": m,
                "modified_at": "2025-01-01T00:00:00Z",
                "size": 1,
                "digest": hashlib.sha256(m.encode()).hexdigest(),
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "fake",
                    "families": ["fake"],
                    "parameter_size": "1B",
                    "quantization_level": "Q4_0",
                },
            }
            for m in self.models
        ]
        return web.json_response({"models": models})

    async def _ollama_version(self, request: web.Request, body: Any) -> web.StreamResponse:
        return web.json_response({"version": "0.6.0-fake"})


def _call_ids(calls: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, dict[str, Any]]]:
    """Each call with an id in the OpenAI API's form (``call_`` and 24 characters)."""
    return [(f"call_{uuid.uuid4().hex[:24]}", name, args) for name, args in calls]
