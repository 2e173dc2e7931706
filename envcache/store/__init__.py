"""What the daemon keeps: metadata repositories and content-addressed blob storage.

Interfaces in :mod:`~envcache.store.interfaces`; the embedded implementation is a SQLite index
(:mod:`~envcache.store.sqlite`, where all of envcache's SQL lives) and blob files
(:mod:`~envcache.store.files`); :func:`open_store` groups them as a :class:`Store`.

On-disk layout of a data directory (this docstring is the one place it is written down; the
README reproduces it)::

    <data_dir>/
      .lock                  flock held by the process that owns the directory (the daemon);
                             only the owner runs the start-up clean-up of tmp/ and uploads/.
      reserve                8 MiB the daemon holds back: deletes and gc release it when the disk
                             is full (so the index can still be written), gc takes it back after.
      envcache.db            SQLite index (WAL mode; -wal and -shm files beside it). Schema in
                             envcache/store/sqlite/schema.py, versioned by the schema_version
                             table and migrated forward on open.
      blobs/
        sha256/<h0h1>/<hex>  one immutable file per blob (layers, configs, and manifests too),
        sha512/<h0h1>/<hex>  named by its digest; fanned out by the first two hex characters.
      tmp/                   private temp files of blob writes in progress (each flock'd by its
                             writer until it is done; gc never touches a claimed one); a file here is
                             never a blob. Emptied on open (anything left is from a crash).
      uploads/<uuid>         bytes received so far for an OCI upload session; the session's
                             acknowledged offset is in the upload_sessions table. On open each
                             file is cut back to that offset, so an upload interrupted by a
                             restart resumes from the last acknowledged chunk or expires.

The database is the index, the blob files are the truth: a blob becomes visible only by an
atomic rename after its digest and size were verified and the file was fsync'd, under the
index's write lock together with its row (the rules: :mod:`envcache.store.interfaces`).
"""

from envcache.store.errors import BlobInUse, DigestMismatch, InsufficientStorage, ManifestBlobUnknown, SizeMismatch
from envcache.store.records import (
    BlobRow, BuildRecord, EnvironmentVersion, FileEntry, KnownLayer, ManifestRow, ReplacedImage, StagedBlob,
    StepResult,
    StoredImage, StoredManifest, UploadSession, WheelRecord,
)
from envcache.store.store import Busy, Store, StoreSettings, open_store

__all__ = [
    "BlobInUse", "BlobRow", "BuildRecord", "Busy", "DigestMismatch", "EnvironmentVersion", "FileEntry",
    "InsufficientStorage", "KnownLayer", "ManifestBlobUnknown", "ManifestRow", "ReplacedImage", "SizeMismatch",
    "StagedBlob", "StepResult", "Store", "StoreSettings", "StoredImage", "StoredManifest", "UploadSession",
    "WheelRecord",
    "open_store",
]
