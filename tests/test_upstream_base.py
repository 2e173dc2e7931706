"""Pull-through of base images: origin registry or configured mirror → local store → digest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envcache.errors import InvalidInput
from envcache.store import open_store
from envcache.oci import parse_reference
from envcache.upstream.base import BaseNotAvailable, BasePuller
from envcache.upstream.client import RegistryClient
from envcache.upstream.config import parse_upstream
from envcache.upstream.copy import push_image
from tests.fixtures.processes import free_port
from tests.fixtures.upstream import make_image, make_layer


def test_reference_normalisation() -> None:
    ref = parse_reference("ubuntu")
    assert (ref.host, ref.path, ref.tag, str(ref)) == ("docker.io", "library/ubuntu", "latest",
                                                       "docker.io/library/ubuntu:latest")
    ref = parse_reference("127.0.0.1:5000/ml/cuda:12.1@sha256:" + "a" * 64)
    assert (ref.host, ref.path, ref.tag, ref.ref) == ("127.0.0.1:5000", "ml/cuda", "12.1", "sha256:" + "a" * 64)
    assert ref.local_repository == "127.0.0.1-5000/ml/cuda"
    assert parse_reference("index.docker.io/org/img:1").host == "docker.io"
    with pytest.raises(InvalidInput, match="invalid image reference"):
        parse_reference("UPPER/Case:tag")


async def _publish(tmp_path: Path, url: str, path: str, tag: str) -> str:
    origin_store = await open_store(tmp_path / "origin")
    try:
        digest = await make_image(origin_store, "envcache/env", "base", [make_layer({"etc/os-release": b"busybox"})])
        async with RegistryClient(parse_upstream({"url": url})) as client:
            await push_image(client, origin_store, "envcache/env", "base", path, tag)
    finally:
        await origin_store.close()
    return digest


async def test_base_pulled_from_origin_and_resolved(tmp_path: Path, reference_registry: str) -> None:
    digest = await _publish(tmp_path, reference_registry, "library/busybox", "1.36")
    host = reference_registry.removeprefix("http://")
    store = await open_store(tmp_path / "daemon")
    puller = BasePuller(store, [])
    try:
        local_repo = f"{host.replace(':', '-')}/library/busybox"
        # Resolver protocol: the config digest (what an engine calls the image id).
        config = await puller(f"{host}/library/busybox:1.36")
        local = await store.get_manifest(local_repo, "1.36")
        assert local is not None and local.digest == digest
        child = json.loads((await store.get_manifest(local_repo, json.loads(local.body)["manifests"][0]["digest"])).body)
        assert config == child["config"]["digest"] and await store.has_blob(config)
        again = await puller.pull(f"{host}/library/busybox:1.36")       # cached: nothing re-sent
        assert again.digest == digest and again.bytes_copied == 0
    finally:
        await puller.aclose()
        await store.close()


async def test_base_from_mirror_when_origin_is_down(tmp_path: Path, reference_registry_factory) -> None:
    mirror = reference_registry_factory()
    digest = await _publish(tmp_path, mirror.url, "team/python", "3.11")
    origin = f"127.0.0.1:{free_port()}"                                   # nothing listens there
    store = await open_store(tmp_path / "daemon")
    puller = BasePuller(store, [parse_upstream({"url": mirror.url, "mode": "pull", "mirror_for": [origin]})])
    try:
        got = await puller.pull(f"{origin}/team/python:3.11")
        assert got.digest == digest and got.source == mirror.url
        no_mirror = BasePuller(store, [])
        with pytest.raises(BaseNotAvailable, match="cannot connect"):
            await no_mirror(f"{origin}/team/python:3.11")
        await no_mirror.aclose()
    finally:
        await puller.aclose()
        await store.close()
