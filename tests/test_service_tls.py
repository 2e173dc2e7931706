"""TLS on the daemon's own port (issue 13, item 9): ``docker login`` + ``docker pull`` and skopeo
with a test CA, against a real daemon; a bad certificate setting is a clear config error.

The daemon runs in-process, so every blocking client runs in a thread (the daemon answers on
this test's event loop).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from envcache.service.config import Config, Token
from tests.fixtures.engines import SKOPEO
from tests.fixtures.processes import run
from tests.fixtures.registry import make_tls_certificate

TOKEN = "tls-test-token-0123456789abcdef0123456789"


@pytest.fixture
async def tls_daemon(make_daemon, tmp_path: Path):
    ca, cert, key = make_tls_certificate(tmp_path / "tls")
    config = Config()
    config.server.tls_certificate, config.server.tls_key = str(cert), str(key)
    config.auth.tokens = [Token(TOKEN, ["read", "write"])]
    url = await make_daemon(config)
    url.ca = ca
    return url


async def test_clients_verify_the_daemons_certificate(tls_daemon) -> None:
    assert tls_daemon.startswith("https://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(tls_daemon.ca))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{tls_daemon}/api/v1/health", ssl=trusting) as resp:
            assert resp.status == 200
        async with http.get(f"{tls_daemon}/v2/", ssl=trusting) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith(
                f'Bearer realm="https://{tls_daemon.host}/auth/token"')
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # the system CAs do not know it
            async with http.get(f"{tls_daemon}/api/v1/health", ssl=ssl.create_default_context()):
                pass
        with pytest.raises(aiohttp.ClientError):  # and nothing is served in clear text on that port
            async with http.get(tls_daemon.replace("https://", "http://") + "/api/v1/health"):
                pass


async def test_skopeo_and_docker_login_pull_over_tls(tls_daemon, dockerd, busybox_oci_layout, tmp_path: Path) -> None:
    image = f"{tls_daemon.host}/base/busybox:1"
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(tls_daemon.ca.read_bytes())

    def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([SKOPEO, *args], check=check, timeout=300)

    await asyncio.to_thread(skopeo, "copy", "--dest-tls-verify=true", "--dest-cert-dir", str(certs),
                            "--dest-creds", f"me:{TOKEN}", busybox_oci_layout.ref, f"docker://{image}")
    inspected = await asyncio.to_thread(skopeo, "inspect", "--tls-verify=true", "--cert-dir", str(certs),
                                        "--creds", f"me:{TOKEN}", f"docker://{image}")
    assert json.loads(inspected.stdout)["Digest"].startswith("sha256:")
    unverified = await asyncio.to_thread(skopeo, "inspect", "--tls-verify=true", "--creds", f"me:{TOKEN}",
                                         f"docker://{image}", check=False)
    assert unverified.returncode != 0 and "certificate" in unverified.stderr.lower()

    # Docker: login (the token flow's realm is https on the same port), pull, logout. The port
    # speaks only TLS, so a fall-back to plain HTTP could not have succeeded.
    login = await asyncio.to_thread(dockerd.docker, "login", tls_daemon.host, "-u", "me", "--password-stdin",
                                    input=TOKEN)
    assert "Login Succeeded" in login.stdout
    try:
        await asyncio.to_thread(dockerd.docker, "pull", image)
        inspected = await asyncio.to_thread(dockerd.docker, "image", "inspect", "--format", "{{.Id}}", image)
        assert inspected.stdout.strip().startswith("sha256:")
    finally:
        await asyncio.to_thread(dockerd.docker, "logout", tls_daemon.host)
        await asyncio.to_thread(dockerd.docker, "rmi", "-f", image, check=False)


@pytest.mark.parametrize("setting, message", [
    ({"tls_certificate": "/nonexistent/cert.pem", "tls_key": "/nonexistent/key.pem"}, "no such file"),
    ({"tls_certificate": "CERT"}, "go together"),
    ({"tls_certificate": "KEY", "tls_key": "CERT"}, "cannot load"),
])
def test_tls_settings_errors_are_clear(tmp_path: Path, setting: dict[str, str], message: str) -> None:
    _, cert, key = make_tls_certificate(tmp_path / "tls")
    lines = [f"{name} = {json.dumps(str({'CERT': cert, 'KEY': key}.get(value, value)))}" for name, value in setting.items()]
    config = tmp_path / "envcache.toml"
    config.write_text("[server]\n" + "\n".join(lines) + "\n")
    data = tmp_path / "data"
    result = subprocess.run([sys.executable, "-m", "envcache.cli", "serve", "--config", str(config), "--data",
                             str(data), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result
    assert not data.exists()
