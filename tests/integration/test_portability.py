"""Backup, restore and migrate with the real backends: SQLite, PostgreSQL, embedded Chroma and a
Chroma server, and the real ``whisperengine`` command in a subprocess."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import tarfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from engine.ports import MemoryRecord, StoredMessage, VectorItem
from storage.portability import (
    FORMAT_VERSION,
    ArchiveError,
    CopyOptions,
    Deployment,
    Interrupted,
    TargetNotEmpty,
    backup,
    migrate,
    restore,
    schema_tables,
    staging_dir,
)
from storage.sql import SQLConversationStore
from storage.vector.chroma import ChromaVectorMemory
from storage.vector.outbox import encode_items
from tests.conftest import fresh_postgres_database
from tests.fakes.bot_process import cli_environment, run_cli
from tests.fakes.chroma_server import ChromaServer

T0 = datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)
DIM = 16
USERS = {
    "discord:1": ("discord", "1", "Zoë 🌸"),
    "telegram:2": ("telegram", "2", "Дмитрий"),
    "web:3": ("web", "3", "李雷"),
}
MEMORIES = {
    "discord:1": ["Zoë loves café au lait ☕ every morning", "Zoë's cat is called Miso"],
    "telegram:2": ["Дмитрий plays the balalaika", "He is learning Japanese: 日本語"],
    "web:3": ["李雷 hikes in the mountains on weekends", "Owns a red bicycle"],
}


# --- making data with the store and vector APIs ------------------------------------------------------


def vector(seed: int) -> list[float]:
    return np.random.default_rng(seed).standard_normal(DIM).tolist()


async def fill(store: SQLConversationStore, vectors: ChromaVectorMemory | None = None) -> None:
    """A few users with messages, memories (with care history), settings and vectors."""
    n = 0
    for user_key, (platform, user_id, name) in USERS.items():
        for minute in range(3):
            await store.touch_user(
                user_key,
                platform=platform,
                user_id=user_id,
                display_name=name,
                seen_at=T0 + timedelta(minutes=minute),
            )
        await store.set_preferred_name(user_key, name.upper())
        for i in range(4):
            n += 1
            await store.add_message(
                StoredMessage(
                    id=f"m{n}",
                    conversation_key=f"{platform}:chan",
                    user_key=user_key,
                    role="user" if i % 2 == 0 else "assistant",
                    content=f"message {i} from {name} — «ünïcödé» 🎉",
                    platform=platform,
                    channel_id="chan",
                    created_at=T0 + timedelta(seconds=n, microseconds=n),
                    user_name=name,
                    guild_id="g1" if platform == "discord" else None,
                    platform_message_id=f"p{n}",
                )
            )
        records = [
            MemoryRecord(
                id=f"{user_key}-mem{i}",
                user_key=user_key,
                text=text,
                created_at=T0 + timedelta(hours=i),
                kind="fact",
                importance=0.1 + i / 3,
                platform=platform,
                channel_id="chan",
                source_message_ids=(f"m{n}", f"m{n - 1}"),
            )
            for i, text in enumerate(MEMORIES[user_key])
        ]
        await store.add_memories(records)
        await store.reinforce_memory(
            user_key,
            records[0].id,
            source_message_id="m-again",
            at=T0 + timedelta(days=1),
            importance_delta=0.2,
        )
        await store.mark_memories_used(user_key, [records[1].id], at=T0 + timedelta(days=2))
        await store.set_setting(user_key, "persona", {"name": "sage", "tags": ["ß", "ø"], "depth": 2.5})
        if vectors is not None:
            await vectors.add(
                user_key,
                [
                    VectorItem(
                        id=r.id,
                        text=r.text,
                        embedding=vector(hash(r.id) % 10_000),
                        metadata={
                            "kind": "fact",
                            "importance": r.importance,
                            "created": 1_700_000_000,
                            "ok": True,
                        },
                    )
                    for r in records
                ],
            )
    await store.supersede_memory("web:3", "web:3-mem1", superseded_by="web:3-mem0", at=T0 + timedelta(days=3))
    await store.set_setting("guild:g1", "thread_mode", "auto")
    # a vector write waiting in the outbox (vector store down): copied like any other table
    pending = [
        VectorItem(id="late", text="Zoë's late note ✍", embedding=vector(7), metadata={"kind": "fact"})
    ]
    await store.enqueue_vector_op("discord:1", "add", encode_items(pending))


async def dump_tables(store: SQLConversationStore) -> dict[str, list[dict[str, Any]]]:
    dumped = {}
    async with store.engine.connect() as conn:
        for table in schema_tables():
            keys = list(table.primary_key.columns)
            rows = (await conn.execute(sa.select(table).order_by(*keys))).mappings().all()
            dumped[table.name] = [dict(row) for row in rows]
    return dumped


async def dump_vectors(
    vectors: ChromaVectorMemory,
) -> dict[str, list[tuple[str, str, dict[str, Any], list[float]]]]:
    dumped = {}
    for scope in await vectors.list_scopes():
        items = await vectors.get_items(scope, await vectors.scope_ids(scope))
        dumped[scope] = [(i.id, i.text, dict(i.metadata), list(i.embedding)) for i in items]
    return dumped


async def assert_same_vectors(copy: ChromaVectorMemory, original: ChromaVectorMemory) -> None:
    """Same scopes, ids, texts and metadata; the same embeddings to float32 precision (a cosine
    collection keeps vectors normalised and scales them back on read, which can move the last bit)."""
    copied, expected = await dump_vectors(copy), await dump_vectors(original)
    assert {s: [i[:3] for i in items] for s, items in copied.items()} == {
        s: [i[:3] for i in items] for s, items in expected.items()
    }
    for scope, items in expected.items():
        for (_, _, _, want), (_, _, _, got) in zip(items, copied[scope], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


async def assert_keyword_search_works(store: SQLConversationStore) -> None:
    hits = await store.keyword_search("discord:1", "café", 5)
    assert [m.id for m, _ in hits] == ["discord:1-mem0"]
    hits = await store.keyword_search("telegram:2", "balalaika", 5)
    assert [m.id for m, _ in hits] == ["telegram:2-mem0"]
    # superseded memories stay out of search after a copy too
    assert await store.keyword_search("web:3", "bicycle", 5) == []


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def started_store(stack: AsyncExitStack, url: str) -> SQLConversationStore:
    store = SQLConversationStore(url)
    await store.start()
    stack.push_async_callback(store.aclose)
    return store


async def started_chroma(stack: AsyncExitStack, memory: ChromaVectorMemory) -> ChromaVectorMemory:
    await memory.start()
    stack.push_async_callback(memory.aclose)
    return memory


# --- migrate -------------------------------------------------------------------------------------------


async def test_sqlite_to_postgres_to_sqlite_keeps_every_row_and_keyword_search(
    tmp_path: Path, stack: AsyncExitStack
) -> None:
    first = await started_store(stack, f"sqlite:///{tmp_path}/first.db")
    await fill(first)
    with fresh_postgres_database("we_portability") as pg_url:
        pg = await started_store(stack, pg_url)
        report = await migrate(
            Deployment(first),
            Deployment(pg),
            checkpoint_path=tmp_path / "to-pg.json",
            options=CopyOptions(batch_size=3),
        )
        assert report.tables["messages"] == 12
        assert not (tmp_path / "to-pg.json").exists()
        original = await dump_tables(first)
        assert await dump_tables(pg) == original
        await assert_keyword_search_works(pg)

        last = await started_store(stack, f"sqlite:///{tmp_path}/last.db")
        await migrate(
            Deployment(pg),
            Deployment(last),
            checkpoint_path=tmp_path / "to-sqlite.json",
            options=CopyOptions(batch_size=2),
        )
        assert await dump_tables(last) == original
        await assert_keyword_search_works(last)

        # new rows get fresh numbers after the copied ones (PostgreSQL sequences were moved on)
        await pg.add_memories(
            [MemoryRecord(id="new", user_key="discord:1", text="Zoë adopted a parrot", created_at=T0)]
        )
        assert [m.id for m, _ in await pg.keyword_search("discord:1", "parrot", 3)] == ["new"]
        assert await pg.enqueue_vector_op("web:3", "drop_scope", {}) == 2


async def test_embedded_chroma_to_chroma_server_keeps_ids_texts_metadata_and_embeddings(
    tmp_path: Path, stack: AsyncExitStack
) -> None:
    store = await started_store(stack, f"sqlite:///{tmp_path}/source.db")
    embedded = await started_chroma(stack, ChromaVectorMemory.embedded(tmp_path / "chroma"))
    await fill(store, embedded)
    server = await stack.enter_async_context(ChromaServer())
    remote = await started_chroma(stack, ChromaVectorMemory.http(server.url))
    target = await started_store(stack, f"sqlite:///{tmp_path}/target.db")

    report = await migrate(
        Deployment(store, embedded),
        Deployment(target, remote),
        checkpoint_path=tmp_path / "migrate.json",
        options=CopyOptions(vector_batch_size=1),
    )

    assert report.scopes == {"discord:1": 2, "telegram:2": 2, "web:3": 2}
    source_vectors = await dump_vectors(embedded)
    assert len(source_vectors) == 3
    await assert_same_vectors(remote, embedded)
    assert await dump_tables(target) == await dump_tables(store)
    # the copied vectors are searchable with the same similarity
    query = source_vectors["telegram:2"][1][3]
    hits = await remote.query("telegram:2", query, 1)
    assert hits[0].id == "telegram:2-mem1" and hits[0].similarity == pytest.approx(1.0, abs=1e-5)


async def test_migrate_refuses_a_target_with_data_unless_forced(
    tmp_path: Path, stack: AsyncExitStack
) -> None:
    source = await started_store(stack, f"sqlite:///{tmp_path}/source.db")
    await fill(source)
    target = await started_store(stack, f"sqlite:///{tmp_path}/target.db")
    await target.set_setting("guild:other", "key", "kept unless forced")
    with pytest.raises(TargetNotEmpty, match="--force"):
        await migrate(Deployment(source), Deployment(target), checkpoint_path=tmp_path / "c.json")
    assert await target.get_setting("guild:other", "key") == "kept unless forced"
    assert await target.get_user("discord:1") is None

    await migrate(
        Deployment(source),
        Deployment(target),
        checkpoint_path=tmp_path / "c.json",
        options=CopyOptions(force=True),
    )
    assert await dump_tables(target) == await dump_tables(source)


async def test_an_interrupted_migrate_resumes_and_leaves_no_duplicates(
    tmp_path: Path, stack: AsyncExitStack
) -> None:
    source = await started_store(stack, f"sqlite:///{tmp_path}/source.db")
    embedded = await started_chroma(stack, ChromaVectorMemory.embedded(tmp_path / "chroma"))
    await fill(source, embedded)
    checkpoint = tmp_path / "migrate.json"
    with fresh_postgres_database("we_portability") as pg_url:
        target = await started_store(stack, pg_url)
        server = await stack.enter_async_context(ChromaServer())
        remote = await started_chroma(stack, ChromaVectorMemory.http(server.url))
        options = CopyOptions(batch_size=2, vector_batch_size=1)
        source_deployment, target_deployment = Deployment(source, embedded), Deployment(target, remote)

        with pytest.raises(Interrupted):
            await migrate(
                source_deployment,
                target_deployment,
                checkpoint_path=checkpoint,
                options=CopyOptions(batch_size=2, vector_batch_size=1, stop_after_batches=4),
            )
        saved = json.loads(checkpoint.read_text())
        assert sum(t["rows"] for t in saved["tables"].values()) == 8  # four batches of two
        partial = await dump_tables(target)
        assert (
            0
            < sum(len(rows) for rows in partial.values())
            < sum(len(r) for r in (await dump_tables(source)).values())
        )

        # a crash between a committed batch and its checkpoint: the re-run repeats that batch
        for state in saved["tables"].values():
            if not state["done"]:
                state["rows"], state["after"] = 0, None
        checkpoint.write_text(json.dumps(saved))
        with pytest.raises(Interrupted):  # stops once more, inside the vectors this time
            await migrate(
                source_deployment,
                target_deployment,
                checkpoint_path=checkpoint,
                options=CopyOptions(batch_size=2, vector_batch_size=1, stop_after_batches=12),
            )

        report = await migrate(
            source_deployment, target_deployment, checkpoint_path=checkpoint, options=options
        )
        assert report.resumed
        assert not checkpoint.exists()
        assert await dump_tables(target) == await dump_tables(source)
        await assert_same_vectors(remote, embedded)
        await assert_keyword_search_works(target)


# --- backup and restore -----------------------------------------------------------------------------


async def make_source(tmp_path: Path, stack: AsyncExitStack) -> Deployment:
    store = await started_store(stack, f"sqlite:///{tmp_path}/source/we.db")
    vectors = await started_chroma(stack, ChromaVectorMemory.embedded(tmp_path / "source" / "chroma"))
    personas = tmp_path / "source" / "personas"
    personas.mkdir(parents=True)
    (personas / "nova.yaml").write_text("name: nova\ndescription: Növa, a star ✨\n", encoding="utf-8")
    await fill(store, vectors)
    return Deployment(store, vectors, personas)


async def make_target(tmp_path: Path, stack: AsyncExitStack, name: str = "target") -> Deployment:
    store = await started_store(stack, f"sqlite:///{tmp_path}/{name}/we.db")
    vectors = await started_chroma(stack, ChromaVectorMemory.embedded(tmp_path / name / "chroma"))
    return Deployment(store, vectors, tmp_path / name / "personas")


async def test_backup_then_restore_gives_back_every_row_vector_and_persona(
    tmp_path: Path, stack: AsyncExitStack
) -> None:
    source = await make_source(tmp_path, stack)
    archive = tmp_path / "backup.tar.gz"
    report = await backup(
        source,
        archive,
        settings_snapshot={"BOT_NAME": "Ünï"},
        secrets_excluded=["OPENAI_API_KEY"],
        options=CopyOptions(batch_size=2),
    )
    assert report.tables["users"] == 3 and report.scopes["web:3"] == 2
    assert archive.is_file() and not staging_dir(archive).exists()
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert names[0] == "manifest.json"
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["schema_revision"] is not None
    assert manifest["tables"]["memories"]["rows"] == 6
    assert manifest["settings"]["secrets_excluded"] == ["OPENAI_API_KEY"]
    assert set(manifest["members"]) == set(names[1:])
    # the archive holds the embeddings exactly as the source returned them
    source_vectors = await dump_vectors(source.vectors)  # type: ignore[arg-type]
    with tarfile.open(archive) as tar:
        member = manifest["scopes"]["telegram:2"]["member"]
        lines = tar.extractfile(member).read().decode().splitlines()  # type: ignore[union-attr]
    archived = [json.loads(line) for line in lines]
    assert [(a["id"], a["text"], a["metadata"]) for a in archived] == [
        i[:3] for i in source_vectors["telegram:2"]
    ]
    for item, (_, _, _, embedding) in zip(archived, source_vectors["telegram:2"], strict=True):
        assert np.frombuffer(base64.b64decode(item["embedding_f32"]), dtype="<f4").tolist() == embedding

    target = await make_target(tmp_path, stack)
    restored = await restore(
        archive, target, checkpoint_path=tmp_path / "restore.json", options=CopyOptions(batch_size=4)
    )
    assert restored.tables == report.tables
    assert await dump_tables(target.store) == await dump_tables(source.store)
    await assert_same_vectors(target.vectors, source.vectors)  # type: ignore[arg-type]
    await assert_keyword_search_works(target.store)
    assert (tmp_path / "target" / "personas" / "nova.yaml").read_text(encoding="utf-8").endswith("star ✨\n")
    assert not (tmp_path / "restore.json").exists()

    # restoring again over the data is refused, and nothing changes
    with pytest.raises(TargetNotEmpty):
        await restore(archive, target, checkpoint_path=tmp_path / "restore.json")


async def test_interrupted_backup_and_restore_resume(tmp_path: Path, stack: AsyncExitStack) -> None:
    source = await make_source(tmp_path, stack)
    archive = tmp_path / "backup.tar.gz"
    with pytest.raises(Interrupted):
        await backup(source, archive, options=CopyOptions(batch_size=2, stop_after_batches=3))
    assert not archive.exists() and (staging_dir(archive) / "checkpoint.json").is_file()
    report = await backup(source, archive, options=CopyOptions(batch_size=2))
    assert report.resumed and report.tables["messages"] == 12
    assert not staging_dir(archive).exists()

    target = await make_target(tmp_path, stack)
    checkpoint = tmp_path / "restore.json"
    with pytest.raises(Interrupted):
        await restore(
            archive,
            target,
            checkpoint_path=checkpoint,
            options=CopyOptions(batch_size=1, stop_after_batches=5),
        )
    resumed = await restore(archive, target, checkpoint_path=checkpoint, options=CopyOptions(batch_size=1))
    assert resumed.resumed
    assert await dump_tables(target.store) == await dump_tables(source.store)
    await assert_same_vectors(target.vectors, source.vectors)  # type: ignore[arg-type]
    await assert_keyword_search_works(target.store)


def rewrite_archive(archive: Path, change: Any) -> None:
    """Unpack the gzip, let ``change`` edit the raw tar bytes, pack it again."""
    raw = bytearray(gzip.decompress(archive.read_bytes()))
    change(raw)
    archive.write_bytes(gzip.compress(bytes(raw)))


async def assert_untouched(target: Deployment) -> None:
    assert all(rows == [] for rows in (await dump_tables(target.store)).values())
    assert target.vectors is not None and await target.vectors.list_scopes() == []  # type: ignore[attr-defined]
    assert target.persona_dir is not None and not target.persona_dir.exists()


async def test_a_corrupted_archive_is_rejected_before_anything_is_written(
    tmp_path: Path, stack: AsyncExitStack
) -> None:
    source = await make_source(tmp_path, stack)
    archive = tmp_path / "backup.tar.gz"
    await backup(source, archive)
    target = await make_target(tmp_path, stack)

    def flip_inside_a_member(raw: bytearray) -> None:
        at = raw.index(b"balalaika")
        raw[at] ^= 0x01

    rewrite_archive(archive, flip_inside_a_member)
    with pytest.raises(ArchiveError, match=r"checksum mismatch in sql/memories\.jsonl"):
        await restore(archive, target, checkpoint_path=tmp_path / "restore.json")
    await assert_untouched(target)

    # a flipped byte in the compressed stream
    await backup(source, archive, options=CopyOptions(force=True))
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="not a usable WhisperEngine backup"):
        await restore(archive, target, checkpoint_path=tmp_path / "restore.json")
    await assert_untouched(target)


async def test_a_foreign_file_or_another_format_version_is_rejected(
    tmp_path: Path, stack: AsyncExitStack
) -> None:
    source = await make_source(tmp_path, stack)
    archive = tmp_path / "backup.tar.gz"
    await backup(source, archive)
    target = await make_target(tmp_path, stack)

    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    manifest = json.loads(members[0][1])
    manifest["format_version"] = FORMAT_VERSION + 98
    future = tmp_path / "future.tar.gz"
    with tarfile.open(future, "w:gz") as tar:
        for member, data in [(members[0][0], json.dumps(manifest).encode()), *members[1:]]:
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(ArchiveError, match=f"format version {FORMAT_VERSION + 98}"):
        await restore(future, target, checkpoint_path=tmp_path / "restore.json")

    foreign = tmp_path / "notes.tar.gz"
    with tarfile.open(foreign, "w:gz") as tar:
        info = tarfile.TarInfo("notes.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    with pytest.raises(ArchiveError, match=r"first member is not manifest\.json"):
        await restore(foreign, target, checkpoint_path=tmp_path / "restore.json")

    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ArchiveError, match="not a usable WhisperEngine backup"):
        await restore(garbage, target, checkpoint_path=tmp_path / "restore.json")
    await assert_untouched(target)


# --- the command line -------------------------------------------------------------------------------

SECRET_KEY = "sk-portability-Qm7Yt2Vb9Wx4"
DISCORD_SECRET = "discord-token-Lp3Nc8Hd5Rk1"


@pytest.mark.slow
async def test_the_cli_backs_up_without_secrets_and_restores(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with AsyncExitStack() as stack:
        store = await started_store(stack, f"sqlite:///{data_dir}/whisperengine.db")
        vectors = await started_chroma(stack, ChromaVectorMemory.embedded(data_dir / "chroma"))
        await fill(store, vectors)
        from cryptography.fernet import Fernet

        encryption_key = Fernet.generate_key().decode()
        from storage.secrets import SecretStore

        stored_secret = "xoxb-stored-Gh5Jk8Lm2"
        await SecretStore(store, encryption_key).set("SLACK_BOT_TOKEN", stored_secret)
        before = await dump_tables(store)
    env = cli_environment(
        data_dir,
        OPENAI_API_KEY=SECRET_KEY,
        DISCORD_TOKEN=DISCORD_SECRET,
        ENCRYPTION_KEY=encryption_key,
        DATABASE_URL=f"sqlite:///{data_dir}/whisperengine.db",
    )
    archive = tmp_path / "we-backup.tar.gz"
    result = run_cli(["backup", str(archive), "--batch-size", "2"], env)
    assert result.returncode == 0, result.stderr
    assert "done table messages: 12" in result.stderr
    assert "done vectors discord:1: 2" in result.stderr
    assert "messages" in result.stdout and "Traceback" not in result.stderr

    raw = gzip.decompress(archive.read_bytes())
    for secret in (SECRET_KEY, DISCORD_SECRET, encryption_key, stored_secret):
        assert secret.encode() not in raw
    assert b"fernet:v1:" not in raw
    with tarfile.open(archive) as tar:
        settings_doc = json.loads(tar.extractfile("settings.json").read())  # type: ignore[union-attr]
    assert {"OPENAI_API_KEY", "DISCORD_TOKEN", "ENCRYPTION_KEY"} <= set(settings_doc["secrets_excluded"])
    assert "OPENAI_API_KEY" not in settings_doc["settings"]

    restored_dir = tmp_path / "restored"
    restored_env = cli_environment(restored_dir)
    result = run_cli(["restore", str(archive)], restored_env)
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stderr and "done table memories: 6" in result.stderr
    async with AsyncExitStack() as stack:
        restored = await started_store(stack, f"sqlite:///{restored_dir}/whisperengine.db")
        after = await dump_tables(restored)
        await assert_keyword_search_works(restored)
        restored_vectors = await started_chroma(stack, ChromaVectorMemory.embedded(restored_dir / "chroma"))
        assert len(await restored_vectors.list_scopes()) == 3
    before["settings"] = [row for row in before["settings"] if row["scope"] != "secrets"]
    assert after == before


@pytest.mark.slow
async def test_the_cli_rejects_a_corrupt_archive_in_one_line_without_creating_anything(
    tmp_path: Path, stack: AsyncExitStack
) -> None:
    archive = tmp_path / "backup.tar.gz"
    await backup(await make_source(tmp_path, stack), archive)
    raw_archive = bytearray(archive.read_bytes())
    raw_archive[len(raw_archive) // 3] ^= 0x40
    archive.write_bytes(bytes(raw_archive))
    empty_dir = tmp_path / "empty"
    result = run_cli(["restore", str(archive)], cli_environment(empty_dir))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a usable WhisperEngine backup" in lines[0], result.stderr
    assert not (empty_dir / "whisperengine.db").exists()


@pytest.mark.slow
async def test_the_cli_migrates_sqlite_to_postgres_and_says_redis_has_nothing_to_copy(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with AsyncExitStack() as stack:
        store = await started_store(stack, f"sqlite:///{data_dir}/whisperengine.db")
        await fill(store)
        before = await dump_tables(store)
    with fresh_postgres_database("we_portability_cli") as pg_url:
        env = cli_environment(data_dir, REDIS_URL="redis://127.0.0.1:6379/0")
        result = run_cli(["migrate", "--to", pg_url, "--batch-size", "5"], env)
        assert result.returncode == 0, result.stderr
        assert "Redis holds only short-lived state" in result.stderr
        assert "done table messages: 12" in result.stderr
        assert "vectors: no --chroma-url or --chroma-path given" in result.stderr
        async with AsyncExitStack() as stack:
            pg = await started_store(stack, pg_url)
            assert await dump_tables(pg) == before
            await assert_keyword_search_works(pg)
        # a second run refuses: the target holds data now
        result = run_cli(["migrate", "--to", pg_url], env)
        assert result.returncode == 1 and "--force" in result.stderr


@pytest.mark.slow
async def test_the_cli_migrates_back_from_services_to_the_embedded_defaults(tmp_path: Path) -> None:
    with fresh_postgres_database("we_portability_back") as pg_url:
        async with AsyncExitStack() as stack:
            server = await stack.enter_async_context(ChromaServer())
            store = await started_store(stack, pg_url)
            remote = await started_chroma(stack, ChromaVectorMemory.http(server.url))
            await fill(store, remote)
            before = await dump_tables(store)
            home = tmp_path / "embedded"
            env = cli_environment(tmp_path / "data", DATABASE_URL=pg_url, CHROMA_URL=server.url)
            target = ["--to", f"sqlite:///{home}/whisperengine.db", "--chroma-path", str(home / "chroma")]
            result = run_cli(["migrate", *target], env)
            assert result.returncode == 0, result.stderr

            sqlite = await started_store(stack, f"sqlite:///{home}/whisperengine.db")
            embedded = await started_chroma(stack, ChromaVectorMemory.embedded(home / "chroma"))
            assert await dump_tables(sqlite) == before
            await assert_keyword_search_works(sqlite)
            await assert_same_vectors(embedded, remote)
