"""A local fake of the OpenAI audio endpoints, for the real ``openai`` client.

Usage::

    async with FakeOpenAIAudio(transcript="hello there") as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key=server.api_key)
        ...
        assert server.transcriptions[-1].filename == "voice.ogg"

Endpoints
    ``POST /v1/audio/transcriptions`` (multipart: file, model, response_format, language):
    answers ``{"text": ...}``, or for ``verbose_json`` also ``language`` (a name, as the real
    API does: ``"english"``) and ``duration``. ``transcript`` is a string or a function of the
    uploaded bytes.
    ``POST /v1/audio/speech`` (JSON: model, voice, input, response_format): answers the audio
    that ``speak(text, voice)`` returns (a coroutine function; default: a tone as a WAV file
    with "unknown length" header sizes, as streamed WAV from the real API has).

Faults: ``fail_next(n, status)`` answers the next ``n`` requests with an API error; requests
without ``Authorization: Bearer <api_key>`` get 401. Every request is recorded.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.local_server import LocalServer

Speaker = Callable[[str, str], Awaitable[bytes]]
Transcriber = str | Callable[[bytes], str]


@dataclass(slots=True)
class TranscriptionRequest:
    filename: str
    content_type: str
    audio: bytes
    model: str
    response_format: str
    language: str | None


@dataclass(slots=True)
class SpeechRequest:
    model: str
    voice: str
    input: str
    response_format: str


def streamed_wav(samples: list[int], rate: int) -> bytes:
    """16-bit mono WAV whose RIFF and data sizes say 0xFFFFFFFF (length unknown when streamed)."""
    header = b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", 0xFFFFFFFF)
    return header + struct.pack(f"<{len(samples)}h", *samples)


async def tone_speaker(text: str, voice: str) -> bytes:
    """A 440 Hz tone, 50 ms per character of text, at 24 kHz (the API's rate)."""
    rate = 24_000
    count = max(1, len(text)) * rate // 20
    return streamed_wav([int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(count)], rate)


class FakeOpenAIAudio(LocalServer):
    """An aiohttp server on 127.0.0.1, on a free port."""

    def __init__(
        self,
        *,
        transcript: Transcriber = "hello from the fake transcription service",
        speak: Speaker = tone_speaker,
        api_key: str = "sk-test-audio-key",
    ) -> None:
        self.transcript = transcript
        self.speak = speak
        self.api_key = api_key
        self.transcriptions: list[TranscriptionRequest] = []
        self.speeches: list[SpeechRequest] = []
        self.requests = 0
        self._fail_pending = 0
        self._fail_status = 500
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_post("/v1/audio/speech", self._speech)
        super().__init__(app)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        self._fail_pending = n
        self._fail_status = status

    # --- handlers ---------------------------------------------------------------------------

    def _error(self, status: int, message: str) -> web.Response:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return web.json_response(
            {"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status
        )

    def _refusal(self, request: web.Request) -> web.Response | None:
        self.requests += 1
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(401, "Incorrect API key provided.")
        if self._fail_pending > 0:
            self._fail_pending -= 1
            return self._error(self._fail_status, "simulated failure")
        return None

    async def _transcriptions(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        fields: dict[str, Any] = {}
        reader = await request.multipart()
        async for part in reader:
            if part.name == "file":
                fields["file"] = (
                    part.filename or "",
                    part.headers.get("Content-Type", ""),
                    await part.read(),
                )
            elif part.name:
                fields[part.name] = await part.text()
        if "file" not in fields or "model" not in fields:
            return self._error(400, "file and model are required")
        filename, content_type, audio = fields["file"]
        record = TranscriptionRequest(
            filename=filename,
            content_type=content_type,
            audio=bytes(audio),
            model=fields["model"],
            response_format=fields.get("response_format", "json"),
            language=fields.get("language"),
        )
        self.transcriptions.append(record)
        if filename.rsplit(".", 1)[-1] not in {
            "flac",
            "m4a",
            "mp3",
            "mp4",
            "mpeg",
            "mpga",
            "oga",
            "ogg",
            "wav",
            "webm",
        }:
            return self._error(400, f"Unrecognized file format: {filename}")
        text = self.transcript(record.audio) if callable(self.transcript) else self.transcript
        if record.response_format == "verbose_json":
            body = {
                "task": "transcribe",
                "language": "english",
                "duration": 1.0,
                "text": text,
                "segments": [],
            }
            return web.json_response(body)
        return web.json_response({"text": text})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        body = await request.json()
        if not body.get("input") or not body.get("voice") or not body.get("model"):
            return self._error(400, "model, voice and input are required")
        record = SpeechRequest(
            model=body["model"],
            voice=str(body["voice"]),
            input=body["input"],
            response_format=body.get("response_format", "mp3"),
        )
        self.speeches.append(record)
        if record.response_format != "wav":
            return self._error(400, "this fake only speaks wav")
        audio = await self.speak(record.input, record.voice)
        response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        await response.prepare(request)
        stream = io.BytesIO(audio)
        while chunk := stream.read(16384):
            await response.write(chunk)
        await response.write_eof()
        return response
