"""End to end through the daemons' ``/api/v1/ensure``: two daemons sharing one upstream.

Daemon A has an engine (the session's dockerd): it builds and pushes. Daemon B has none
(``engine = "none"``): its only way to answer is to pull, so ``"status": "pulled"`` proves it
never touched an engine. The base image comes from a plain origin registry on loopback (as a
public base would), the shared tier is a separate registry with htpasswd over TLS — or another
envcache daemon with tokens.
"""

from __future__ import annotations

import json
import os
from typing import Any

import aiohttp
import pytest

from envcache.service.config import AuthConfig, Config, Token
from envcache.store import Store
from envcache.upstream.config import parse_upstream
from envcache.service.daemon import DAEMON
from tests.fixtures.engines import Dockerd, skopeo
from tests.fixtures.oci_images import OciImage
from tests.fixtures.processes import free_port
from tests.fixtures.upstream import ensure_and_log


@pytest.fixture(scope="module")
def origin_base(reference_registry: str, busybox_oci_layout: OciImage) -> str:
    """The busybox test image published on a plain origin registry; returns its reference."""
    host = reference_registry.removeprefix("http://")
    ref = f"{host}/base/busybox:upstream-e2e"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{busybox_oci_layout.layout}:{busybox_oci_layout.tag}",
           f"docker://{ref}")
    return ref


def _config(*, engine: str, upstreams: list[dict[str, Any]], dockerd: Dockerd | None = None,
            tokens: list[Token] | None = None, compression: str = "gzip") -> Config:
    config = Config()
    config.build.engine = engine
    if dockerd is not None:
        config.build.docker_host = dockerd.host
    config.build.compression = compression
    config.upstreams = [parse_upstream(u) for u in upstreams]
    if tokens:
        config.auth = AuthConfig(tokens=tokens)
    return config




async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as resp:
            return await resp.text()


async def _layers(store: Store, repo: str, digest: str) -> list[str]:
    doc = json.loads((await store.get_manifest(repo, digest)).body)
    if "manifests" in doc:
        doc = json.loads((await store.get_manifest(repo, doc["manifests"][0]["digest"])).body)
    return [layer["digest"] for layer in doc["layers"]]


def _definition(origin_base: str, marker: str) -> dict[str, Any]:
    return {"docker": {"base_dockerfile": f"FROM {origin_base}\nRUN echo {marker} > /marker"}}


async def _share(make_daemon, dockerd: Dockerd, origin_base: str, shared_a: dict, shared_b: dict,
                 token: str | None = None) -> None:
    daemon_a = await make_daemon(_config(engine="docker", dockerd=dockerd, upstreams=[shared_a]))
    daemon_b = await make_daemon(_config(engine="none", upstreams=[shared_b]))
    definition = _definition(origin_base, os.urandom(8).hex())

    built = await ensure_and_log(daemon_a, definition)
    assert built["status"] == "built", built
    await daemon_a.app[DAEMON].upstream.pushes.drain(timeout=120)
    pushes = (await daemon_a.app[DAEMON].upstream.status())["pushes"]
    assert pushes["counts"]["done"] >= 1 and pushes["counts"]["failed"] == 0, pushes

    pulled = await ensure_and_log(daemon_b, definition)
    # Same definition, same base → same image key on both machines (else B could never hit).
    assert pulled.get("build", {}).get("key") == built["image"]["key"], (built, pulled)
    assert pulled["status"] == "pulled", pulled.get("log", pulled)    # engine "none": no build possible
    assert pulled["image"]["digest"] == built["image"]["digest"]
    assert await _layers(daemon_a.store, "envcache/env", built["image"]["digest"]) == \
        await _layers(daemon_b.store, "envcache/env", pulled["image"]["digest"])
    hit = await ensure_and_log(daemon_b, definition)
    assert hit["status"] == "hit"
    # Visible in metrics: B's pull, A's finished pushes.
    assert 'envcache_upstream_pulls_total{result="hit"} 1.0' in await _metrics(daemon_b)
    assert 'envcache_upstream_pushes{state="failed"} 0.0' in await _metrics(daemon_a)
    assert f'envcache_upstream_pushes{{state="done"}} {float(pushes["counts"]["done"])}' in await _metrics(daemon_a)


@pytest.mark.engine
async def test_two_daemons_share_a_tls_htpasswd_distribution(make_daemon, dockerd: Dockerd, origin_base: str,
                                                            reference_registry_factory) -> None:
    shared = reference_registry_factory(htpasswd={"ci": "ci-pw", "laptop": "laptop-pw"}, tls=True)
    common = {"url": shared.url, "prefix": "team/envcache", "ca_file": str(shared.ca_cert)}
    await _share(make_daemon, dockerd, origin_base,
                 {**common, "username": "ci", "password": "ci-pw"},
                 {**common, "mode": "pull", "username": "laptop", "password": "laptop-pw"})


@pytest.mark.engine
async def test_two_daemons_share_an_envcache_daemon(make_daemon, dockerd: Dockerd, origin_base: str) -> None:
    hub = await make_daemon(_config(engine="none", upstreams=[], tokens=[
        Token(token="ci-token-0123456789abcdef0123456789", scopes=["read", "write"]), Token(token="laptop-token-0123456789abcdef0123456789", scopes=["read"])]))
    await _share(make_daemon, dockerd, origin_base,
                 {"url": str(hub), "prefix": "team", "token": "ci-token-0123456789abcdef0123456789"},
                 {"url": str(hub), "prefix": "team", "mode": "pull", "token": "laptop-token-0123456789abcdef0123456789"})


@pytest.mark.engine
async def test_broken_upstreams_fall_back_to_building(make_daemon, dockerd: Dockerd, origin_base: str,
                                                      stalled_server: str, garbage_registry) -> None:
    garbage_url, _ = garbage_registry
    down = f"http://127.0.0.1:{free_port()}"
    daemon = await make_daemon(_config(engine="docker", dockerd=dockerd, upstreams=[
        {"url": down, "mode": "pull", "timeout": 2},
        {"url": stalled_server, "mode": "pull", "timeout": 1},
        {"url": garbage_url, "mode": "pull", "prefix": "", "timeout": 2},
    ]))
    before = {p.name for p in (daemon.data_dir / "blobs").rglob("*") if p.is_file()}
    answer = await ensure_and_log(daemon, _definition(origin_base, os.urandom(8).hex()))
    assert answer["status"] == "built", answer
    log = answer["log"]
    assert "cannot connect" in log and "timed out" in log and "falling back" in log
    errors = (await daemon.app[DAEMON].upstream.status())["last_errors"]
    # The image, then each stage key, was asked of every upstream; every one failed, reported.
    for url in (down, stalled_server, garbage_url):
        assert any(f"from {url}:" in error for error in errors), (url, errors)
    metrics = await _metrics(daemon)
    assert 'envcache_upstream_pulls_total{result="miss"} 1.0' in metrics
    assert f'envcache_upstream_pulls_total{{result="error"}} {float(len(errors))}' in metrics
    # Every blob file in the store hashes to its name: nothing unverified landed.
    import hashlib
    for path in (daemon.data_dir / "blobs" / "sha256").rglob("*"):
        if path.is_file() and path.name not in before:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name


@pytest.mark.engine
async def test_shared_prefix_is_pulled_and_only_the_rest_built(make_daemon, dockerd: Dockerd, origin_base: str,
                                                              reference_registry_factory) -> None:
    shared = reference_registry_factory()
    up = {"url": shared.url, "prefix": "prefix"}
    daemon_a = await make_daemon(_config(engine="docker", dockerd=dockerd, upstreams=[up]))
    marker = os.urandom(8).hex()
    first = {**_definition(origin_base, marker), "environment_variables": {"FLAVOUR": "one"}}
    built = await ensure_and_log(daemon_a, first)
    assert built["status"] == "built", built.get("log", built)
    await daemon_a.app[DAEMON].upstream.pushes.drain(timeout=120)
    stage_tags = await daemon_a.store.manifests.tags("envcache/stage")
    assert len(stage_tags) == 1             # the base (Dockerfile); the config stage is no engine stage
    # Machine B's engine has never built these stages: drop their tags from the shared dockerd.
    for key in stage_tags:
        dockerd.docker("rmi", f"envcache-stage:{key}")

    daemon_b = await make_daemon(_config(engine="docker", dockerd=dockerd, upstreams=[{**up, "mode": "pull"}]))
    second = {**_definition(origin_base, marker), "environment_variables": {"FLAVOUR": "two"}}
    answer = await ensure_and_log(daemon_b, second)
    assert answer["status"] == "built", answer.get("log", answer)
    log = answer["log"]
    base_key = next(k for k in stage_tags if f"stage base {k}" in built["log"])
    assert f"upstream: pulled {shared.url}/prefix/stage:{base_key}" in log
    assert f"stage base {base_key}: stored in envcache's registry" in log
    # Only the configuration was left, which is written from the stored stage: B's engine never
    # had to build, or even load, anything.
    assert ": building" not in log and f"stage {base_key}: loaded into" not in log, log
    assert dockerd.docker("image", "inspect", f"envcache-stage:{base_key}", check=False).returncode != 0
    layers_a = await _layers(daemon_a.store, "envcache/env", built["image"]["digest"])
    layers_b = await _layers(daemon_b.store, "envcache/env", answer["image"]["digest"])
    # The config stage adds no layer: B's image is A's layers, from the pulled base stage.
    assert layers_b == layers_a and answer["image"]["key"] != built["image"]["key"]


@pytest.mark.engine
async def test_an_image_pulled_in_another_compression_is_answered_in_the_daemons(
        make_daemon, dockerd: Dockerd, origin_base: str, reference_registry_factory) -> None:
    """A zstd fleet's upstream, a daemon serving gzip (the default): what it pulled is re-stored
    gzip before it answers — same config, same lock — never handed out as zstd."""
    shared = reference_registry_factory()
    upstream = {"url": shared.url, "prefix": "team/envcache"}
    daemon_a = await make_daemon(_config(engine="docker", dockerd=dockerd, upstreams=[upstream], compression="zstd"))
    daemon_b = await make_daemon(_config(engine="none", upstreams=[{**upstream, "mode": "pull"}]))
    definition = _definition(origin_base, os.urandom(8).hex())
    built = await ensure_and_log(daemon_a, definition)
    assert built["status"] == "built", built
    await daemon_a.app[DAEMON].upstream.pushes.drain(timeout=120)

    pulled = await ensure_and_log(daemon_b, definition)
    assert pulled["status"] == "pulled", pulled.get("log", pulled)
    assert "the pulled image is stored zstd; this daemon serves gzip" in pulled["log"]
    zstd = json.loads((await daemon_a.store.get_manifest("envcache/env", built["image"]["digest"])).body)
    gzip = json.loads((await daemon_b.store.get_manifest("envcache/env", pulled["image"]["digest"])).body)
    assert {layer["mediaType"].rsplit("+", 1)[1] for layer in zstd["layers"]} == {"zstd"}
    assert {layer["mediaType"].rsplit("+", 1)[1] for layer in gzip["layers"]} == {"gzip"}
    assert gzip["config"] == zstd["config"] and pulled["image"]["lock"] == built["image"]["lock"]
    assert (await ensure_and_log(daemon_b, definition))["status"] == "hit"
