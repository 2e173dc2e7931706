"""Shared fixtures, one plugin module per kind of real part the tests run.

- ``tests.fixtures.processes``: the process harness (run, spawn, stop, temp dirs, free ports,
  stale-tempdir reaping, a cache for slow inputs); imports no other fixture module.
- ``tests.fixtures.engines``: dockerd, buildah, skopeo.
- ``tests.fixtures.registry``: the CNCF reference registry, TLS certificates, htpasswd.
- ``tests.fixtures.oci_images``: reproducible tars and OCI image layouts, the GPU marker.
- ``tests.fixtures.bases``: busybox and Debian python base images, and loading them into engines.
- ``tests.fixtures.testdata``: local conda channels and Maven repositories the tests make.
- ``tests.fixtures.upstream``: tiny OCI images in real stores, and upstream registries that misbehave.
- ``tests.fixtures.daemon``: a real envcache daemon on a loopback port, over a real data dir.
- ``tests.fixtures.pipelines``: a host-Python step runner and a three-step pipeline project.
- ``tests.fixtures.wheel_index``: a local package index (real wheels over loopback) that gains releases.
- ``tests.fixtures.browser``: headless Chromium (Debian's) driven by Selenium, and screenshots.
- ``tests.fixtures.wheels``: real wheels of tiny projects, built with ``pip wheel``.

``tests.fixtures.abuse`` holds plain helpers, no fixtures: what broken or hostile clients send.
"""

pytest_plugins = [
    "tests.fixtures.processes",
    "tests.fixtures.engines",
    "tests.fixtures.registry",
    "tests.fixtures.oci_images",
    "tests.fixtures.bases",
    "tests.fixtures.testdata",
    "tests.fixtures.daemon",
    "tests.fixtures.upstream",
    "tests.fixtures.pipelines",
    "tests.fixtures.wheel_index",
    "tests.fixtures.browser",
    "tests.fixtures.wheels",
]
