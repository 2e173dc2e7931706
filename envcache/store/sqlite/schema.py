"""The SQLite schema, as an ordered list of migrations.

``schema_version`` holds one row: the number of migrations applied. On open, every migration
after that number runs in order inside one transaction each, so a database written by an older
envcache is brought forward and a new one is created by the same code path. Never edit a
migration that has shipped: append a new one.

Every table in ``envcache.db`` is created here, including those only one part of the daemon
reads (the build's layer map, the base-digest cache, the upstream push log), so the whole
on-disk schema is written down in one place; those parts name their tables with the constants
below.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

#: diff_id (uncompressed layer) → stored blob, per compression: lets ingest skip known layers.
LAYER_BLOBS = "build_layer_blobs"
#: Last resolved digest of each base-image reference: the offline fallback of base resolution.
BASE_DIGESTS = "service_base_digests"
#: One row per background push to an upstream registry, with its state and attempts.
UPSTREAM_PUSHES = "upstream_pushes"
#: The daemon's counters (hits, pulls, builds …) per time bucket: the dashboard's charts.
ACTIVITY = "activity_counts"


def _m1_initial(db: sqlite_utils.Database) -> None:
    """Registry tables, upload sessions, and the daemon's image/environment/build index."""
    db["repositories"].create({"name": str, "created": float}, pk="name")
    db["blobs"].create(
        {"digest": str, "size": int, "media_type": str, "created": float, "last_access": float},
        pk="digest",
    )
    # A blob is visible in a repository only through a link (like distribution's layer links):
    # deleting a blob in one repository must not break another repository that shares it.
    db["repository_blobs"].create(
        {"repository": str, "digest": str, "created": float},
        pk=("repository", "digest"),
        foreign_keys=[("repository", "repositories", "name")],
    )
    db["manifests"].create(
        {
            "repository": str,
            "digest": str,
            "media_type": str,
            "size": int,
            "subject": str,
            "artifact_type": str,
            "annotations": str,  # JSON object or NULL; returned as-is by the referrers API
            "created": float,
        },
        pk=("repository", "digest"),
        foreign_keys=[("repository", "repositories", "name")],
    )
    db["manifests"].create_index(["repository", "subject"])
    db["tags"].create(
        {"repository": str, "tag": str, "digest": str, "updated": float},
        pk=("repository", "tag"),
        foreign_keys=[("repository", "repositories", "name")],
    )
    db["tags"].create_index(["repository", "digest"])
    db["upload_sessions"].create(
        {"id": str, "repository": str, "offset": int, "created": float, "updated": float},
        pk="id",
    )
    db["images"].create(
        {
            "key": str,
            "variant": str,
            "spec_hash": str,
            "canonical": bytes,
            "repository": str,
            "tag": str,
            "manifest_digest": str,
            "size": int,
            "created": float,
            "last_used": float,
            "lock": str,
            "base_digest": str,
            "recipe_version": str,
        },
        pk="key",
    )
    db["images"].create_index(["spec_hash", "variant"])
    db["environments"].create(
        {"name": str, "version": int, "spec_hash": str, "definition": str, "created": float},
        pk=("name", "version"),
    )
    db["builds"].create(
        {
            "id": str,
            "key": str,
            "variant": str,
            "spec_hash": str,
            "env_name": str,
            "env_version": int,
            "state": str,
            "created": float,
            "started": float,
            "finished": float,
            "error": str,
            "log": str,
        },
        pk="id",
    )
    db["builds"].create_index(["key"])


def _m2_component_tables(db: sqlite_utils.Database) -> None:
    """The build's layer map, the base-digest cache and the upstream push log.

    Databases from before this migration may already hold these tables (their modules once
    created them on first use), hence ``if_not_exists``.
    """
    db[LAYER_BLOBS].create(
        {"diff_id": str, "compression": str, "blob_digest": str, "size": int, "created": float},
        pk=("diff_id", "compression"), if_not_exists=True,
    )
    db[BASE_DIGESTS].create({"reference": str, "digest": str, "resolved": float}, pk="reference",
                            if_not_exists=True)
    db[UPSTREAM_PUSHES].create(
        {"id": str, "upstream": str, "repository": str, "tag": str, "remote_repository": str,
         "digest": str, "state": str, "attempts": int, "error": str, "bytes": int, "mounted": int,
         "created": float, "updated": float},
        pk="id", if_not_exists=True,
    )
    db[UPSTREAM_PUSHES].create_index(["state"], if_not_exists=True)


def _m3_dashboard(db: sqlite_utils.Database) -> None:
    """The counters' time series, and the indexes the dashboard's listings page by.

    ``activity_counts`` holds one row per (resolution in seconds, counter, bucket start); the
    daemon prunes old buckets, so the table stays bounded however long it runs. Like migration
    2, it keeps what is already there (a test re-running it over a newer database included).
    """
    db[ACTIVITY].create({"resolution": int, "name": str, "bucket": int, "count": int},
                        pk=("resolution", "name", "bucket"), if_not_exists=True)
    db["builds"].create_index(["created"], if_not_exists=True)
    db["builds"].create_index(["state", "created"], if_not_exists=True)
    db["images"].create_index(["last_used", "key"], if_not_exists=True)
    # Count and total size from the index alone, not from the wide rows.
    db["images"].create_index(["size"], if_not_exists=True)
    db[UPSTREAM_PUSHES].create_index(["repository", "tag"], if_not_exists=True)


def _m4_generations(db: sqlite_utils.Database) -> None:
    """What gc needs to never delete content a writer just used (issue 13), and to stay linear.

    ``blobs.gen`` and ``manifests.gen`` count uses: every upload finish, re-push, mount and
    manifest naming a blob bumps it in the transaction that creates the reference, and gc deletes
    a row only if its generation is still the one it marked. ``manifests.last_used`` is when a
    manifest was last pushed or tagged (a re-push restarts its grace period; ``created`` keeps
    the first push, which orders referrers). The index on ``repository_blobs(digest)`` turns
    gc's per-blob link deletion from a table scan into a lookup (16k dead blobs took minutes).
    """
    for table, column, kind in (("blobs", "gen", "INTEGER NOT NULL DEFAULT 0"),
                                ("manifests", "gen", "INTEGER NOT NULL DEFAULT 0"), ("manifests", "last_used", "FLOAT")):
        if column not in db[table].columns_dict:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    db["repository_blobs"].create_index(["digest"], if_not_exists=True)
    db[LAYER_BLOBS].create_index(["blob_digest"], if_not_exists=True)


def _m5_wheels(db: sqlite_utils.Database) -> None:
    """Private wheels: one row per uploaded wheel (its bytes are a blob, its artifact a manifest)."""
    db["wheels"].create(
        {"digest": str, "filename": str, "name": str, "version": str, "tags": str, "requires_python": str,
         "summary": str, "size": int, "created": float},
        pk="digest", if_not_exists=True,
    )
    db["wheels"].create_index(["filename"], unique=True, if_not_exists=True)
    db["wheels"].create_index(["name"], if_not_exists=True)


def _m6_image_history(db: sqlite_utils.Database) -> None:
    """Images a key was filed under before a refresh re-resolved it: they stay pullable by digest
    (and listed by ``envcache images KEY --history``) until gc expires them. And each image's
    layer compression, so a daemon configured for another one never answers with it (empty for
    images filed before: they are checked once)."""
    if "compression" not in db["images"].columns_dict:
        db["images"].add_column("compression", str)
    db["image_history"].create(
        {"key": str, "variant": str, "repository": str, "tag": str, "manifest_digest": str, "size": int,
         "created": float, "replaced": float, "lock": str},
        pk=("key", "manifest_digest"), if_not_exists=True,
    )
    db["image_history"].create_index(["replaced"], if_not_exists=True)


def _m7_image_pins(db: sqlite_utils.Database) -> None:
    """``images.pinned``: a pinned image (``envcache images pin KEY``) never expires or is evicted
    by gc's size cap. A column, not a table: the pin belongs to the row and goes with it."""
    if "pinned" not in db["images"].columns_dict:
        db.execute("ALTER TABLE images ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")


def _m8_step_results(db: sqlite_utils.Database) -> None:
    """Pipeline step results (issue 16): one row per step key, naming its ``envcache/step``
    manifest and each output's tree digest and tar layer (JSON), with its last reuse."""
    db["step_results"].create(
        {"key": str, "step": str, "manifest_digest": str, "outputs": str, "created": float, "last_used": float},
        pk="key", if_not_exists=True)
    db["step_results"].create_index(["last_used"], if_not_exists=True)


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m1_initial, _m2_component_tables, _m3_dashboard, _m4_generations, _m5_wheels, _m6_image_history,
    _m7_image_pins, _m8_step_results]


def migrate(db: sqlite_utils.Database) -> int:
    """Apply every pending migration; returns the resulting schema version."""
    if "schema_version" not in db.table_names():
        db["schema_version"].create({"id": int, "version": int}, pk="id")
        db["schema_version"].insert({"id": 1, "version": 0})
    current = db["schema_version"].get(1)["version"]
    if current > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {current} is newer than this envcache ({len(MIGRATIONS)}); upgrade envcache"
        )
    for number, migration in enumerate(MIGRATIONS[current:], start=current + 1):
        # SQLite DDL is transactional; an explicit BEGIN makes the migration and its version
        # bump one unit, so a crash mid-migration leaves the previous schema intact.
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            migration(db)
            db.conn.execute("UPDATE schema_version SET version = ? WHERE id = 1", [number])
        except BaseException:
            db.conn.rollback()
            raise
        db.conn.commit()
    return len(MIGRATIONS)
