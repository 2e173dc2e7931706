"""Proof that the engine fixtures start real, private, working services."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable
from pathlib import Path

from tests.fixtures.engines import Buildah, Dockerd, start_dockerd
from tests.fixtures.registry import RegistryServer


def test_dockerd_answers_on_private_socket(dockerd: Dockerd) -> None:
    info = json.loads(dockerd.docker("info", "--format", "{{json .}}").stdout)
    assert info["Driver"] == dockerd.storage_driver
    assert info["DockerRootDir"] == str(dockerd.root / "data")
    assert dockerd.host == f"unix://{dockerd.root}/docker.sock"
    assert dockerd.env["DOCKER_HOST"] == dockerd.host


def test_two_dockerds_run_side_by_side(dockerd: Dockerd) -> None:
    """A second daemon (as another pytest process would start) shares nothing with ours;
    it uses vfs, the driver shared/ENGINES.md documents, so that path stays proven too."""
    other = start_dockerd(driver="vfs")
    try:
        assert other.root != dockerd.root
        containerd_socks = {d.root / "exec" / "containerd" / "containerd.sock" for d in (dockerd, other)}
        assert all(p.is_socket() for p in containerd_socks) and len(containerd_socks) == 2
        assert int((other.root / "dockerd.pid").read_text()) == other.process.pid
        assert dockerd.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
        assert other.docker("info", "--format", "{{.Driver}}").stdout.strip() == "vfs"
    finally:
        other.stop()
    assert not other.root.exists()
    assert other.process.poll() is not None
    # ours is unaffected by the other one stopping
    assert dockerd.docker("info", "--format", "{{.Driver}}").stdout.strip() == dockerd.storage_driver


def test_buildah_uses_private_storage(buildah: Buildah) -> None:
    info = json.loads(buildah.buildah("info").stdout)
    assert info["store"]["GraphRoot"] == str(buildah.storage_root)
    assert info["store"]["GraphDriverName"] == buildah.storage_driver


def test_reference_registry_serves_v2(reference_registry: str) -> None:
    with urllib.request.urlopen(f"{reference_registry}/v2/", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


def test_reference_registry_with_htpasswd_and_tls(reference_registry_factory: Callable[..., RegistryServer]) -> None:
    server: RegistryServer = reference_registry_factory(htpasswd={"alice": "s3cret"}, tls=True)
    assert server.url.startswith("https://127.0.0.1:")
    ctx = server.ssl_context()
    # without credentials: 401 with a Basic challenge, over verified TLS
    try:
        urllib.request.urlopen(f"{server.url}/v2/", timeout=5, context=ctx)
        raise AssertionError("expected 401")
    except urllib.error.HTTPError as err:
        assert err.code == 401
        assert err.headers["WWW-Authenticate"].startswith("Basic")
    req = urllib.request.Request(
        f"{server.url}/v2/", headers={"Authorization": "Basic " + b64encode(b"alice:s3cret").decode()}
    )
    with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
        assert resp.status == 200
    # an unverified client trusting only the system CAs must refuse the test certificate
    try:
        urllib.request.urlopen(f"{server.url}/v2/", timeout=5, context=ssl.create_default_context())
        raise AssertionError("expected a certificate error")
    except urllib.error.URLError as err:
        assert isinstance(err.reason, ssl.SSLCertVerificationError)
    assert Path(server.ca_cert).is_file()
