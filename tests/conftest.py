"""Shared fixtures, one plugin module per kind of real part the tests run.

- ``tests.fixtures.engines``: dockerd, buildah, skopeo, the reference registry, base images.
- ``tests.fixtures.daemon``: a real envcache daemon on a loopback port, over a real data dir.
"""

pytest_plugins = ["tests.fixtures.engines", "tests.fixtures.daemon"]
