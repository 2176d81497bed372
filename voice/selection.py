"""Choosing speech engines from the settings, and the voice per persona.

``build_voice(settings)`` is what the composition root calls: it picks the speech-to-text
engine (``STT_BACKEND``) and the text-to-speech engines (``TTS_BACKENDS``, in order),
skipping what is not installed or configured with a log line and a note for
``whisperengine doctor``, starts them, and returns them ready.

A persona's ``voice`` (or ``TTS_VOICE``) picks the engine too: the first engine, in the
configured order, that has a voice of that name speaks it (``en_US-joe-medium`` → Piper,
``en-gb`` → espeak-ng, ``nova`` → OpenAI, a Coqui speaker name → Coqui); ``engine:voice``
names the engine outright (``espeak:en-us+f3``). A voice no engine has is spoken by the
first engine in its default voice. When an engine is down or busy the next one speaks; with
``BREAKER_FAILURES`` an engine that failed that many times in a row is skipped outright (its
circuit is open) until ``BREAKER_RESET_S`` has passed and one trial succeeds.

Speech-to-text works the same way: :class:`TranscriptionRouter` holds ``STT_BACKEND``'s engine
and the ``STT_FALLBACKS``, each with its circuit breaker; when one fails (or its circuit is
open) the next one transcribes. Unusable audio is the user's problem, not the engine's: it is
neither retried elsewhere nor counted against the engine.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
import shutil
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from engine.breaker import BreakerSnapshot, CircuitBreaker
from engine.errors import BackendUnavailable, CircuitOpen, ConfigError
from engine.health import ComponentHealth, with_circuits
from engine.ports import SpeechAudio, SpeechToText, TextToSpeech, Transcript
from voice.audio import AudioLimits

if TYPE_CHECKING:
    from config.settings import Settings

logger = logging.getLogger(__name__)

ENGINE_PREFIXES = ("piper", "espeak", "coqui", "openai")


class SpeechEngine(Protocol):
    """One text-to-speech engine of :mod:`voice.tts`."""

    @property
    def name(self) -> str: ...

    def has_voice(self, voice: str) -> bool: ...

    async def synthesize(self, text: str, *, voice: str | None = None) -> SpeechAudio: ...

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...


# --- what gets said ----------------------------------------------------------------------------

_URL = re.compile(r"https?://\S+")
_CODE_BLOCK = re.compile(r"```.*?```", re.DOTALL)
_MARKUP = re.compile(r"[*_`~#>|]+")
_MENTION = re.compile(r"<[@#][!&]?\d+>|<a?:\w+:\d+>")
_SPACES = re.compile(r"\s+")
_SYMBOLS = re.compile(r"[^\w\s.,!?;:'\"()\-\u2013\u2014%\u20ac$\u00a3&/+]")


def speakable(text: str) -> str:
    """Chat text as it should be read aloud: no markdown, code, links, mentions or emoji."""
    text = _CODE_BLOCK.sub(" (code) ", text)
    text = _URL.sub(" (link) ", text)
    text = _MENTION.sub(" ", text)
    text = _MARKUP.sub(" ", text)
    text = _SYMBOLS.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


# --- the router ----------------------------------------------------------------------------------


class _Engine(Protocol):
    """What every speech engine has, whichever way it works."""

    @property
    def name(self) -> str: ...

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...


EngineT = TypeVar("EngineT", bound=_Engine)
T = TypeVar("T")


class _EngineRouter(Generic[EngineT]):
    """Engines in order of preference, each behind its own circuit breaker (none when
    ``breaker_failures`` is None): starts and closes them, and asks them in turn until one
    answers."""

    kind = ""
    """What the engines do (``speech-to-text``), for breaker names, logs and health."""
    separator = ","
    """What joins the engines' names in :attr:`name`."""

    def __init__(
        self, engines: Sequence[EngineT], *, breaker_failures: int | None, breaker_reset_s: float
    ) -> None:
        if not engines:
            raise ValueError(f"{type(self).__name__} needs at least one engine")
        self._engines = list(engines)
        self.breakers: dict[str, CircuitBreaker] = (
            {
                engine.name: CircuitBreaker(
                    f"{self.kind} {engine.name}",
                    failure_threshold=breaker_failures,
                    reset_timeout_s=breaker_reset_s,
                )
                for engine in self._engines
            }
            if breaker_failures is not None
            else {}
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def name(self) -> str:
        return self.separator.join(engine.name for engine in self._engines)

    @property
    def engines(self) -> list[EngineT]:
        return list(self._engines)

    async def start(self) -> None:
        for engine in self._engines:
            await engine.start()

    async def aclose(self) -> None:
        for engine in reversed(self._engines):
            await engine.aclose()

    async def _first_answer(
        self, order: Sequence[EngineT], ask: Callable[[EngineT], Callable[[], Awaitable[T]]]
    ) -> T:
        """The answer of the first engine in ``order`` that gives one; an engine that fails
        (or whose circuit is open) passes to the next. All failing: the first failure."""
        failure: BackendUnavailable | None = None
        for engine in order:
            call = ask(engine)
            breaker = self.breakers.get(engine.name)
            try:
                return await (call() if breaker is None else breaker.call(call))
            except CircuitOpen as exc:
                logger.debug("%s engine %s skipped: %s", self.kind, engine.name, exc)
                failure = failure or exc
            except BackendUnavailable as exc:
                logger.warning("%s engine %s failed: %s", self.kind, engine.name, exc)
                failure = failure or exc
        assert failure is not None
        raise failure

    def circuits(self) -> list[BreakerSnapshot]:
        return [breaker.snapshot() for breaker in self.breakers.values()]

    def health(self) -> ComponentHealth:
        """Down when every engine's circuit is open, degraded when some are."""
        return with_circuits(ComponentHealth(self.kind, "ok", self.name), self.circuits())


class SpeechRouter(_EngineRouter[SpeechEngine]):
    """The TextToSpeech port over several engines, in order of preference."""

    kind = "text-to-speech"

    def __init__(
        self,
        engines: Sequence[SpeechEngine],
        *,
        default_voice: str | None = None,
        breaker_failures: int | None = None,
        breaker_reset_s: float = 30.0,
    ) -> None:
        super().__init__(engines, breaker_failures=breaker_failures or None, breaker_reset_s=breaker_reset_s)
        self._default_voice = default_voice or None
        self._warned: set[str] = set()

    def choose(self, voice: str | None) -> tuple[SpeechEngine, str | None]:
        """The engine that speaks ``voice`` (None: the default voice), and the voice for it."""
        voice = (voice or self._default_voice or "").strip() or None
        if voice is None:
            return self._engines[0], None
        prefix, _, rest = voice.partition(":")
        if rest and prefix.lower() in ENGINE_PREFIXES:
            for engine in self._engines:
                if engine.name == prefix.lower():
                    return engine, voice
            self._warn_once(voice, f"voice {voice!r} names an engine that is not enabled")
            return self._engines[0], None
        for engine in self._engines:
            if engine.has_voice(voice):
                return engine, voice
        self._warn_once(voice, f"no enabled engine has the voice {voice!r}")
        return self._engines[0], None

    def _warn_once(self, voice: str, message: str) -> None:
        if voice not in self._warned:
            self._warned.add(voice)
            logger.warning("%s; speaking with %s's default voice", message, self._engines[0].name)

    async def synthesize(self, text: str, *, voice: str | None = None) -> SpeechAudio:
        """Speak ``text`` (cleaned with :func:`speakable`); the next engine takes over when
        the chosen one is down or busy."""
        spoken = speakable(text) or text
        first, chosen = self.choose(voice)
        order = [first, *(engine for engine in self._engines if engine is not first)]
        return await self._first_answer(
            order,
            lambda engine: functools.partial(
                engine.synthesize, spoken, voice=chosen if engine is first else None
            ),
        )


class TranscriptionRouter(_EngineRouter[SpeechToText]):
    """The SpeechToText port over one or more engines, in order of preference, each behind
    its own circuit breaker."""

    kind = "speech-to-text"
    separator = " → "

    def __init__(
        self,
        engines: Sequence[SpeechToText],
        *,
        breaker_failures: int = 3,
        breaker_reset_s: float = 30.0,
    ) -> None:
        super().__init__(engines, breaker_failures=breaker_failures, breaker_reset_s=breaker_reset_s)

    async def transcribe(self, audio: bytes, *, content_type: str = "") -> Transcript:
        """The first engine's transcript; the next engine's when it fails or its circuit is open."""
        return await self._first_answer(
            self._engines,
            lambda engine: functools.partial(engine.transcribe, audio, content_type=content_type),
        )


# --- choosing from the settings ---------------------------------------------------------------


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _openai_credentials(settings: Settings) -> tuple[str, str | None] | None:
    if settings.openai_api_key is None and settings.openai_base_url is None:
        return None
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "unused"
    return key, settings.openai_base_url


def audio_limits(settings: Settings) -> AudioLimits:
    return AudioLimits(max_bytes=settings.voice_max_bytes, max_seconds=settings.voice_max_seconds)


def make_stt(settings: Settings, notes: list[str]) -> SpeechToText | None:
    """The configured speech-to-text engine, not started; None (with a note) when off."""
    choice = settings.stt_backend
    if choice == "off":
        notes.append("speech-to-text is off (STT_BACKEND=off)")
        return None
    credentials = _openai_credentials(settings)
    if choice == "auto":
        if _installed("faster_whisper"):
            choice = "faster-whisper"
        elif credentials is not None:
            choice = "openai"
        else:
            logger.info("speech-to-text off: faster-whisper is not installed and no OpenAI key is set")
            notes.append(
                "speech-to-text is off: install the voice extra (pip install 'whisperengine[voice]') "
                "or set OPENAI_API_KEY"
            )
            return None
    return _stt_engine(choice, settings, auto=settings.stt_backend == "auto", notes=notes)


def _stt_engine(
    choice: str, settings: Settings, *, auto: bool = False, notes: list[str] | None = None
) -> SpeechToText | None:
    """One speech-to-text engine, not started; ConfigError when it cannot be made (None, with
    a note, when ``auto`` chose an engine that cannot run here)."""
    limits = audio_limits(settings)
    credentials = _openai_credentials(settings)
    if choice == "faster-whisper":
        if not _installed("faster_whisper"):
            raise ConfigError(
                "STT_BACKEND=faster-whisper but faster-whisper is not installed "
                "(pip install 'whisperengine[voice]')",
                variable="STT_BACKEND",
            )
        from voice.stt import FasterWhisperSTT

        return FasterWhisperSTT(
            settings.whisper_model,
            device=settings.whisper_device,
            compute_type=settings.whisper_compute_type,
            cpu_threads=settings.whisper_threads,
            language=settings.stt_language,
            beam_size=settings.whisper_beam_size,
            limits=limits,
            workers=settings.voice_workers,
            queue_size=settings.voice_queue_size,
            download_root=settings.data_dir / "models" / "whisper",
        )
    if credentials is None:
        raise ConfigError("STT_BACKEND=openai needs an API key", variable="OPENAI_API_KEY")
    if not _installed("av"):
        # Uploads are checked (decoded) locally before they are sent.
        message = "speech-to-text needs PyAV: pip install 'whisperengine[voice]'"
        if auto and notes is not None:
            logger.info("speech-to-text off: %s", message)
            notes.append(f"speech-to-text is off: {message}")
            return None
        raise ConfigError(message, variable="STT_BACKEND")
    from voice.stt import OpenAISTT

    key, base_url = credentials
    return OpenAISTT(
        api_key=key,
        base_url=base_url,
        model=settings.openai_stt_model,
        language=settings.stt_language,
        limits=limits,
        timeout_s=settings.llm_timeout_s,
        workers=max(settings.voice_workers, 4),
        queue_size=settings.voice_queue_size,
    )


def make_stt_fallbacks(
    settings: Settings, primary: SpeechToText | None, notes: list[str]
) -> list[SpeechToText]:
    """The engines of ``STT_FALLBACKS`` (not started) other than ``primary``'s kind; each one
    that cannot be made is logged and noted."""
    engines: list[SpeechToText] = []
    seen = {primary.name.split(":", 1)[0]} if primary is not None else set()
    for name in settings.stt_fallbacks:
        if name in seen:
            continue
        seen.add(name)
        try:
            engine = _stt_engine(name, settings)
        except ConfigError as exc:
            logger.warning("speech-to-text fallback %s skipped: %s", name, exc)
            notes.append(f"speech-to-text fallback {name} skipped: {exc}")
            continue
        if engine is not None:
            engines.append(engine)
    return engines


def make_tts_engines(settings: Settings, notes: list[str]) -> list[SpeechEngine]:
    """The text-to-speech engines of ``TTS_BACKENDS`` that are installed and configured,
    in order, not started; each one skipped is logged and noted."""
    engines: list[SpeechEngine] = []
    seen: set[str] = set()
    for name in settings.tts_backends:
        if name == "off" or name in seen:
            continue
        seen.add(name)
        engine = _make_tts(name, settings)
        if isinstance(engine, str):
            logger.info("text-to-speech engine %s skipped: %s", name, engine)
            notes.append(f"text-to-speech engine {name} skipped: {engine}")
        else:
            engines.append(engine)
    return engines


def _make_tts(name: str, settings: Settings) -> SpeechEngine | str:
    """The engine, or why it is skipped."""
    workers, queue = settings.voice_workers, settings.voice_queue_size
    max_chars = settings.tts_max_chars
    default = settings.tts_voice
    match name:
        case "piper":
            if not _installed("piper"):
                return "piper-tts is not installed (pip install 'whisperengine[voice]')"
            from voice.tts import PiperTTS, resolve_piper_voice

            voice_dirs = [settings.piper_voice_dir or settings.data_dir / "voices"]
            piper_default = default if default and resolve_piper_voice(default, voice_dirs) else None
            return PiperTTS(
                default_voice=piper_default,
                voice_dirs=voice_dirs,
                max_chars=max_chars,
                workers=workers,
                queue_size=queue,
            )
        case "espeak":
            if shutil.which(settings.espeak_binary) is None:
                return f"{settings.espeak_binary} is not installed (apt-get install espeak-ng)"
            from voice.tts import EspeakTTS

            return EspeakTTS(
                binary=settings.espeak_binary,
                default_voice=settings.espeak_voice,
                max_chars=max_chars,
                workers=max(workers, 2),
                queue_size=queue,
            )
        case "coqui":
            if settings.coqui_model is None:
                return "COQUI_MODEL is not set"
            if not _installed("TTS"):
                return "coqui-tts is not installed (install PyTorch, then pip install 'whisperengine[coqui]')"
            from voice.tts import CoquiTTS

            return CoquiTTS(
                settings.coqui_model,
                vocoder=settings.coqui_vocoder,
                max_chars=max_chars,
                workers=workers,
                queue_size=queue,
            )
        case "openai":
            credentials = _openai_credentials(settings)
            if credentials is None:
                return "OPENAI_API_KEY is not set"
            from voice.tts import OpenAITTS

            key, base_url = credentials
            return OpenAITTS(
                api_key=key,
                base_url=base_url,
                model=settings.openai_tts_model,
                default_voice=settings.openai_tts_voice,
                max_chars=max_chars,
                timeout_s=settings.llm_timeout_s,
                workers=max(workers, 4),
                queue_size=queue,
            )
    return f"unknown engine {name!r}"


async def _start_each(engines: Sequence[EngineT], what: str, notes: list[str]) -> list[EngineT]:
    """The ``engines`` that start; each one that does not is closed, logged and noted."""
    started: list[EngineT] = []
    for engine in engines:
        try:
            await engine.start()
        except (ConfigError, BackendUnavailable) as exc:
            await engine.aclose()
            logger.warning("%s %s skipped: %s", what, engine.name, exc)
            notes.append(f"{what} {engine.name} skipped: {exc}")
            continue
        started.append(engine)
    return started


async def build_voice(settings: Settings) -> tuple[SpeechToText | None, TextToSpeech | None, list[str]]:
    """Speech-to-text and text-to-speech as configured, started; plus notes for ``doctor``.

    Either may be None (off, or nothing usable installed). A text-to-speech engine that
    fails to start is skipped (logged and noted); an explicitly chosen speech-to-text
    engine that fails raises ConfigError, one chosen by ``auto`` is noted and left off.
    The caller owns both and must ``aclose()`` them.
    """
    notes: list[str] = []
    primary = make_stt(settings, notes)
    listening: list[SpeechToText] = []
    if primary is not None:
        try:
            await primary.start()
        except (ConfigError, BackendUnavailable) as exc:
            await primary.aclose()
            if settings.stt_backend != "auto":
                raise
            logger.error("speech-to-text %s could not start: %s", primary.name, exc)
            notes.append(f"speech-to-text is off: {primary.name} could not start: {exc}")
        else:
            listening.append(primary)
    listening += await _start_each(
        make_stt_fallbacks(settings, primary, notes), "speech-to-text fallback", notes
    )
    stt: TranscriptionRouter | None = None
    if listening:
        stt = TranscriptionRouter(
            listening, breaker_failures=settings.breaker_failures, breaker_reset_s=settings.breaker_reset_s
        )
        notes.append(f"speech-to-text: {stt.name}")
    started = await _start_each(make_tts_engines(settings, notes), "text-to-speech engine", notes)
    tts: SpeechRouter | None = None
    if started:
        tts = SpeechRouter(
            started,
            default_voice=settings.tts_voice,
            breaker_failures=settings.breaker_failures,
            breaker_reset_s=settings.breaker_reset_s,
        )
        notes.append(f"text-to-speech: {tts.name}")
    elif settings.tts_backends and settings.tts_backends != ["off"]:
        notes.append("text-to-speech is off: none of TTS_BACKENDS is installed and configured")
    return stt, tts, notes
