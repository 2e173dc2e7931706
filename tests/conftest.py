"""Shared fixtures, one plugin module per kind of real part the tests run.

- ``tests.fixtures.engines``: dockerd, buildah, skopeo, the reference registry, base images.
- ``tests.fixtures.testdata``: local conda channels and Maven repositories the tests make.
- ``tests.fixtures.upstream``: tiny OCI images in real stores, and upstream registries that misbehave.
- ``tests.fixtures.daemon``: a real envcache daemon on a loopback port, over a real data dir.
"""

pytest_plugins = ["tests.fixtures.engines", "tests.fixtures.testdata", "tests.fixtures.daemon", "tests.fixtures.upstream"]
