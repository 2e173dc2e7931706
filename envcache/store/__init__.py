"""What the daemon keeps: a SQLite index and content-addressed blob files.

On-disk layout of a data directory (this docstring is the one place it is written down; the
README reproduces it)::

    <data_dir>/
      .lock                  flock held by the process that owns the directory (the daemon);
                             only the owner runs the start-up clean-up of tmp/ and uploads/.
      envcache.db            SQLite index (WAL mode; -wal and -shm files beside it). Schema in
                             envcache/store/schema.py, versioned by the schema_version table and
                             migrated forward on open.
      blobs/
        sha256/<h0h1>/<hex>  one immutable file per blob (layers, configs, and manifests too),
        sha512/<h0h1>/<hex>  named by its digest; fanned out by the first two hex characters.
      tmp/                   private temp files of blob writes in progress; a file here is never
                             a blob. Emptied on open (anything left is from a crash).
      uploads/<uuid>         bytes received so far for an OCI upload session; the session's
                             acknowledged offset is in the upload_sessions table. On open each
                             file is cut back to that offset, so an upload interrupted by a
                             restart resumes from the last acknowledged chunk or expires.

The database is the index, the blob files are the truth: a blob becomes visible only by an
atomic rename after its digest and size were verified and the file was fsync'd.
"""

from envcache.store.blobs import BlobStore, DigestMismatch, SizeMismatch
from envcache.store.store import Manifest, ManifestBlobUnknown, Store, UploadSession

__all__ = ["BlobStore", "DigestMismatch", "Manifest", "ManifestBlobUnknown", "SizeMismatch", "Store", "UploadSession"]
