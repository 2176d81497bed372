"""Implementations of :class:`engine.ports.VectorMemory`.

:class:`storage.vector.chroma.ChromaVectorMemory`, built with ``ChromaVectorMemory.embedded(path)``
(Chroma in this process) or ``ChromaVectorMemory.http(url)`` (a ``chroma run`` server at
``CHROMA_URL``). It is importable from here too; ``chromadb`` is imported only when it is asked for.

Semantics the contract suite (``tests/contract/test_vector_memory.py``) checks for every backend:
one partition per scope, and no query ever crosses scopes; ``add`` inserts or replaces by id;
``query`` returns at most ``k`` hits, closest first, with ``similarity = 1 - cosine distance``
(so a stored vector queried with itself comes back first with similarity ~ 1); asking for more
than the scope holds, or for a scope never written, is fine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.vector.chroma import ChromaVectorMemory

__all__ = ["ChromaVectorMemory"]


def __getattr__(name: str) -> Any:
    if name == "ChromaVectorMemory":
        from storage.vector.chroma import ChromaVectorMemory

        return ChromaVectorMemory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
