"""The embedded metadata backend: one SQLite file (``envcache.db``), one repository class per
concern. All of envcache's SQL lives in this package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from envcache.store.sqlite.components import SqliteActivity, SqliteBaseDigests, SqliteLayerMap, SqlitePushLog
from envcache.store.sqlite.database import Database
from envcache.store.sqlite.registry import SqliteBlobIndex, SqliteManifests
from envcache.store.sqlite.service import (
    SqliteBuilds, SqliteEnvironments, SqliteImages, SqliteStepResults, SqliteWheels,
)
from envcache.store.sqlite.uploads import SqliteUploads


@dataclass(frozen=True)
class SqliteMetadata:
    """The database and its repositories, as :func:`envcache.store.open_store` groups them."""

    database: Database
    blobs: SqliteBlobIndex
    manifests: SqliteManifests
    uploads: SqliteUploads
    images: SqliteImages
    builds: SqliteBuilds
    environments: SqliteEnvironments
    layers: SqliteLayerMap
    base_digests: SqliteBaseDigests
    pushes: SqlitePushLog
    activity: SqliteActivity
    wheels: SqliteWheels
    steps: SqliteStepResults


def open_sqlite(path: Path) -> SqliteMetadata:
    """Open (creating or migrating) the database at ``path``."""
    db = Database(path)
    return SqliteMetadata(db, SqliteBlobIndex(db), SqliteManifests(db), SqliteUploads(db), SqliteImages(db),
                          SqliteBuilds(db), SqliteEnvironments(db), SqliteLayerMap(db), SqliteBaseDigests(db),
                          SqlitePushLog(db), SqliteActivity(db), SqliteWheels(db), SqliteStepResults(db))
