"""Implementations of the ``LLM`` and ``Embedder`` ports (see ``engine/ports.py``).

One module per backend, imported lazily by the composition root so that an unused
backend's SDK is never loaded:

* :mod:`inference.openai_chat` — ``OpenAIChat``, any OpenAI-compatible API (official SDK);
* :mod:`inference.ollama_chat` — ``OllamaChat`` and ``ollama_reachable`` (official SDK);
* :mod:`inference.llamacpp_chat` — ``LlamaCppChat``, a GGUF model in process (llama.cpp);
* :mod:`inference.minilm` — ``MiniLMEmbedder``, all-MiniLM-L6-v2 int8 on onnxruntime.

The retry/fallback policy over chat backends is backend-independent: ``engine.llm.ResilientLLM``.
This package's ``__init__`` holds only small shared helpers and imports no SDK.
"""

from __future__ import annotations

from engine.errors import LLMError


def llm_error(message: str, status: int | None = None) -> LLMError:
    """An ``LLMError`` carrying the HTTP ``status`` it came from (read by ``ResilientLLM``:
    a 4xx other than 408/409/425/429 is not retried on the same backend)."""
    return LLMError(message, status=status)
