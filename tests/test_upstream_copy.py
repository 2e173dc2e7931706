"""Pull and push between the local store and a real CNCF distribution 2.8 registry."""

from __future__ import annotations

import json
import os

import pytest

from envcache.store import Store
from envcache.oci import digest_bytes
from envcache.upstream.client import RegistryClient
from envcache.upstream.config import Upstream, parse_upstream
from envcache.upstream.copy import pull_image, push_image
from tests.fixtures.upstream import image_blobs, make_image, make_layer


async def _roundtrip(upstream: Upstream, a: Store, b: Store) -> None:
    layers = [make_layer({"base.txt": b"base"}), make_layer({"top.txt": os.urandom(64)})]
    index = await make_image(a, "envcache/env", "k1-cpu", layers, platforms=("amd64", "arm64"))
    async with RegistryClient(upstream) as client:
        pushed = await push_image(client, a, "envcache/env", "k1-cpu", "team/env", "k1-cpu")
        assert pushed.digest == index and pushed.blobs_copied == 4 and pushed.manifests == 3
        again = await push_image(client, a, "envcache/env", "k1-cpu", "team/env", "k1-cpu")
        assert again.blobs_copied == 0 and again.blobs_skipped == 6   # HEAD says present
        pulled = await pull_image(client, "team/env", "k1-cpu", b, "envcache/env", "k1-cpu")
        assert pulled is not None and pulled.digest == index
        assert pulled.blobs_copied == 4 and pulled.manifests == 3
        # bytes_in also counts the three manifests fetched; bytes_copied only blobs
        assert client.bytes_in > pulled.bytes_copied > sum(len(x) for x in layers)
        assert await image_blobs(a, "envcache/env", "k1-cpu") == await image_blobs(b, "envcache/env", "k1-cpu")
        assert await pull_image(client, "team/env", "no-such-tag", b, "envcache/env", "x") is None


async def test_push_then_pull_plain_http(stores: tuple[Store, Store], reference_registry: str) -> None:
    await _roundtrip(parse_upstream({"url": reference_registry, "prefix": "team"}), *stores)


async def test_push_then_pull_htpasswd_over_tls(stores: tuple[Store, Store], reference_registry_factory) -> None:
    server = reference_registry_factory(htpasswd={"ci": "s3cret"}, tls=True)
    upstream = parse_upstream({"url": server.url, "ca_file": str(server.ca_cert), "username": "ci",
                               "password": "s3cret"})
    await _roundtrip(upstream, *stores)


async def test_wrong_password_and_untrusted_cert_are_clear_errors(reference_registry_factory) -> None:
    from envcache.upstream.client import UpstreamError

    server = reference_registry_factory(htpasswd={"ci": "s3cret"}, tls=True)
    wrong = parse_upstream({"url": server.url, "ca_file": str(server.ca_cert), "username": "ci",
                            "password": "nope"})
    async with RegistryClient(wrong) as client:
        with pytest.raises(UpstreamError, match="rejected the username/password"):
            await client.get_manifest("team/env", "latest")
    untrusted = parse_upstream({"url": server.url, "username": "ci", "password": "s3cret"})
    async with RegistryClient(untrusted) as client:
        with pytest.raises(UpstreamError, match="certificate"):
            await client.get_manifest("team/env", "latest")
    insecure = parse_upstream({"url": server.url, "insecure": True, "username": "ci", "password": "s3cret"})
    async with RegistryClient(insecure) as client:
        assert await client.get_manifest("team/env", "latest") is None


async def test_pull_copies_only_missing_layers(stores: tuple[Store, Store], reference_registry: str) -> None:
    a, b = stores
    base = make_layer({"base.txt": b"shared base"})
    await make_image(a, "envcache/env", "v1", [base, make_layer({"v": b"1"})])
    top2 = make_layer({"v": os.urandom(32)})
    await make_image(a, "envcache/env", "v2", [base, top2])
    upstream = parse_upstream({"url": reference_registry, "prefix": "only-missing"})
    async with RegistryClient(upstream) as client:
        for tag in ("v1", "v2"):
            await push_image(client, a, "envcache/env", tag, "only-missing/env", tag)
        first = await pull_image(client, "only-missing/env", "v1", b, "envcache/env", "v1")
        before = client.bytes_in
        second = await pull_image(client, "only-missing/env", "v2", b, "envcache/env", "v2")
    assert first is not None and second is not None
    assert second.blobs_skipped == 1 and second.blobs_copied == 2     # new config + new top layer
    config2 = json.loads((await b.get_manifest("envcache/env", json.loads(
        (await b.get_manifest("envcache/env", "v2")).body)["manifests"][0]["digest"])).body)["config"]
    assert second.bytes_copied == len(top2) + config2["size"]
    assert second.bytes_copied < client.bytes_in - before < second.bytes_copied + 2048   # + 2 manifests


async def test_chunked_upload_and_cross_repo_mount(stores: tuple[Store, Store], reference_registry: str) -> None:
    a, b = stores
    big = make_layer({"big.bin": os.urandom(300_000)})   # random: gzip cannot shrink it
    await make_image(a, "envcache/stage", "s1", [big])
    upstream = parse_upstream({"url": reference_registry, "prefix": "mnt"})
    async with RegistryClient(upstream, chunk_size=64 * 1024) as client:
        first = await push_image(client, a, "envcache/stage", "s1", "mnt/stage", "s1")
        assert first.blobs_copied == 2
        await make_image(a, "envcache/env", "e1", [big, make_layer({"x": b"y"})])
        second = await push_image(client, a, "envcache/env", "e1", "mnt/env", "e1",
                                  mount_from=("mnt/stage",))
        assert second.blobs_mounted == 1          # the big layer: linked, not sent
        pulled = await pull_image(client, "mnt/env", "e1", b, "envcache/env", "e1")
    assert pulled is not None and await b.has_blob(digest_bytes(big))
