"""The base image registry address, end to end: it says where the base comes from, and the
definition's login gets it.

Two private registries (CNCF distribution behind htpasswd and TLS from a test CA) hold an image
under the same path, ``team/base:1.0``, with different content. Definitions that differ only in
``docker.base_image_registry.address`` must resolve, pull and build on their own registry's image,
logging in with the definition's username and password — which never show up in a log, an answer
or the store. The daemon trusts the test CA the way a machine trusts a private CA: through the
system's bundle (``SSL_CERT_FILE``); dockerd has neither the CA nor the credentials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from envcache.service.config import Config
from envcache.upstream.config import parse_upstream
from tests.fixtures.bases import Rootfs
from tests.fixtures.engines import Buildah
from tests.fixtures.oci_images import make_tar, push_oci_image, write_oci_layout
from tests.fixtures.registry import RegistryServer
from tests.fixtures.upstream import ensure_and_log

pytestmark = pytest.mark.engine

USER = "team-reader"
PASSWORDS = {"one": "first-s3cret-pw", "two": "second-s3cret-pw"}


def engine_config(engine: str, request: pytest.FixtureRequest, upstreams: list[dict[str, Any]] | None = None) -> Config:
    """A daemon config building with the session's dockerd or buildah storage (neither has the
    test CA or any registry credentials)."""
    config = Config()
    config.build.engine, config.build.compression = engine, "gzip"
    if engine == "docker":
        config.build.docker_host = request.getfixturevalue("dockerd").host
    else:
        buildah: Buildah = request.getfixturevalue("buildah")
        config.build.buildah_root, config.build.buildah_runroot = str(buildah.storage_root), str(buildah.run_root)
        config.build.buildah_storage_driver = buildah.storage_driver
    config.upstreams = [parse_upstream(u) for u in upstreams or []]
    return config


def definition(registry: RegistryServer, password: str | None, base: str = "team/base:1.0") -> dict[str, Any]:
    login = {"address": registry.host, "username": USER, "password": password}
    return {"docker": {"base_image": base, "base_image_registry": login},
            "environment_variables": {"ENVCACHE_TEST": "base-registry"}}


@pytest.fixture
def registries(reference_registry_factory, busybox_rootfs: Rootfs, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[RegistryServer, Any]]:
    """``{"one": (registry, image), "two": …}``: ``team/base:1.0`` on each, different content."""
    found = {}
    for name, password in PASSWORDS.items():
        server = reference_registry_factory(htpasswd={USER: password}, tls=True)
        image = write_oci_layout(tmp_path / name, [busybox_rootfs.tar, make_tar({"etc/registry": f"{name}\n"})],
                                 config={"Cmd": ["/bin/sh"]})
        certs = tmp_path / f"{name}-certs"          # the CA alone: a key beside it reads as a client cert
        certs.mkdir()
        (certs / "ca.crt").write_bytes(server.ca_cert.read_bytes())
        push_oci_image(image, f"{server.host}/team/base:1.0", tls_verify=True, creds=f"{USER}:{password}",
                       cert_dir=certs)
        found[name] = (server, image)
    bundle = tmp_path / "trusted.pem"
    bundle.write_bytes(b"".join(server.ca_cert.read_bytes() for server, _ in found.values()))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    return found


@pytest.mark.parametrize("engine", ["docker", "buildah"])
async def test_the_address_picks_the_registry_and_the_login_pulls_from_it(make_daemon, engine: str, request,
                                                                        registries) -> None:
    daemon = await make_daemon(engine_config(engine, request))
    answers = {}
    for name, (server, _image) in registries.items():
        answers[name] = await ensure_and_log(daemon, definition(server, PASSWORDS[name]))
        assert answers[name].get("status") == "built", answers[name]
    one, two = answers["one"]["image"], answers["two"]["image"]
    print("base digests:", one["base_digest"], two["base_digest"])
    # Same base path, two registries: two keys, each built on its own registry's image.
    assert one["key"] != two["key"]
    assert one["base_digest"] == registries["one"][1].config_digest
    assert two["base_digest"] == registries["two"][1].config_digest
    for name, answer in answers.items():
        server = registries[name][0]
        assert any(f"base {server.host}/team/base:1.0: {how} {engine} from envcache's registry" in answer["log"]
                   for how in ("loaded into", "found by id in"))
    # The passwords are nowhere: not in the logs, the answers, the build records or the database.
    dump = json.dumps(answers) + daemon.data_dir.joinpath("envcache.db").read_bytes().decode("latin-1")
    assert not any(password in dump for password in PASSWORDS.values())

    # A digest-pinned base cannot be loaded under its name: the engine pulls it itself, with the
    # definition's login (the engine has no credentials of its own).
    server, image = registries["two"]
    pinned = definition(server, PASSWORDS["two"], f"team/base@{image.manifest_digest}")
    answer = await ensure_and_log(daemon, pinned)
    assert answer["status"] == "built", answer
    assert f"pulling {server.host}/team/base@{image.manifest_digest}" in answer["log"]
    assert answer["image"]["base_digest"] == image.config_digest
    assert PASSWORDS["two"] not in answer["log"]


async def test_without_the_login_the_base_is_refused_and_the_config_can_supply_it(make_daemon, request,
                                                                                registries) -> None:
    server, image = registries["one"]
    fresh = await make_daemon(engine_config("docker", request))
    refused = await ensure_and_log(fresh, definition(server, None))
    assert refused["http_status"] == 502, refused
    assert f"cannot resolve base image {server.host}/team/base:1.0" in refused["error"]["message"]

    # A registered environment is stored without its password; re-ensuring it logs in with the
    # daemon's [[upstreams]] entry for that registry host instead.
    configured = await make_daemon(engine_config("docker", request, [{
        "url": server.url, "mode": "pull", "prefix": "shared", "username": USER, "password": PASSWORDS["one"],
        "ca_file": str(server.ca_cert)}]))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{configured}/api/v1/environments",
                             json={"name": "private-base", "definition": definition(server, PASSWORDS["one"])}) as resp:
            registered = await resp.json()
            assert resp.status in (200, 201), registered
        assert registered["environment"]["definition"]["docker"]["base_image_registry"]["password"] is None
        async with http.post(f"{configured}/api/v1/ensure", json={"environment": {"name": "private-base"},
                                                                  "variant": "cpu", "wait": True}) as resp:
            answer = await resp.json()
    assert answer["status"] == "built", answer
    assert answer["image"]["base_digest"] == image.config_digest
