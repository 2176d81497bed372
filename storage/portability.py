"""Backup, restore and migrate a deployment's data: SQL tables, vectors, persona files.

Three operations, one copy loop (:func:`_copy`) between a *source* and a *sink*:

    backup   live deployment  →  archive file
    restore  archive file     →  live deployment
    migrate  live deployment  →  live deployment (another DATABASE_URL and/or CHROMA_URL)

A *deployment* is a started :class:`SQLConversationStore` plus, optionally, a started
:class:`ChromaVectorMemory` and the directory of the user's persona files.

Tables are every table of ``storage.sql.schema.metadata``, in dependency order, read in batches
ordered by primary key (keyset pagination) and written with ``INSERT ... ON CONFLICT DO NOTHING``
carrying the same primary keys, so a batch written twice leaves one copy. Vectors are read per
scope (one Chroma collection per scope) with their stored embeddings and metadata, and written
with Chroma's upsert: nothing is embedded again.

The archive is one gzip-compressed tar file. Its first member, ``manifest.json``, holds the format
name and version, the schema revision (Alembic) of the database it came from, when it was made,
the row count of every table and the item count of every vector scope, the column types needed to
decode the rows, and the sha256 of every other member:

    sql/<table>.jsonl           one JSON object per row; datetimes ISO 8601, bytes base64
    vectors/<collection>.jsonl  one item per line: id, text, metadata, float32 embedding in base64
    personas/packaged/*.yaml    the personas shipped with the program (kept for reference)
    personas/user/*.yaml        the user's persona files (PERSONA_DIR), restored to the target's
    settings.json               the non-secret settings, for reference; secrets are never written

Secrets never enter an archive: secret settings (API keys, tokens) are left out of
``settings.json`` and named in the manifest, passwords in URLs are masked, and the rows of the
``settings`` table in scope ``secrets`` (secrets stored encrypted, ``storage/secrets.py``) are not
copied. ``migrate`` copies those rows: it moves one deployment, secrets included.

Restore checks the format, the version and every checksum before it writes anything.

Resuming: each operation keeps a checkpoint (JSON) that records, per table and scope, how many
rows are done and the primary key of the last one; it is saved after every batch and removed when
the operation completes. Running the same command again after an interruption continues where the
checkpoint says. Backup keeps its checkpoint and the data written so far in ``<archive>.partial/``
and renames the finished archive into place at the end (an archive either exists whole or not).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.errors import StorageError
from engine.ports import MetadataValue, VectorItem
from storage.secrets import SECRETS_SCOPE
from storage.sql.schema import KEYWORD_SEARCH_TABLE, is_keyword_search_object, metadata
from storage.sql.store import SQLConversationStore, alembic_config, redact_url

logger = logging.getLogger(__name__)

FORMAT_NAME = "whisperengine-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SETTINGS_MEMBER = "settings.json"
CHECKPOINT_NAME = "checkpoint.json"
_ALEMBIC_TABLE = "alembic_version"
_HASH_CHUNK = 1 << 20

# --- errors ------------------------------------------------------------------------------


class ArchiveError(StorageError):
    """The file is not a WhisperEngine backup this program can read: corrupt, truncated,
    foreign, or of another format version. Raised before anything is written."""


class TargetNotEmpty(StorageError):
    """The target already holds data and ``force`` was not given."""


class Interrupted(StorageError):
    """The operation stopped early (``stop_after_batches``); its checkpoint is kept for a re-run."""


# --- public types ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where a deployment's data lives; every part started by the caller."""

    store: SQLConversationStore
    vectors: VectorStoreAccess | None = None
    persona_dir: Path | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """How to copy: batch sizes, whether a non-empty target may be replaced, a stop for tests."""

    batch_size: int = 500
    vector_batch_size: int = 256
    force: bool = False
    stop_after_batches: int | None = None
    """Stop (raising :class:`Interrupted`) after this many batches; the checkpoint stays."""


@dataclass(frozen=True, slots=True)
class CopyReport:
    """What an operation copied: rows per table and items per vector scope (all runs together)."""

    tables: dict[str, int]
    scopes: dict[str, int]
    resumed: bool
    notes: tuple[str, ...] = ()


class Progress(Protocol):
    """Receives progress of a long operation; the CLI draws it as progress bars."""

    def begin(self, label: str, total: int | None) -> None: ...

    def advance(self, label: str, amount: int) -> None: ...

    def end(self, label: str) -> None: ...

    def note(self, message: str) -> None: ...


class NullProgress:
    """Progress that goes nowhere."""

    def begin(self, label: str, total: int | None) -> None:
        return None

    def advance(self, label: str, amount: int) -> None:
        return None

    def end(self, label: str) -> None:
        return None

    def note(self, message: str) -> None:
        return None


class VectorStoreAccess(Protocol):
    """What copying needs of a vector store: :class:`storage.vector.chroma.ChromaVectorMemory`."""

    async def list_scopes(self) -> list[str]: ...

    async def scope_ids(self, scope: str) -> list[str]: ...

    async def get_items(self, scope: str, ids: Sequence[str]) -> list[VectorItem]: ...

    async def add(self, scope: str, items: Sequence[VectorItem]) -> None: ...

    async def drop_scope(self, scope: str) -> None: ...


# --- values: lossless JSON encoding by column kind ---------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str
    kind: str  # text | integer | float | decimal | boolean | datetime | date | bytes | json


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    rows: int


@dataclass(frozen=True, slots=True)
class ScopeSpec:
    scope: str
    items: int


def column_kind(column: sa.Column[Any]) -> str:
    """The encoding a column's values get in an archive, from its SQLAlchemy type."""
    kind = column.type
    if isinstance(kind, sa.TypeDecorator):
        kind = kind.impl_instance
    checks: tuple[tuple[type[sa.types.TypeEngine[Any]], str], ...] = (
        (sa.JSON, "json"),
        (sa.DateTime, "datetime"),
        (sa.Date, "date"),
        (sa.LargeBinary, "bytes"),
        (sa.Boolean, "boolean"),
        (sa.Integer, "integer"),
        (sa.Float, "float"),
        (sa.Numeric, "decimal"),
        (sa.String, "text"),
    )
    for type_, name in checks:
        if isinstance(kind, type_):
            return name
    raise StorageError(f"column {column.table.name}.{column.name} has a type backups cannot encode: {kind}")


def encode_value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    match kind:
        case "datetime" | "date":
            return value.isoformat()
        case "bytes":
            return base64.b64encode(bytes(value)).decode("ascii")
        case "decimal":
            return str(value)
        case "float":
            return float(value)
    return value


def decode_value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    match kind:
        case "datetime":
            return datetime.fromisoformat(value)
        case "date":
            return date.fromisoformat(value)
        case "bytes":
            return base64.b64decode(value)
        case "decimal":
            return Decimal(value)
    return value


def _encode_row(spec: TableSpec, row: Mapping[str, Any]) -> dict[str, Any]:
    return {c.name: encode_value(c.kind, row[c.name]) for c in spec.columns}


def _decode_row(spec: TableSpec, row: Mapping[str, Any]) -> dict[str, Any]:
    return {c.name: decode_value(c.kind, row[c.name]) for c in spec.columns if c.name in row}


def _encode_item(item: VectorItem) -> dict[str, Any]:
    vector = np.asarray(item.embedding, dtype="<f4")
    return {
        "id": item.id,
        "text": item.text,
        "metadata": dict(item.metadata),
        "dimension": int(vector.shape[0]),
        "embedding_f32": base64.b64encode(vector.tobytes()).decode("ascii"),
    }


def _decode_item(data: Mapping[str, Any]) -> VectorItem:
    vector = np.frombuffer(base64.b64decode(data["embedding_f32"]), dtype="<f4")
    if vector.shape[0] != data["dimension"]:
        raise ArchiveError(f"vector {data['id']!r} has {vector.shape[0]} values, not {data['dimension']}")
    meta: dict[str, MetadataValue] = dict(data.get("metadata") or {})
    return VectorItem(id=data["id"], text=data["text"], embedding=vector.tolist(), metadata=meta)


# --- the schema ----------------------------------------------------------------------------


def schema_tables() -> list[sa.Table]:
    """Every table of the schema, parents before children (dependency order)."""
    return [t for t in metadata.sorted_tables if not is_keyword_search_object(t.name, "table")]


def _table_columns(table: sa.Table) -> tuple[ColumnSpec, ...]:
    return tuple(ColumnSpec(c.name, column_kind(c)) for c in table.columns)


def head_revision() -> str | None:
    """The newest schema revision this program's migrations know."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


@contextlib.contextmanager
def _sql_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except sa_exc.SQLAlchemyError as exc:
        inner = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
        reason = (str(inner).strip() or type(inner).__name__).splitlines()[0]
        raise StorageError(f"{operation} failed: {reason}") from exc


async def _database_revision(store: SQLConversationStore) -> str | None:
    with _sql_errors("reading the schema revision"):
        async with store.engine.connect() as conn:
            row = (await conn.execute(sa.text(f"SELECT version_num FROM {_ALEMBIC_TABLE}"))).first()
    return None if row is None else str(row[0])


async def _extra_tables(store: SQLConversationStore) -> list[str]:
    """Tables in the database that the schema does not describe (they are not copied)."""
    known = {t.name for t in schema_tables()} | {_ALEMBIC_TABLE}

    def names(conn: sa.Connection) -> list[str]:
        return sa.inspect(conn).get_table_names()

    with _sql_errors("listing tables"):
        async with store.engine.connect() as conn:
            found = await conn.run_sync(names)
    return sorted(n for n in found if n not in known and not is_keyword_search_object(n, "table"))


# --- checkpoint ------------------------------------------------------------------------------


class Checkpoint:
    """Progress of one operation, saved atomically after every batch."""

    def __init__(self, path: Path, identity: Mapping[str, Any]) -> None:
        self.path = path
        self.identity = dict(identity)
        self.tables: dict[str, dict[str, Any]] = {}
        self.scopes: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}

    def load(self) -> bool:
        """Read a checkpoint of the same operation; False when there is none to resume."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            raise StorageError(
                f"cannot read the checkpoint {self.path}: {exc}; remove it to start over"
            ) from exc
        if data.get("identity") != self.identity:
            return False
        self.tables = data.get("tables", {})
        self.scopes = data.get("scopes", {})
        self.extra = data.get("extra", {})
        return True

    def table(self, name: str) -> dict[str, Any]:
        return self.tables.setdefault(name, {"rows": 0, "after": None, "done": False})

    def scope(self, name: str) -> dict[str, Any]:
        return self.scopes.setdefault(name, {"items": 0, "done": False})

    def save(self) -> None:
        data = {"identity": self.identity, "tables": self.tables, "scopes": self.scopes, "extra": self.extra}
        _write_atomically(self.path, json.dumps(data, ensure_ascii=False).encode("utf-8"))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# --- sources -----------------------------------------------------------------------------------


class _Source(Protocol):
    async def table_specs(self) -> list[TableSpec]: ...

    def rows(
        self, spec: TableSpec, position: Mapping[str, Any], batch_size: int
    ) -> AsyncIterator[tuple[list[dict[str, Any]], list[Any] | None]]: ...

    async def scope_specs(self) -> list[ScopeSpec]: ...

    def items(self, scope: str, skip: int, batch_size: int) -> AsyncIterator[list[VectorItem]]: ...


class _Sink(Protocol):
    async def write_rows(self, spec: TableSpec, rows: list[dict[str, Any]]) -> None: ...

    async def write_items(self, scope: str, items: list[VectorItem]) -> None: ...

    def durable(self) -> None:
        """Make everything written so far durable before the checkpoint records it."""


class _LiveSource:
    """Reads a started deployment's tables (keyset batches) and vector scopes."""

    def __init__(self, deployment: Deployment, *, leave_out_secrets: bool = False) -> None:
        self._store = deployment.store
        self._vectors = deployment.vectors
        self._ids: dict[str, list[str]] = {}
        self._leave_out_secrets = leave_out_secrets

    def _where(self, table: sa.Table) -> list[sa.ColumnElement[bool]]:
        """Rows left out: the encrypted secrets of ``settings`` when writing an archive."""
        if self._leave_out_secrets and table.name == "settings":
            return [table.c.scope != SECRETS_SCOPE]
        return []

    async def table_specs(self) -> list[TableSpec]:
        specs = []
        with _sql_errors("counting rows"):
            async with self._store.engine.connect() as conn:
                for table in schema_tables():
                    counting = sa.select(sa.func.count()).select_from(table).where(*self._where(table))
                    count = (await conn.execute(counting)).scalar_one()
                    specs.append(TableSpec(table.name, _table_columns(table), int(count)))
        return specs

    async def rows(
        self, spec: TableSpec, position: Mapping[str, Any], batch_size: int
    ) -> AsyncIterator[tuple[list[dict[str, Any]], list[Any] | None]]:
        table = metadata.tables[spec.name]
        keys = list(table.primary_key.columns)
        if not keys:
            raise StorageError(f"table {spec.name} has no primary key: cannot copy it in batches")
        kinds = {c.name: c.kind for c in spec.columns}
        after_encoded = position.get("after")
        after = (
            None
            if after_encoded is None
            else [decode_value(kinds[k.name], v) for k, v in zip(keys, after_encoded, strict=True)]
        )
        columns = [table.c[c.name] for c in spec.columns]
        while True:
            statement = sa.select(*columns).where(*self._where(table)).order_by(*keys).limit(batch_size)
            if after is not None:
                bounds = [sa.literal(value, type_=key.type) for key, value in zip(keys, after, strict=True)]
                if len(keys) == 1:
                    statement = statement.where(keys[0] > bounds[0])
                else:
                    statement = statement.where(sa.tuple_(*keys) > sa.tuple_(*bounds))
            with _sql_errors(f"reading {spec.name}"):
                async with self._store.engine.connect() as conn:
                    result = (await conn.execute(statement)).mappings().all()
            if not result:
                return
            rows = [dict(row) for row in result]
            after = [rows[-1][k.name] for k in keys]
            yield rows, [encode_value(kinds[k.name], v) for k, v in zip(keys, after, strict=True)]
            if len(rows) < batch_size:
                return

    async def scope_specs(self) -> list[ScopeSpec]:
        if self._vectors is None:
            return []
        specs = []
        for scope in await self._vectors.list_scopes():
            ids = self._ids[scope] = await self._vectors.scope_ids(scope)
            specs.append(ScopeSpec(scope, len(ids)))
        return specs

    async def items(self, scope: str, skip: int, batch_size: int) -> AsyncIterator[list[VectorItem]]:
        assert self._vectors is not None
        ids = self._ids.get(scope)
        if ids is None:
            ids = self._ids[scope] = await self._vectors.scope_ids(scope)
        for start in range(skip, len(ids), batch_size):
            yield await self._vectors.get_items(scope, ids[start : start + batch_size])


class _LiveSink:
    """Writes into a started deployment: idempotent inserts, vector upserts."""

    def __init__(self, deployment: Deployment) -> None:
        self._store = deployment.store
        self._vectors = deployment.vectors
        self._insert = postgresql.insert if self._store.kind == "postgresql" else sqlite.insert

    async def is_empty(self) -> bool:
        with _sql_errors("checking whether the target is empty"):
            async with self._store.engine.connect() as conn:
                for table in schema_tables():
                    if (await conn.execute(sa.select(sa.literal(1)).select_from(table).limit(1))).first():
                        return False
        return self._vectors is None or not await self._vectors.list_scopes()

    async def clear(self) -> None:
        with _sql_errors("clearing the target"):
            async with self._store.engine.begin() as conn:
                for table in reversed(schema_tables()):
                    await conn.execute(table.delete())
        if self._vectors is not None:
            for scope in await self._vectors.list_scopes():
                await self._vectors.drop_scope(scope)

    async def write_rows(self, spec: TableSpec, rows: list[dict[str, Any]]) -> None:
        table = metadata.tables[spec.name]
        with _sql_errors(f"writing {spec.name}"):
            async with self._store.engine.begin() as conn:
                await conn.execute(self._insert(table).on_conflict_do_nothing(), rows)

    async def write_items(self, scope: str, items: list[VectorItem]) -> None:
        if self._vectors is None:
            raise StorageError("the target has no vector store to write vectors to")
        await self._vectors.add(scope, items)

    def durable(self) -> None:
        return None  # every batch is committed before it returns

    async def rebuild_derived(self) -> list[str]:
        """Rebuild what the database derives from the rows: sequences and the keyword index."""
        done = []
        with _sql_errors("rebuilding indexes"):
            async with self._store.engine.begin() as conn:
                if self._store.kind == "postgresql":
                    await _reset_sequences(conn)
                    done.append("sequences reset")
                    await conn.execute(sa.text("ANALYZE"))
                    done.append(
                        "keyword search: tsvector column generated and term counts kept by PostgreSQL"
                    )
                else:
                    fts = sa.text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name")
                    if (await conn.execute(fts, {"name": KEYWORD_SEARCH_TABLE})).first():
                        await conn.execute(_FTS_REBUILD)
                        done.append("keyword search: FTS5 index rebuilt")
        return done


_FTS_REBUILD = sa.text(f"INSERT INTO {KEYWORD_SEARCH_TABLE}({KEYWORD_SEARCH_TABLE}) VALUES ('rebuild')")


async def _reset_sequences(conn: AsyncConnection) -> None:
    """After rows were inserted with their own ids, move each serial sequence past the largest."""
    for table in schema_tables():
        for column in table.primary_key.columns:
            if column_kind(column) != "integer":
                continue
            quote = conn.dialect.identifier_preparer.quote
            largest = f"SELECT MAX({quote(column.name)}) FROM {quote(table.name)}"
            statement = (
                f"SELECT setval(s.name, COALESCE(({largest}), 0) + 1, false) FROM "
                "(SELECT pg_get_serial_sequence(:t, :c) AS name) AS s WHERE s.name IS NOT NULL"
            )
            await conn.execute(sa.text(statement), {"t": table.name, "c": column.name})


# --- the archive -------------------------------------------------------------------------------


def _table_member(table: str) -> str:
    return f"sql/{table}.jsonl"


def _scope_member(scope: str) -> str:
    return f"vectors/{hashlib.sha256(scope.encode('utf-8')).hexdigest()[:40]}.jsonl"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _ArchiveSink:
    """Writes JSON lines into ``<archive>.partial/`` (one file open at a time); :func:`backup`
    then packs them into the archive."""

    def __init__(self, staging: Path, checkpoint: Checkpoint) -> None:
        self._staging = staging
        self._sizes: dict[str, int] = checkpoint.extra.setdefault("sizes", {})
        self._member: str | None = None
        self._handle: IO[bytes] | None = None

    def _file(self, member: str) -> IO[bytes]:
        if self._member != member or self._handle is None:
            self.durable()
            self.close()
            path = self._staging / member
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("ab")
            recorded = self._sizes.get(member, 0)
            handle.truncate(recorded)  # drop a batch written after the last checkpoint
            handle.seek(recorded)
            self._member, self._handle = member, handle
        return self._handle

    def _append(self, member: str, lines: list[dict[str, Any]]) -> None:
        handle = self._file(member)
        payload = "".join(
            json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n" for line in lines
        )
        handle.write(payload.encode("utf-8"))

    async def write_rows(self, spec: TableSpec, rows: list[dict[str, Any]]) -> None:
        self._append(_table_member(spec.name), [_encode_row(spec, row) for row in rows])

    async def write_items(self, scope: str, items: list[VectorItem]) -> None:
        self._append(_scope_member(scope), [_encode_item(item) for item in items])

    def durable(self) -> None:
        if self._handle is None or self._member is None:
            return
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._sizes[self._member] = self._handle.tell()

    def touch(self, member: str) -> None:
        """Make sure a member exists (an empty table still gets its file)."""
        path = self._staging / member
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._member, self._handle = None, None


@dataclass(slots=True)
class VerifiedArchive:
    """An archive whose format, version, schema revision and checksums were checked."""

    path: Path
    manifest: dict[str, Any]
    tables: list[TableSpec] = field(default_factory=list)
    scopes: list[ScopeSpec] = field(default_factory=list)
    digest: str = ""


def _archive_error(path: Path, problem: str) -> ArchiveError:
    return ArchiveError(f"{path} is not a usable WhisperEngine backup: {problem}; nothing was written")


_CORRUPT = (
    tarfile.TarError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    UnicodeDecodeError,
    json.JSONDecodeError,
)


@contextlib.contextmanager
def _open_tar(path: Path) -> Iterator[tarfile.TarFile]:
    try:
        tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed below; open errors reported apart
    except FileNotFoundError:
        raise ArchiveError(f"no backup at {path}") from None
    except _CORRUPT as exc:
        raise _archive_error(path, f"corrupt or truncated ({exc or type(exc).__name__})") from exc
    except OSError as exc:
        raise _archive_error(path, f"cannot read it ({exc})") from exc
    try:
        yield tar
    except _CORRUPT as exc:
        raise _archive_error(path, f"corrupt or truncated ({exc or type(exc).__name__})") from exc
    finally:
        tar.close()


def verify_archive(path: Path) -> VerifiedArchive:
    """Read the manifest, check format, version and schema revision, and every member's sha256."""
    path = _absolute(path)
    with _open_tar(path) as tar:
        first = tar.next()
        if first is None or first.name != MANIFEST_NAME or not first.isfile():
            raise _archive_error(path, f"its first member is not {MANIFEST_NAME}")
        raw = _read_member(tar, first)
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _archive_error(path, f"{MANIFEST_NAME} is not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise _archive_error(path, f"its manifest does not say format {FORMAT_NAME!r}")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise _archive_error(
                path, f"it has format version {version!r}; this WhisperEngine reads version {FORMAT_VERSION}"
            )
        members: dict[str, Any] = manifest.get("members") or {}
        seen: set[str] = set()
        while (member := tar.next()) is not None:
            if not member.isfile():
                raise _archive_error(path, f"unexpected member {member.name!r} (not a plain file)")
            expected = members.get(member.name)
            if expected is None or member.name in seen:
                raise _archive_error(path, f"unexpected member {member.name!r}")
            digest = _sha256_member(tar, member)
            if digest != expected["sha256"]:
                raise _archive_error(path, f"checksum mismatch in {member.name} (the file is corrupt)")
            seen.add(member.name)
        missing = sorted(set(members) - seen)
        if missing:
            raise _archive_error(path, f"members missing: {', '.join(missing)}")
    archive = VerifiedArchive(path, manifest, digest=hashlib.sha256(raw).hexdigest())
    _check_schema(archive)
    return archive


def _sha256_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    handle = tar.extractfile(member)
    if handle is None:
        raise ArchiveError(f"{member.name} cannot be read")
    digest = hashlib.sha256()
    with handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise ArchiveError(f"{member.name} cannot be read")
    with handle:
        return handle.read()


def _check_schema(archive: VerifiedArchive) -> None:
    manifest = archive.manifest
    revision = manifest.get("schema_revision")
    if revision is not None and revision not in _known_revisions():
        raise _archive_error(
            archive.path,
            f"it was made from schema revision {revision}, which this WhisperEngine does not know "
            f"(newest here: {head_revision()}); upgrade WhisperEngine first",
        )
    for name, info in (manifest.get("tables") or {}).items():
        table = metadata.tables.get(name)
        if table is None:
            raise _archive_error(archive.path, f"it holds table {name!r}, which this schema does not have")
        columns = tuple(ColumnSpec(c["name"], c["kind"]) for c in info["columns"])
        unknown = [c.name for c in columns if c.name not in table.c]
        if unknown:
            raise _archive_error(archive.path, f"table {name} has columns this schema lacks: {unknown}")
        archive.tables.append(TableSpec(name, columns, int(info["rows"])))
    order = {t.name: i for i, t in enumerate(schema_tables())}
    archive.tables.sort(key=lambda spec: order[spec.name])
    archive.scopes = [ScopeSpec(s, int(info["items"])) for s, info in (manifest.get("scopes") or {}).items()]


class _ArchiveSource:
    """Reads a verified archive's members line by line."""

    def __init__(self, archive: VerifiedArchive) -> None:
        self._archive = archive
        self._stack = contextlib.ExitStack()
        self._tar: tarfile.TarFile | None = None
        self._seen: dict[str, tarfile.TarInfo] = {}

    def __enter__(self) -> _ArchiveSource:
        self._tar = self._stack.enter_context(_open_tar(self._archive.path))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _member(self, name: str) -> tarfile.TarInfo:
        """The member called ``name``, reading headers forward only: the archive holds the data in
        the order restore asks for it, so the compressed stream is never rewound."""
        assert self._tar is not None
        while name not in self._seen:
            member = self._tar.next()
            if member is None:
                raise ArchiveError(f"{self._archive.path} has no member {name}")
            self._seen[member.name] = member
        return self._seen[name]

    def _lines(self, member: str, skip: int) -> Iterator[dict[str, Any]]:
        assert self._tar is not None
        handle = self._tar.extractfile(self._member(member))
        if handle is None:
            raise ArchiveError(f"{member} cannot be read")
        with handle, io.TextIOWrapper(handle, encoding="utf-8", newline="\n") as text:
            for number, line in enumerate(text):
                if number >= skip:
                    yield json.loads(line)

    async def table_specs(self) -> list[TableSpec]:
        return list(self._archive.tables)

    async def rows(
        self, spec: TableSpec, position: Mapping[str, Any], batch_size: int
    ) -> AsyncIterator[tuple[list[dict[str, Any]], list[Any] | None]]:
        for batch in _batched(
            self._lines(_table_member(spec.name), int(position.get("rows", 0))), batch_size
        ):
            yield [_decode_row(spec, row) for row in batch], None

    async def scope_specs(self) -> list[ScopeSpec]:
        return list(self._archive.scopes)

    async def items(self, scope: str, skip: int, batch_size: int) -> AsyncIterator[list[VectorItem]]:
        for batch in _batched(self._lines(_scope_member(scope), skip), batch_size):
            yield [_decode_item(item) for item in batch]


def _batched(lines: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- the copy loop -------------------------------------------------------------------------------


class _BatchBudget:
    def __init__(self, limit: int | None) -> None:
        self._left = limit

    def spend(self) -> None:
        if self._left is None:
            return
        self._left -= 1
        if self._left <= 0:
            raise Interrupted("stopped early as asked; run the same command again to resume")


async def _copy(
    *,
    source: _Source,
    sink: _Sink,
    checkpoint: Checkpoint,
    tables: Sequence[TableSpec],
    scopes: Sequence[ScopeSpec],
    options: CopyOptions,
    progress: Progress,
) -> tuple[dict[str, int], dict[str, int]]:
    budget = _BatchBudget(options.stop_after_batches)
    for spec in tables:
        state = checkpoint.table(spec.name)
        label = f"table {spec.name}"
        progress.begin(label, max(spec.rows, state["rows"]))
        progress.advance(label, state["rows"])
        if not state["done"]:
            async for rows, after in source.rows(spec, state, options.batch_size):
                await sink.write_rows(spec, rows)
                sink.durable()
                state["rows"] += len(rows)
                state["after"] = after
                checkpoint.save()
                progress.advance(label, len(rows))
                budget.spend()
            state["done"] = True
            checkpoint.save()
        progress.end(label)
    for scope_spec in scopes:
        scope_state = checkpoint.scope(scope_spec.scope)
        label = f"vectors {scope_spec.scope}"
        progress.begin(label, max(scope_spec.items, scope_state["items"]))
        progress.advance(label, scope_state["items"])
        if not scope_state["done"]:
            async for items in source.items(
                scope_spec.scope, scope_state["items"], options.vector_batch_size
            ):
                await sink.write_items(scope_spec.scope, items)
                sink.durable()
                scope_state["items"] += len(items)
                checkpoint.save()
                progress.advance(label, len(items))
                budget.spend()
            scope_state["done"] = True
            checkpoint.save()
        progress.end(label)
    return (
        {name: int(state["rows"]) for name, state in checkpoint.tables.items()},
        {name: int(state["items"]) for name, state in checkpoint.scopes.items()},
    )


def _describe(deployment: Deployment) -> str:
    if deployment.description:
        return deployment.description
    vectors = "no vectors" if deployment.vectors is None else repr(deployment.vectors)
    return f"{redact_url(deployment.store.engine.url)} + {vectors}"


# --- backup --------------------------------------------------------------------------------------


def _absolute(path: Path) -> Path:
    return path.expanduser().absolute()


def staging_dir(archive: Path) -> Path:
    """Where an unfinished backup of ``archive`` keeps its data and checkpoint."""
    return archive.with_name(archive.name + ".partial")


async def backup(
    source: Deployment,
    archive: Path,
    *,
    settings_snapshot: Mapping[str, Any] | None = None,
    secrets_excluded: Sequence[str] = (),
    packaged_persona_dir: Path | None = None,
    options: CopyOptions | None = None,
    progress: Progress | None = None,
) -> CopyReport:
    """Write the deployment's tables, vectors, persona files and non-secret settings to ``archive``."""
    options = options or CopyOptions()
    progress = progress or NullProgress()
    archive = _absolute(archive)
    if archive.exists() and not options.force:
        raise StorageError(f"{archive} already exists; choose another name or pass --force to replace it")
    if archive.is_dir():
        raise StorageError(f"{archive} is a directory; give the path of the archive file to write")
    staging = staging_dir(archive)
    revision = await _database_revision(source.store)
    identity = {"operation": "backup", "format_version": FORMAT_VERSION, "source": _describe(source)}
    checkpoint = Checkpoint(staging / CHECKPOINT_NAME, identity)
    resumed = checkpoint.load()
    if not resumed and staging.exists():
        if not (staging / CHECKPOINT_NAME).is_file():
            raise StorageError(f"{staging} exists but is not an unfinished backup; move it away first")
        progress.note(f"starting over: {staging} holds an unfinished backup of another deployment")
        shutil.rmtree(staging)
    if resumed:
        progress.note(f"resuming the unfinished backup in {staging}")
    staging.mkdir(parents=True, exist_ok=True)
    live = _LiveSource(source, leave_out_secrets=True)
    tables = await live.table_specs()
    scopes = await live.scope_specs()
    notes = [
        f"table {name} is not part of the schema and was not backed up"
        for name in await _extra_tables(source.store)
    ]
    sink = _ArchiveSink(staging, checkpoint)
    try:
        for spec in tables:
            sink.touch(_table_member(spec.name))
        for scope_spec in scopes:
            sink.touch(_scope_member(scope_spec.scope))
        table_counts, scope_counts = await _copy(
            source=live,
            sink=sink,
            checkpoint=checkpoint,
            tables=tables,
            scopes=scopes,
            options=options,
            progress=progress,
        )
    finally:
        sink.close()
    personas = _stage_personas(staging, packaged_persona_dir, source.persona_dir)
    secrets = sorted(secrets_excluded)
    settings_doc = {
        "note": "for reference only: restore does not apply settings; secrets are never written",
        "secrets_excluded": secrets,
        "settings": dict(settings_snapshot or {}),
    }
    (staging / SETTINGS_MEMBER).write_text(
        json.dumps(settings_doc, ensure_ascii=False, indent=2, sort_keys=True, default=str), encoding="utf-8"
    )
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "schema_revision": revision,
        "created_at": datetime.now(UTC).isoformat(),
        "source": {"description": _describe(source), "database": source.store.kind},
        "tables": {
            spec.name: {
                "member": _table_member(spec.name),
                "rows": table_counts.get(spec.name, 0),
                "columns": [{"name": c.name, "kind": c.kind} for c in spec.columns],
            }
            for spec in tables
        },
        "scopes": {
            s.scope: {"member": _scope_member(s.scope), "items": scope_counts.get(s.scope, 0)} for s in scopes
        },
        "personas": personas,
        "settings": {"member": SETTINGS_MEMBER, "secrets_excluded": secrets, "secrets_written": False},
        "rows_excluded": {
            "settings": f"scope {SECRETS_SCOPE!r}: stored secrets (encrypted) are not backed up"
        },
        "members": {},
    }
    members = sorted(
        p.relative_to(staging).as_posix()
        for p in staging.rglob("*")
        if p.is_file() and p.name != CHECKPOINT_NAME
    )
    manifest["members"] = {
        name: {"sha256": _sha256_file(staging / name), "bytes": (staging / name).stat().st_size}
        for name in members
    }
    _pack(
        archive,
        staging,
        manifest,
        [*[_table_member(s.name) for s in tables], *[_scope_member(s.scope) for s in scopes]],
    )
    shutil.rmtree(staging)
    logger.info("backup written to %s", archive)
    return CopyReport(table_counts, scope_counts, resumed, tuple(notes))


def _stage_personas(staging: Path, packaged: Path | None, user: Path | None) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for kind, directory in (("packaged", packaged), ("user", user)):
        names: list[str] = []
        if directory is not None and directory.is_dir():
            target = staging / "personas" / kind
            target.mkdir(parents=True, exist_ok=True)
            for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
                if path.is_file():
                    shutil.copyfile(path, target / path.name)
                    names.append(path.name)
        found[kind] = names
    return found


def _pack(archive: Path, staging: Path, manifest: Mapping[str, Any], data_first: Sequence[str]) -> None:
    """The tar.gz: manifest first, then the data in the order restore reads it, then the rest."""
    members = list(dict.fromkeys([*data_first, *manifest["members"]]))
    raw = json.dumps(manifest, ensure_ascii=False, indent=2).encode("utf-8")
    fd, temp = tempfile.mkstemp(prefix=f".{archive.name}.", dir=archive.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
                info = tarfile.TarInfo(MANIFEST_NAME)
                info.size = len(raw)
                info.mtime = int(datetime.now(UTC).timestamp())
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(raw))
                for name in members:
                    member = tar.gettarinfo(staging / name, arcname=name)
                    member.uid = member.gid = 0
                    member.uname = member.gname = ""
                    with (staging / name).open("rb") as data:
                        tar.addfile(member, data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, archive)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# --- restore -------------------------------------------------------------------------------------


async def _prepare_target(
    sink: _LiveSink, checkpoint: Checkpoint, options: CopyOptions, progress: Progress, what: str
) -> bool:
    """Resume, or check the target is empty (clearing it with ``force``); True when resuming."""
    if checkpoint.load():
        progress.note(f"resuming the unfinished {what} (checkpoint {checkpoint.path})")
        return True
    if not await sink.is_empty():
        if not options.force:
            raise TargetNotEmpty(
                f"the target of the {what} already holds data; pass --force to replace it (its tables "
                "and vector collections are emptied first)"
            )
        progress.note("the target holds data: emptying it first (--force)")
        await sink.clear()
    checkpoint.extra["cleared"] = True
    checkpoint.save()
    return False


async def restore(
    archive: Path | VerifiedArchive,
    target: Deployment,
    *,
    checkpoint_path: Path,
    options: CopyOptions | None = None,
    progress: Progress | None = None,
) -> CopyReport:
    """Verify ``archive`` (format, version, checksums), then write it into the started ``target``."""
    options = options or CopyOptions()
    progress = progress or NullProgress()
    verified = archive if isinstance(archive, VerifiedArchive) else verify_archive(_absolute(archive))
    archive = verified.path
    progress.note(f"verified {archive.name}: format {FORMAT_VERSION}, every checksum matches")
    identity = {"operation": "restore", "archive": verified.digest, "target": _describe(target)}
    checkpoint = Checkpoint(checkpoint_path, identity)
    sink = _LiveSink(target)
    resumed = await _prepare_target(sink, checkpoint, options, progress, "restore")
    with _ArchiveSource(verified) as source:
        tables, scopes = await _copy(
            source=source,
            sink=sink,
            checkpoint=checkpoint,
            tables=verified.tables,
            scopes=verified.scopes,
            options=options,
            progress=progress,
        )
    _check_counts(verified, tables, scopes)
    notes = await sink.rebuild_derived()
    notes += _restore_personas(archive, verified, target.persona_dir, options.force)
    checkpoint.remove()
    return CopyReport(tables, scopes, resumed, tuple(notes))


def _check_counts(archive: VerifiedArchive, tables: Mapping[str, int], scopes: Mapping[str, int]) -> None:
    for spec in archive.tables:
        if tables.get(spec.name, 0) != spec.rows:
            raise ArchiveError(
                f"table {spec.name}: restored {tables.get(spec.name, 0)} rows, the manifest says {spec.rows}"
            )
    for scope in archive.scopes:
        if scopes.get(scope.scope, 0) != scope.items:
            done = scopes.get(scope.scope, 0)
            raise ArchiveError(
                f"scope {scope.scope}: restored {done} vectors, the manifest says {scope.items}"
            )


def _restore_personas(
    archive: Path, verified: VerifiedArchive, persona_dir: Path | None, force: bool
) -> list[str]:
    names = (verified.manifest.get("personas") or {}).get("user") or []
    if not names:
        return []
    if persona_dir is None:
        return [f"{len(names)} persona file(s) in the backup were not restored: no persona directory"]
    notes = []
    persona_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    with _open_tar(archive) as tar:
        for name in names:
            safe = Path(name).name
            data = _read_member(tar, tar.getmember(f"personas/user/{name}"))
            destination = persona_dir / safe
            if destination.exists() and destination.read_bytes() != data and not force:
                notes.append(
                    f"persona file {destination} differs from the backup's and was kept (--force replaces it)"
                )
                continue
            _write_atomically(destination, data)
            written += 1
    notes.append(f"{written} persona file(s) restored to {persona_dir}")
    return notes


# --- migrate -------------------------------------------------------------------------------------


async def migrate(
    source: Deployment,
    target: Deployment,
    *,
    checkpoint_path: Path,
    options: CopyOptions | None = None,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy the source deployment's tables (and vectors, when the target has a vector store)."""
    options = options or CopyOptions()
    progress = progress or NullProgress()
    if _describe(source) == _describe(target):
        raise StorageError("the source and the target of the migration are the same")
    source_revision = await _database_revision(source.store)
    target_revision = await _database_revision(target.store)
    if source_revision != target_revision:
        raise StorageError(f"schema revisions differ: source {source_revision}, target {target_revision}")
    identity = {"operation": "migrate", "source": _describe(source), "target": _describe(target)}
    checkpoint = Checkpoint(checkpoint_path, identity)
    sink = _LiveSink(target)
    resumed = await _prepare_target(sink, checkpoint, options, progress, "migration")
    live = _LiveSource(
        source if target.vectors is not None else Deployment(source.store, None, None, source.description)
    )
    tables = await live.table_specs()
    scopes = await live.scope_specs()
    notes = [
        f"table {name} is not part of the schema and was not copied"
        for name in await _extra_tables(source.store)
    ]
    table_counts, scope_counts = await _copy(
        source=live,
        sink=sink,
        checkpoint=checkpoint,
        tables=tables,
        scopes=scopes,
        options=options,
        progress=progress,
    )
    notes += await sink.rebuild_derived()
    checkpoint.remove()
    return CopyReport(table_counts, scope_counts, resumed, tuple(notes))


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ArchiveError",
    "Checkpoint",
    "CopyOptions",
    "CopyReport",
    "Deployment",
    "Interrupted",
    "NullProgress",
    "Progress",
    "TargetNotEmpty",
    "VectorStoreAccess",
    "VerifiedArchive",
    "backup",
    "head_revision",
    "migrate",
    "restore",
    "schema_tables",
    "staging_dir",
    "verify_archive",
]
