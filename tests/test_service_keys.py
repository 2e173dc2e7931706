"""Base-image digests: every way of resolving a base gives the same (config) digest.

A daemon that builds finds bases in its engine; one that only pulls finds them in a registry.
If the two disagreed, they would compute different image keys for one definition and never
share images — so this checks all resolvers against the same image, for real.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from envcache.service.config import Config
from envcache.service.daemon import DAEMON
from tests.fixtures.engines import SKOPEO
from tests.fixtures.processes import run

pytestmark = pytest.mark.engine


async def test_own_registry_engine_and_remote_registry_agree(make_daemon, dockerd, busybox_oci_layout) -> None:
    config = Config()
    config.build.engine, config.build.docker_host = "docker", dockerd.host
    url = await make_daemon(config)
    host = url.removeprefix("http://")
    reference = f"{host}/base/busybox:agree"
    await asyncio.to_thread(run, [SKOPEO, "copy", "--dest-tls-verify=false", busybox_oci_layout.ref,
                                  f"docker://{reference}"])
    await asyncio.to_thread(dockerd.docker, "pull", reference)
    own, engine, _pull_through, remote = url.app[DAEMON].resolvers
    answers = [await own(reference), await engine(reference), await remote(reference)]
    assert answers[0] == answers[1] == answers[2] == busybox_oci_layout.config_digest
    # Pinned by manifest digest, through an image index: still the config digest.
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": busybox_oci_layout.manifest_digest,
                            "size": (await url.store.get_manifest("base/busybox", "agree")).size,
                            "platform": {"os": "linux", "architecture": "amd64"}}]}
    digest = await url.store.put_manifest("base/busybox", "multi", json.dumps(index).encode(),
                                    "application/vnd.oci.image.index.v1+json")
    assert await own(f"{host}/base/busybox:multi") == busybox_oci_layout.config_digest
    assert await remote(f"{host}/base/busybox@{digest}") == busybox_oci_layout.config_digest
    assert await own(f"{host}/base/busybox:missing") is None
