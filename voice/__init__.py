"""Speech in and out: speech-to-text, text-to-speech and audio conversion.

    voice.audio      PyAV decoding (OGG/Opus, WAV, MP3, M4A, WEBM...) to 16 kHz mono, limits,
                     OGG/Opus voice-note encoding, WAV helpers
    voice.stt        FasterWhisperSTT (in process), OpenAISTT (transcription API)
    voice.tts        PiperTTS, EspeakTTS, CoquiTTS, OpenAITTS
    voice.selection  build_voice(settings), SpeechRouter (voice per persona, fallback order)
    voice.workers    WorkerPool: the bounded thread pool every blocking engine runs in

Nothing heavy is imported here: each engine imports its library when it starts.
"""

from __future__ import annotations

from voice.selection import SpeechRouter, build_voice

__all__ = ["SpeechRouter", "build_voice"]
