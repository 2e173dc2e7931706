"""The store on a real data directory: SQLite schema/migrations and verified, atomic blob writes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from envcache.oci import DigestError, digest_bytes
from envcache.store import DigestMismatch, ManifestBlobUnknown, SizeMismatch, Store, open_store
from envcache.store.sqlite.schema import BASE_DIGESTS, LAYER_BLOBS, MIGRATIONS, UPSTREAM_PUSHES


@pytest.fixture
async def store(tmp_path: Path):
    opened = await open_store(tmp_path / "data")
    yield opened
    await opened.close()


async def _chunks(data: bytes, size: int = 4096):
    for i in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[i:i + size]


async def test_schema_created_in_wal_mode_and_versioned(store: Store, tmp_path: Path) -> None:
    tables = set(store.metadata.db.table_names())
    assert {"repositories", "manifests", "tags", "blobs", "repository_blobs", "upload_sessions",
            "images", "environments", "builds", "schema_version",
            LAYER_BLOBS, BASE_DIGESTS, UPSTREAM_PUSHES} <= tables
    assert store.metadata.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.metadata.db["schema_version"].get(1)["version"] == len(MIGRATIONS)
    assert set(store.metadata.db["images"].columns_dict) == {
        "key", "variant", "spec_hash", "canonical", "repository", "tag", "manifest_digest", "size",
        "created", "last_used", "lock", "base_digest", "recipe_version", "compression", "pinned"}
    await store.close()
    # Reopening an up-to-date database runs no migration and keeps the data.
    again = await open_store(tmp_path / "data")
    assert again.schema_version == len(MIGRATIONS)
    await again.close()


async def test_migration_2_adds_component_tables_to_a_version_1_database(tmp_path: Path) -> None:
    # A version-1 database may already hold a component table its module created on first use;
    # the migration keeps that table and its rows and adds the missing ones.
    await (await open_store(tmp_path / "d")).close()
    with sqlite3.connect(tmp_path / "d" / "envcache.db") as conn:
        conn.execute(f"DROP TABLE {LAYER_BLOBS}")
        conn.execute(f"DROP TABLE {BASE_DIGESTS}")
        conn.execute("DROP TABLE image_history")            # migration 6's; a version-1 file has neither
        conn.execute("ALTER TABLE images DROP COLUMN compression")
        conn.execute(f"INSERT INTO {UPSTREAM_PUSHES} (id, state) VALUES ('p1', 'done')")
        conn.execute("DROP TABLE wheels")  # a version-1 database predates it (migration 5)
        conn.execute("UPDATE schema_version SET version = 1")
    store = await open_store(tmp_path / "d")
    assert store.schema_version == len(MIGRATIONS)
    assert {LAYER_BLOBS, BASE_DIGESTS, UPSTREAM_PUSHES} <= set(store.metadata.db.table_names())
    assert set(store.metadata.db[LAYER_BLOBS].pks) == {"diff_id", "compression"}
    assert [row["id"] for row in store.metadata.db[UPSTREAM_PUSHES].rows] == ["p1"]
    await store.close()


async def test_migration_3_adds_generations_and_the_link_index_to_a_version_2_database(tmp_path: Path) -> None:
    db = sqlite_utils.Database(tmp_path / "envcache.db")
    db["schema_version"].create({"id": int, "version": int}, pk="id")
    db["schema_version"].insert({"id": 1, "version": 2})
    for migration in MIGRATIONS[:2]:
        migration(db)
    db["blobs"].insert({"digest": "sha256:" + "a" * 64, "size": 1, "created": 1.0, "last_access": 1.0})
    db["manifests"].insert({"repository": "r", "digest": "sha256:" + "b" * 64, "media_type": "m", "size": 1,
                            "created": 1.0})
    db.close()
    store = await open_store(tmp_path)
    try:
        assert (await store.blobs.all())[0].gen == 0
        assert (await store.manifests.all())[0].last_used == 1.0  # never re-used: its first push
        indexes = {tuple(i.columns) for i in store.metadata.db["repository_blobs"].indexes}
        assert ("digest",) in indexes
    finally:
        await store.close()


async def test_migrations_6_and_7_add_image_history_compression_and_pins_to_a_version_5_database(
        tmp_path: Path) -> None:
    await (await open_store(tmp_path / "d")).close()
    with sqlite3.connect(tmp_path / "d" / "envcache.db") as conn:   # what main's schema version 5 had
        conn.execute("DROP TABLE image_history")
        conn.execute("ALTER TABLE images DROP COLUMN compression")
        conn.execute("ALTER TABLE images DROP COLUMN pinned")
        conn.execute("INSERT INTO images (key, variant, repository, tag, manifest_digest, size, created, lock) "
                     "VALUES ('k', 'cpu', 'envcache/env', 'k-cpu', 'sha256:" + "c" * 64 + "', 1, 1.0, '{}')")
        conn.execute("UPDATE schema_version SET version = 5")
    store = await open_store(tmp_path / "d")
    try:
        assert store.schema_version == len(MIGRATIONS)
        assert "image_history" in store.metadata.db.table_names()
        image = await store.images.get("k")
        assert image is not None and image.compression == ""   # filed before: checked once on use
        assert image.pinned is False
        assert await store.images.history("k") == []
    finally:
        await store.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    await (await open_store(tmp_path / "d")).close()
    with sqlite3.connect(tmp_path / "d" / "envcache.db") as conn:
        conn.execute("UPDATE schema_version SET version = 999")
    with pytest.raises(RuntimeError, match="newer than this envcache"):
        await open_store(tmp_path / "d")


async def test_write_verifies_then_publishes(store: Store) -> None:
    data = os.urandom(300_000)
    digest, size = await store.write_blob(_chunks(data), digest_bytes(data), len(data))
    assert (digest, size) == (digest_bytes(data), len(data))
    path = store.files.path(digest)
    assert path == store.data_dir / "blobs" / "sha256" / digest[7:9] / digest[7:]
    assert path.read_bytes() == data
    row = store.metadata.db["blobs"].get(digest)
    assert row["size"] == len(data) and row["last_access"] >= row["created"]


async def test_digest_or_size_mismatch_leaves_nothing(store: Store) -> None:
    data = b"the real bytes"
    with pytest.raises(DigestMismatch):
        await store.write_blob(_chunks(data), digest_bytes(b"other bytes"))
    with pytest.raises(SizeMismatch):
        await store.write_blob(data, digest_bytes(data), len(data) + 1)
    assert not await store.has_blob(digest_bytes(data))
    assert list((store.data_dir / "tmp").iterdir()) == []
    assert store.metadata.db["blobs"].count == 0


async def test_sha512_and_invalid_digests(store: Store) -> None:
    data = b"five-twelve"
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    assert await store.write_blob(data, digest) == (digest, len(data))
    assert store.files.path(digest).parts[-3] == "sha512"
    for bad in ("sha256:../../etc/passwd", "md5:abc", "sha256:" + "A" * 64, "sha256:" + "a" * 63):
        with pytest.raises(DigestError):
            store.files.path(bad)


async def test_concurrent_writes_of_one_blob_end_as_one_file(store: Store) -> None:
    data = os.urandom(1 << 20)
    results = await asyncio.gather(*(store.write_blob(_chunks(data, 65536), digest_bytes(data)) for _ in range(8)))
    assert set(results) == {(digest_bytes(data), len(data))}
    files = [p for p in (store.data_dir / "blobs").rglob("*") if p.is_file()]
    assert files == [store.files.path(digest_bytes(data))]
    assert list((store.data_dir / "tmp").iterdir()) == []


async def test_write_file_moves_a_finished_file_in(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "layer.tar"
    src.write_bytes(b"layer bytes")
    digest, size = await store.adopt_blob(src, digest_bytes(b"layer bytes"))
    assert store.files.path(digest).read_bytes() == b"layer bytes" and size == 11
    other = tmp_path / "bad.tar"
    other.write_bytes(b"not it")
    with pytest.raises(DigestMismatch):
        await store.adopt_blob(other, digest_bytes(b"something"))
    assert other.exists()  # a refused file is left where it was


async def test_manifests_tags_and_referrers(store: Store) -> None:
    config, layer = b'{"os":"linux"}', b"layer"
    for blob in (config, layer):
        await store.write_blob(blob)
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_bytes(config), "size": 14},
           "layers": [{"mediaType": "x", "digest": digest_bytes(layer), "size": 5}]}
    body = json.dumps(doc, indent=1).encode()
    digest = await store.put_manifest("envcache/env", "k1-cpu", body, doc["mediaType"])
    got = await store.get_manifest("envcache/env", "k1-cpu")
    assert got is not None and got.body == body and got.digest == digest == digest_bytes(body)
    await store.set_tag("envcache/env", "latest", digest)
    assert await store.manifests.tags("envcache/env") == ["k1-cpu", "latest"]
    # The manifest's blobs became visible in the repository it was put into.
    assert await store.blob_visible("envcache/env", digest_bytes(layer))
    missing = dict(doc, layers=[{"mediaType": "x", "digest": digest_bytes(b"nope"), "size": 4}])
    with pytest.raises(ManifestBlobUnknown):
        await store.put_manifest("envcache/env", "bad", json.dumps(missing).encode(), doc["mediaType"])
    assert await store.get_manifest("envcache/env", "bad") is None


async def test_reopen_cuts_uploads_back_to_acknowledged_offset(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "d")
    session = await store.create_upload("repo")
    path = store.files.upload_path(session.id)
    path.write_bytes(b"acknowledged-unacknowledged")
    await store.uploads.set_offset(session.id, len(b"acknowledged"))
    (store.data_dir / "uploads" / "orphan").write_bytes(b"x")
    (store.data_dir / "tmp" / "blob-crashed").write_bytes(b"half a blob")
    await store.close()
    store = await open_store(tmp_path / "d")
    assert path.read_bytes() == b"acknowledged"
    assert (await store.uploads.get(session.id)).offset == len(b"acknowledged")
    assert sorted(p.name for p in (store.data_dir / "uploads").iterdir()) == [session.id]
    assert list((store.data_dir / "tmp").iterdir()) == []
    await store.close()


async def test_second_opener_does_not_clean_the_owners_files(tmp_path: Path) -> None:
    owner = await open_store(tmp_path / "d")
    in_progress = owner.data_dir / "tmp" / "blob-writing"
    in_progress.write_bytes(b"being written")
    session = await owner.create_upload("repo")
    owner.files.upload_path(session.id).write_bytes(b"unacknowledged")
    second = await open_store(tmp_path / "d")
    assert owner.owner and not second.owner
    assert in_progress.exists() and owner.files.upload_path(session.id).read_bytes() == b"unacknowledged"
    await second.close()
    await owner.close()
