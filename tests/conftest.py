"""Shared fixtures, one plugin module per kind of real part the tests run.

- ``tests.fixtures.engines``: dockerd, buildah, skopeo, the reference registry, base images.
- ``tests.fixtures.testdata``: local conda channels and Maven repositories the tests make.
- ``tests.fixtures.broken``: upstream registries that stall or answer garbage.
- ``tests.fixtures.daemon``: a real envcache daemon on a loopback port, over a real data dir.
"""

pytest_plugins = ["tests.fixtures.engines", "tests.fixtures.testdata", "tests.fixtures.daemon", "tests.fixtures.broken"]
