"""envcache: a content-addressed environment build cache and OCI image registry daemon.

The package is split by concern (see README, "Code layout"): ``spec`` turns a definition into
canonical bytes and keys, ``store`` keeps blobs and metadata, ``registry`` serves them over the
OCI Distribution API, ``build`` makes images, ``upstream`` talks to other registries,
``service`` is the daemon and ``client`` the library users import.
"""

__version__ = "0.1.0"
