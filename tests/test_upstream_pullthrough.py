"""Pull-through end to end: the engine builds on a base it could never fetch itself.

The base image lives only on a registry that demands a password. The daemon is configured with
that password (as the origin's upstream entry, or on a mirror of an origin that is down); the
engine — the session's dockerd, or a buildah storage — has no credentials and no copy. An ensure
that builds therefore proves the base came through envcache's store: resolved and copied by the
daemon, then loaded into the engine under the name the definition uses, so ``FROM`` resolves
locally.
"""

from __future__ import annotations

import gzip
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from envcache.builder.build import ensure_base
from envcache.builder.engines import BuildahEngine, DockerEngine, Engine
from envcache.service.config import Config
from envcache.store import open_store
from envcache.upstream.base import BasePuller, stored_copy
from envcache.upstream.client import RegistryClient
from envcache.upstream.config import parse_upstream
from envcache.upstream.copy import push_image
from tests.fixtures.engines import Buildah, Dockerd
from tests.fixtures.oci_images import OciImage, push_oci_image
from tests.fixtures.processes import free_port
from tests.fixtures.upstream import ensure_and_log, make_image, make_layer

USER, PASSWORD = "reader", "s3cret-pw"




def _config(upstreams: list[dict[str, Any]], **build: Any) -> Config:
    config = Config()
    for name, value in build.items():
        setattr(config.build, name, value)
    config.build.compression = "gzip"
    config.upstreams = [parse_upstream(u) for u in upstreams]
    return config


def _built_on_loaded_base(log: str, base: str, engine: str, local_repo: str, digest: str) -> bool:
    """The build took ``base`` from the store's copy — loaded, or only tagged when the engine
    already held that image by id — and never asked the engine to pull it (an engine pull logs
    ``pulling REF`` on its own line), not even to compute stage keys."""
    found = any(f"base {base}: {how} {engine} from envcache's registry ({local_repo}@{digest})\n" in log
                for how in ("loaded into", "found by id in"))
    return (found and "cannot compute stage keys" not in log
            and not any(line.startswith(f"pulling {base}") for line in log.splitlines()))


def _private_base(registry, image: OciImage) -> str:
    """Publish the busybox test image under a fresh name on a password-protected registry."""
    ref = f"{registry.host}/private/busybox:{os.urandom(6).hex()}"
    push_oci_image(image, ref, creds=f"{USER}:{PASSWORD}")
    return ref


@pytest.mark.engine
async def test_docker_builds_on_a_base_only_the_daemon_can_fetch(make_daemon, dockerd: Dockerd,
                                                                 reference_registry_factory,
                                                                 busybox_oci_layout: OciImage) -> None:
    origin = reference_registry_factory(htpasswd={USER: PASSWORD})
    base = _private_base(origin, busybox_oci_layout)
    # The premise: dockerd has no credentials for the origin, so it cannot pull the base itself.
    denied = dockerd.docker("pull", base, check=False)
    assert denied.returncode != 0 and "no basic auth credentials" in denied.stderr, denied
    assert dockerd.docker("image", "inspect", base, check=False).returncode != 0

    # The origin itself is the configured upstream that carries the credentials.
    daemon = await make_daemon(_config([{"url": origin.url, "mode": "pull", "prefix": "team",
                                         "username": USER, "password": PASSWORD}],
                                       engine="docker", docker_host=dockerd.host))
    try:
        answer = await ensure_and_log(daemon, {"docker": {"base_image": base}})
        assert answer["status"] == "built", answer.get("log", answer)
        local_repo = f"{origin.host.replace(':', '-')}/private/busybox"
        stored = await daemon.store.get_manifest(local_repo, base.rsplit(":", 1)[1])
        assert stored is not None                          # pulled through into envcache's store
        assert _built_on_loaded_base(answer["log"], base, "docker", local_repo, stored.digest), answer["log"]
        # Loaded under the definition's own name, with the config bytes kept: same image id.
        inspected = json.loads(dockerd.docker("image", "inspect", base).stdout)[0]
        assert inspected["Id"] == busybox_oci_layout.config_digest
    finally:
        dockerd.docker("rmi", base, check=False)


@pytest.mark.engine
async def test_buildah_builds_from_a_mirror_when_the_origin_is_down(make_daemon, buildah: Buildah,
                                                                    reference_registry_factory,
                                                                    busybox_oci_layout: OciImage) -> None:
    mirror = reference_registry_factory(htpasswd={USER: PASSWORD})
    origin = f"127.0.0.1:{free_port()}"                # nothing listens there
    tag = os.urandom(6).hex()
    push_oci_image(busybox_oci_layout, f"{mirror.host}/private/busybox:{tag}", creds=f"{USER}:{PASSWORD}")
    base = f"{origin}/private/busybox:{tag}"
    # Out of buildah's reach: the origin is down, the mirror is unknown to it and wants a password.
    assert buildah.buildah("pull", "--tls-verify=false", base, check=False).returncode != 0

    daemon = await make_daemon(_config([{"url": mirror.url, "mode": "pull", "prefix": "team",
                                         "mirror_for": [origin], "username": USER, "password": PASSWORD}],
                                       engine="buildah", buildah_root=str(buildah.storage_root),
                                       buildah_runroot=str(buildah.run_root),
                                       buildah_storage_driver=buildah.storage_driver))
    marker = os.urandom(8).hex()
    answer = await ensure_and_log(daemon, {"docker": {"base_dockerfile": f"FROM {base}\nRUN echo {marker} > /marker"}})
    assert answer["status"] == "built", answer.get("log", answer)
    local_repo = f"{origin.replace(':', '-')}/private/busybox"
    stored = await daemon.store.get_manifest(local_repo, tag)
    assert stored is not None                              # fetched from the mirror into the store
    assert _built_on_loaded_base(answer["log"], base, "buildah", local_repo, stored.digest), answer["log"]
    # The RUN step ran on the loaded base: one of the image's layers holds the marker.
    manifest = json.loads((await daemon.store.get_manifest("envcache/env", answer["image"]["digest"])).body)
    markers = []
    for descriptor in manifest["layers"]:
        with gzip.open(daemon.store.files.path(descriptor["digest"])) as stream, \
                tarfile.open(fileobj=stream) as layer:
            markers += [layer.extractfile(m).read().decode().strip() for m in layer.getmembers()
                        if m.isfile() and m.name.lstrip("./") == "marker"]
    assert markers == [marker], (markers, answer["log"])
    buildah.buildah("rmi", base, check=False)


@pytest.mark.engine
@pytest.mark.parametrize("engine_name", ["docker", "buildah"])
async def test_short_name_from_a_multi_platform_index_resolves_in_from(engine_name: str, request, tmp_path: Path,
                                                                       reference_registry_factory) -> None:
    """A Docker Hub short name whose tag is an index (arm64 listed first): the platform the image
    key was resolved from is loaded, under the short name, and ``FROM`` finds it — buildah files
    short names under ``localhost/`` and must still resolve them."""
    mirror = reference_registry_factory()
    tag = f"pt-{os.urandom(6).hex()}"
    origin_store = await open_store(tmp_path / "origin")
    try:
        await make_image(origin_store, "src/busybox", "base", [make_layer({"etc/os-release": tag.encode()})],
                         platforms=("arm64", "amd64"))
        async with RegistryClient(parse_upstream({"url": mirror.url})) as client:
            await push_image(client, origin_store, "src/busybox", "base", "library/busybox", tag)
    finally:
        await origin_store.close()
    store = await open_store(tmp_path / "daemon")
    puller = BasePuller(store, [parse_upstream({"url": mirror.url, "mode": "pull", "mirror_for": ["docker.io"]})])
    engine: Engine
    if engine_name == "docker":
        engine = DockerEngine(request.getfixturevalue("dockerd").host)
    else:
        handle: Buildah = request.getfixturevalue("buildah")
        engine = BuildahEngine(root=handle.storage_root, runroot=handle.run_root,
                               storage_driver=handle.storage_driver)
    base = f"busybox:{tag}"
    try:
        resolved = await puller(base)                      # the image key's base digest (amd64 here)
        arm64 = json.loads((await store.get_manifest("docker.io/library/busybox", tag)).body)["manifests"][0]
        assert arm64["platform"]["architecture"] == "arm64"
        assert resolved != json.loads((await store.get_manifest("docker.io/library/busybox",
                                                         arm64["digest"])).body)["config"]["digest"]
        assert await engine.inspect(base) is None
        lines: list[str] = []
        info = await ensure_base(engine, base, lines.append, store=store, stored_base=stored_copy(store))
        assert info.id == resolved, lines
        assert any(line.startswith(f"base {base}: loaded into {engine.name} from envcache's registry")
                   for line in lines), lines
        context = tmp_path / "context"
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {base}\nLABEL envcache.test={tag}\n")
        built = await engine.build(context, f"envcache-pt:{tag}", network=False, log=lines.append, step="base")
        assert (await engine.inspect(f"envcache-pt:{tag}")).id == built
        assert not any(line.startswith("pulling") for line in lines), lines
    finally:
        for ref in (f"envcache-pt:{tag}", base):
            await engine.remove(ref)
        await engine.close()
        await puller.aclose()
        await store.close()
