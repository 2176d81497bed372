"""Chroma as the engine's :class:`engine.ports.VectorMemory`, embedded or over HTTP.

One class, two ways to reach Chroma, and every other line shared:

- :meth:`ChromaVectorMemory.embedded` opens ``chromadb.PersistentClient(path)`` in this process;
- :meth:`ChromaVectorMemory.http` talks to a ``chroma run`` server at ``CHROMA_URL``.

Both use chromadb's *synchronous* client, called only from a thread pool this class owns (one
thread for the embedded store, which is not built for concurrent writers; a few for HTTP, whose
``httpx.Client`` is thread-safe), so the event loop never blocks and the two backends run the
very same code. (The async HTTP client would have needed a second copy of every method.)

Layout: one collection per scope, named ``<prefix>-<sha256(scope)[:40]>`` (Chroma allows only
``[a-zA-Z0-9._-]`` in names), with the scope itself kept in the collection's metadata and checked
when the collection is opened. Collections use the cosine space and no embedding function: the
engine always passes its own vectors. Collection handles are cached; a handle whose collection
was dropped behind our back (another client of the same server) is forgotten and looked up again.

Errors: an unreachable or timed-out server is :class:`engine.errors.BackendUnavailable` naming
``CHROMA_URL``; anything else Chroma rejects is :class:`engine.errors.StorageError`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import chromadb
import httpx
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.types import Include
from chromadb.config import Settings
from chromadb.errors import ChromaError, NotFoundError

from config.urls import redact_url
from engine.errors import BackendUnavailable, ConfigError, StorageError
from engine.ports import MetadataValue, Vector, VectorHit, VectorItem

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SERVICE = "Chroma"
_URL_VARIABLE = "CHROMA_URL"
_PATH_VARIABLE = "CHROMA_PATH"
_SCOPE_KEY = "we_scope"
_INCLUDE: Include = cast(Include, ["documents", "metadatas", "distances"])
_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_DEFAULT_HTTP_PORT = 8000


def collection_name(scope: str, prefix: str = "we") -> str:
    """The Chroma collection that holds ``scope``: ``<prefix>-<40 hex digits>``."""
    digest = hashlib.sha256(scope.encode("utf-8")).hexdigest()[:40]
    return f"{prefix}-{digest}"


def _settings() -> Settings:
    return Settings(anonymized_telemetry=False, allow_reset=False)


def _open_embedded(path: Path) -> ClientAPI:
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=_settings())


def _open_http(
    url: str, *, headers: Mapping[str, str] | None, connect_timeout_s: float, timeout_s: float
) -> ClientAPI:
    parts = urlsplit(url)
    host = parts.hostname or ""
    ssl = parts.scheme == "https"
    port = parts.port or (443 if ssl else _DEFAULT_HTTP_PORT)
    # chromadb's HttpClient validates the tenant with no timeout at all: ask the heartbeat first,
    # with ours, so a black-holed address fails fast instead of hanging start-up.
    base = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], "", "", ""))
    with httpx.Client(timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s)) as probe:
        probe.get(f"{base}/api/v2/heartbeat", headers=dict(headers or {})).raise_for_status()
    client = chromadb.HttpClient(
        host=host, port=port, ssl=ssl, headers=dict(headers or {}), settings=_settings()
    )
    # ... and its requests have no timeout either (httpx.Client(timeout=None)): set ours.
    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
    return client


def _close_client(client: ClientAPI) -> None:
    close = getattr(client, "close", None)
    if callable(close):
        close()
    # chromadb's HTTP transport never closes its httpx.Client, so its sockets leak; the client
    # and its internal admin client each have one (with separate Systems over HTTP).
    for owner in (client, getattr(client, "_admin_client", None)):
        session = getattr(getattr(owner, "_server", None), "_session", None)
        if isinstance(session, httpx.Client):
            session.close()


class ChromaVectorMemory:
    """Vector memory in Chroma, one collection per scope. Build with :meth:`embedded` or :meth:`http`."""

    def __init__(
        self,
        open_client: Callable[[], ClientAPI],
        *,
        where: str,
        remote: bool,
        workers: int = 1,
        collection_prefix: str = "we",
    ) -> None:
        """Prefer the two factories; ``open_client`` is called once, in the worker thread, by start()."""
        if not _PREFIX_RE.fullmatch(collection_prefix):
            raise ValueError(f"collection_prefix must match {_PREFIX_RE.pattern}, got {collection_prefix!r}")
        self._open_client = open_client
        self._where = where
        self._remote = remote
        self._workers = workers
        self._prefix = collection_prefix
        self._executor: ThreadPoolExecutor | None = None
        self._client: ClientAPI | None = None
        self._collections: dict[str, Collection] = {}
        self._max_batch = 1000

    @classmethod
    def embedded(cls, path: str | Path, *, collection_prefix: str = "we") -> ChromaVectorMemory:
        """Chroma inside this process, persisted under ``path`` (created if missing)."""
        directory = Path(path)
        return cls(
            functools.partial(_open_embedded, directory),
            where=str(directory),
            remote=False,
            # two threads: a query need not wait behind an upsert (which waits on fsync)
            workers=2,
            collection_prefix=collection_prefix,
        )

    @classmethod
    def http(
        cls,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout_s: float = 2.0,
        timeout_s: float = 30.0,
        workers: int = 4,
        collection_prefix: str = "we",
    ) -> ChromaVectorMemory:
        """A Chroma server at ``url`` (``http://host:port`` or ``https://...``); ``headers`` e.g. auth."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ConfigError(f"invalid Chroma URL {redact_url(url)}: {exc}", variable=_URL_VARIABLE) from exc
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(
                f"Chroma URL must look like http://host:port, got {redact_url(url)}", variable=_URL_VARIABLE
            )
        return cls(
            functools.partial(
                _open_http, url, headers=headers, connect_timeout_s=connect_timeout_s, timeout_s=timeout_s
            ),
            where=redact_url(url),
            remote=True,
            workers=workers,
            collection_prefix=collection_prefix,
        )

    def __repr__(self) -> str:
        kind = "http" if self._remote else "embedded"
        return f"ChromaVectorMemory.{kind}({self._where!r})"

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="chroma")
        self._executor = executor
        try:
            self._client, self._max_batch = await self._run(self._connect)
        except BaseException:
            self._executor = None
            executor.shutdown(wait=False)
            raise
        logger.info("opened Chroma %s", self)

    async def aclose(self) -> None:
        executor, client = self._executor, self._client
        self._client = None
        self._collections.clear()
        if executor is None:
            return
        try:
            if client is not None:
                await asyncio.get_running_loop().run_in_executor(executor, _close_client, client)
        finally:
            self._executor = None
            executor.shutdown(wait=False)

    async def ping(self) -> None:
        await self._run(lambda: self._api().heartbeat())

    # --- VectorMemory port -------------------------------------------------------------

    async def add(self, scope: str, items: Sequence[VectorItem]) -> None:
        if not items:
            return
        latest = {item.id: item for item in items}  # one id twice in a call: the last one wins
        await self._run(self._add_sync, scope, list(latest.values()))

    async def query(self, scope: str, embedding: Vector, k: int) -> list[VectorHit]:
        if k <= 0:
            return []
        return await self._run(self._query_sync, scope, embedding, k)

    async def update_metadata(self, scope: str, metadata: Mapping[str, Mapping[str, MetadataValue]]) -> None:
        if not metadata:
            return
        await self._run(self._update_metadata_sync, scope, dict(metadata))

    async def delete(self, scope: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        await self._run(self._delete_sync, scope, list(dict.fromkeys(ids)))

    async def drop_scope(self, scope: str) -> None:
        await self._run(self._drop_sync, scope)

    async def count(self, scope: str) -> int:
        return await self._run(self._count_sync, scope)

    # --- whole-store access for backup and migration (storage/portability.py) ------------

    async def list_scopes(self) -> list[str]:
        """Every scope that has a collection under this prefix, sorted."""
        return await self._run(self._list_scopes_sync)

    async def scope_ids(self, scope: str) -> list[str]:
        """Every id stored in the scope, sorted (a stable order to page through)."""
        return await self._run(self._scope_ids_sync, scope)

    async def get_items(self, scope: str, ids: Sequence[str]) -> list[VectorItem]:
        """The stored items with these ids, embeddings included, in the order of ``ids``;
        ids not stored are left out."""
        if not ids:
            return []
        return await self._run(self._get_items_sync, scope, list(dict.fromkeys(ids)))

    # --- the worker-thread side --------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        executor = self._executor
        if executor is None:
            raise StorageError(f"{self!r} is not started")
        return await asyncio.get_running_loop().run_in_executor(
            executor, functools.partial(self._translated, fn, *args)
        )

    def _translated(self, fn: Callable[..., T], *args: Any) -> T:
        with self._errors():
            return fn(*args)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.TransportError as exc:  # refused, reset, timed out: the server is not there
            detail = f"{self._where}: {exc or type(exc).__name__}"
            raise BackendUnavailable(_SERVICE, detail, variable=_URL_VARIABLE) from exc
        except (ChromaError, httpx.HTTPError, ValueError) as exc:
            raise StorageError(f"Chroma ({self._where}) failed: {exc}") from exc
        except Exception as exc:
            # chromadb's HTTP client raises a plain Exception(response text) for server errors
            # it does not recognise; convert exactly those, let anything more specific through.
            if type(exc) is not Exception:
                raise
            raise StorageError(f"Chroma ({self._where}) failed: {exc}") from exc

    def _connect(self) -> tuple[ClientAPI, int]:
        client = self._open()
        try:
            return client, client.get_max_batch_size()
        except BaseException:
            _close_client(client)
            raise

    def _open(self) -> ClientAPI:
        try:
            return self._open_client()
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            detail = f"{self._where}: {exc or type(exc).__name__}"
            raise BackendUnavailable(_SERVICE, detail, variable=_URL_VARIABLE) from exc
        except (ChromaError, ValueError, OSError) as exc:
            if self._remote:
                raise BackendUnavailable(_SERVICE, f"{self._where}: {exc}", variable=_URL_VARIABLE) from exc
            raise StorageError(
                f"cannot open embedded Chroma at {self._where} (check {_PATH_VARIABLE}): {exc}"
            ) from exc

    def _api(self) -> ClientAPI:
        client = self._client
        if client is None:
            raise StorageError(f"{self!r} is not started")
        return client

    def _collection(self, scope: str, *, create: bool) -> Collection | None:
        cached = self._collections.get(scope)
        if cached is not None:
            return cached
        name = collection_name(scope, self._prefix)
        client = self._api()
        if create:
            collection = client.get_or_create_collection(
                name,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={_SCOPE_KEY: scope},
                embedding_function=None,
            )
        else:
            try:
                collection = client.get_collection(name, embedding_function=None)
            except NotFoundError:
                return None
        stored = (collection.metadata or {}).get(_SCOPE_KEY)
        if stored != scope:
            raise StorageError(f"Chroma collection {name} belongs to scope {stored!r}, not {scope!r}")
        self._collections[scope] = collection
        return collection

    def _with_collection(self, scope: str, create: bool, action: Callable[[Collection], T], missing: T) -> T:
        """Run ``action`` on the scope's collection, re-opening it once if it vanished meanwhile."""
        for attempt in (1, 2):
            collection = self._collection(scope, create=create)
            if collection is None:
                return missing
            try:
                return action(collection)
            except NotFoundError:
                self._collections.pop(scope, None)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _add_sync(self, scope: str, items: list[VectorItem]) -> None:
        def upsert(collection: Collection) -> None:
            for start in range(0, len(items), self._max_batch):
                batch = items[start : start + self._max_batch]
                collection.upsert(
                    ids=[item.id for item in batch],
                    embeddings=np.asarray([item.embedding for item in batch], dtype=np.float32),
                    documents=[item.text for item in batch],
                    metadatas=[_metadata(item.metadata) for item in batch],  # type: ignore[misc]
                )

        self._with_collection(scope, True, upsert, None)

    def _query_sync(self, scope: str, embedding: Vector, k: int) -> list[VectorHit]:
        vector = np.asarray(embedding, dtype=np.float32)

        def search(collection: Collection) -> list[VectorHit]:
            result = collection.query(query_embeddings=cast(Any, [vector]), n_results=k, include=_INCLUDE)
            ids = result["ids"][0]
            documents = (result["documents"] or [[]])[0]
            metadatas = (result["metadatas"] or [[]])[0]
            distances = (result["distances"] or [[]])[0]
            return [
                VectorHit(
                    id=ids[i],
                    text=documents[i] or "",
                    similarity=max(-1.0, min(1.0, 1.0 - float(distances[i]))),
                    metadata=_hit_metadata(metadatas[i]),
                )
                for i in range(len(ids))
            ]

        return self._with_collection(scope, False, search, [])

    def _update_metadata_sync(self, scope: str, metadata: dict[str, Mapping[str, MetadataValue]]) -> None:
        def update(collection: Collection) -> None:
            # Chroma's update of an id it does not hold only logs a warning: ask which are there
            stored = set(collection.get(ids=list(metadata), include=[])["ids"])
            ids = [item_id for item_id in metadata if item_id in stored]
            for start in range(0, len(ids), self._max_batch):
                batch = ids[start : start + self._max_batch]
                collection.update(ids=batch, metadatas=[_metadata(metadata[i]) for i in batch])  # type: ignore[misc]

        self._with_collection(scope, False, update, None)

    def _delete_sync(self, scope: str, ids: list[str]) -> None:
        def remove(collection: Collection) -> None:
            for start in range(0, len(ids), self._max_batch):
                collection.delete(ids=ids[start : start + self._max_batch])

        self._with_collection(scope, False, remove, None)

    def _drop_sync(self, scope: str) -> None:
        self._collections.pop(scope, None)
        try:
            self._api().delete_collection(collection_name(scope, self._prefix))
        except NotFoundError:
            return

    def _count_sync(self, scope: str) -> int:
        return self._with_collection(scope, False, lambda collection: collection.count(), 0)

    def _list_scopes_sync(self) -> list[str]:
        scopes = []
        for collection in self._api().list_collections():
            scope = (collection.metadata or {}).get(_SCOPE_KEY)
            if isinstance(scope, str) and collection.name == collection_name(scope, self._prefix):
                scopes.append(scope)
        return sorted(scopes)

    def _scope_ids_sync(self, scope: str) -> list[str]:
        def ids(collection: Collection) -> list[str]:
            found: list[str] = []
            while True:
                page = collection.get(include=[], limit=self._max_batch, offset=len(found))["ids"]
                found.extend(page)
                if len(page) < self._max_batch:
                    return sorted(found)

        return self._with_collection(scope, False, ids, [])

    def _get_items_sync(self, scope: str, ids: list[str]) -> list[VectorItem]:
        include = cast(Include, ["documents", "metadatas", "embeddings"])

        def fetch(collection: Collection) -> list[VectorItem]:
            found: dict[str, VectorItem] = {}
            for start in range(0, len(ids), self._max_batch):
                result = collection.get(ids=ids[start : start + self._max_batch], include=include)
                documents = result["documents"] or []
                metadatas = result["metadatas"] or []
                embeddings = result["embeddings"]
                for i, item_id in enumerate(result["ids"]):
                    vector = np.asarray(embeddings[i], dtype=np.float32) if embeddings is not None else None
                    if vector is None:
                        raise StorageError(f"Chroma returned no embedding for {item_id!r} in scope {scope!r}")
                    found[item_id] = VectorItem(
                        id=item_id,
                        text=documents[i] or "",
                        embedding=vector.tolist(),
                        metadata=_hit_metadata(metadatas[i]),
                    )
            return [found[i] for i in ids if i in found]

        return self._with_collection(scope, False, fetch, [])


def _metadata(metadata: Mapping[str, MetadataValue]) -> dict[str, MetadataValue] | None:
    """Chroma rejects an empty metadata dict: send None for it."""
    if not metadata:
        return None
    for key, value in metadata.items():
        if not isinstance(value, str | int | float | bool):
            raise StorageError(
                f"metadata {key!r} must be str, int, float or bool, not {type(value).__name__}"
            )
    return dict(metadata)


def _hit_metadata(metadata: Mapping[str, object] | None) -> dict[str, MetadataValue]:
    if not metadata:
        return {}
    return {k: v for k, v in metadata.items() if isinstance(v, str | int | float | bool)}
