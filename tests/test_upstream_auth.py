"""The distribution bearer-token flow against a real CNCF distribution 2.8 with token auth.

The registry is configured with ``auth.token`` (realm, service, issuer, rootcertbundle) exactly
as a production Harbor/GitLab-style setup is; the test supplies the token service: a loopback
aiohttp app that checks basic credentials and signs RS256 JWTs whose ``x5c`` certificate the
registry trusts. So the registry really verifies every token our client obtains.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from envcache.store import open_store
from envcache.upstream.auth import parse_challenge
from envcache.upstream.client import RegistryClient, UpstreamError
from envcache.upstream.config import parse_upstream
from envcache.upstream.copy import pull_image, push_image
from tests.fixtures.processes import _stop_process, free_port, remove_tree, short_tempdir
from tests.fixtures.registry import DOCKER_REGISTRY, RegistryServer, _registry_answers
from tests.fixtures.upstream import image_blobs, make_image, make_layer

SERVICE, ISSUER, USER, PASSWORD = "envcache-test-registry", "envcache-test-issuer", "ci", "t0ken-pw"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenService:
    url: str
    cert_path: Path
    issued: list[list[str]]          # requested scopes per issued token


@pytest.fixture
async def token_service(tmp_path: Path) -> AsyncIterator[TokenService]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "envcache test token signer")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path = tmp_path / "token-signer.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    issued: list[list[str]] = []

    async def token(request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
        scopes = request.query.getall("scope", [])
        access = []
        for scope in scopes:
            kind, repo, actions = scope.split(":")
            access.append({"type": kind, "name": repo, "actions": actions.split(",")})
        issued.append(scopes)
        t = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [x5c]}
        claims = {"iss": ISSUER, "sub": USER, "aud": request.query.get("service"), "exp": t + 300,
                  "nbf": t - 10, "iat": t, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return web.json_response({"token": f"{signing_input}.{_b64(signature)}", "expires_in": 300})

    app = web.Application()
    app.router.add_get("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield TokenService(f"http://127.0.0.1:{runner.addresses[0][1]}/token", cert_path, issued)
    await runner.cleanup()


@pytest.fixture
def token_registry(token_service: TokenService) -> Iterator[RegistryServer]:
    """docker-registry with ``auth.token`` pointing at the test token service."""
    root = short_tempdir("ecrt-")
    port = free_port()
    config = {"version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": True}},
              "storage": {"filesystem": {"rootdirectory": str(root / "storage")}, "delete": {"enabled": True}},
              "http": {"addr": f"127.0.0.1:{port}", "secret": os.urandom(8).hex()},
              "auth": {"token": {"realm": token_service.url, "service": SERVICE, "issuer": ISSUER,
                                 "rootcertbundle": str(token_service.cert_path)}}}
    (root / "config.yml").write_text(yaml.safe_dump(config))
    log = open(root / "registry.log", "wb")
    proc = subprocess.Popen([DOCKER_REGISTRY, "serve", str(root / "config.yml")], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    server = RegistryServer(root=root, port=port, process=proc)
    deadline = time.monotonic() + 30
    while not _registry_answers(server):
        assert proc.poll() is None and time.monotonic() < deadline, (root / "registry.log").read_text()
        time.sleep(0.1)
    yield server
    _stop_process(proc, grace=10)
    remove_tree(root)


def test_challenge_parsing() -> None:
    c = parse_challenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"')
    assert c is not None and c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="x"').scheme == "basic"
    assert parse_challenge("Negotiate abc") is None


async def test_bearer_token_flow_push_mount_pull(tmp_path: Path, token_service: TokenService,
                                                 token_registry: RegistryServer) -> None:
    a, b = await open_store(tmp_path / "a"), await open_store(tmp_path / "b")
    upstream = parse_upstream({"url": token_registry.url, "prefix": "tok", "username": USER, "password": PASSWORD})
    try:
        shared = make_layer({"shared": os.urandom(256)})
        await make_image(a, "envcache/stage", "s", [shared])
        digest = await make_image(a, "envcache/env", "e-cpu", [shared, make_layer({"top": b"1"})])
        async with RegistryClient(upstream) as client:
            await push_image(client, a, "envcache/stage", "s", "tok/stage", "s")
            stats = await push_image(client, a, "envcache/env", "e-cpu", "tok/env", "e-cpu",
                                     mount_from=("tok/stage",))
            assert stats.blobs_mounted == 1          # mount needed a token for two repositories
            pulled = await pull_image(client, "tok/env", "e-cpu", b, "envcache/env", "e-cpu")
        assert pulled is not None and pulled.digest == digest
        assert await image_blobs(a, "envcache/env", "e-cpu") == await image_blobs(b, "envcache/env", "e-cpu")
        granted = [{(scope.split(":")[1], frozenset(scope.split(":")[2].split(","))) for scope in request}
                   for request in token_service.issued]
        # The mount's token covered both repositories (the registry checks pull on the source).
        assert any({("tok/env", frozenset({"pull", "push"})), ("tok/stage", frozenset({"pull"}))} <= g
                   for g in granted), token_service.issued
        # Tokens are cached per scope: far fewer token requests than registry requests.
        assert len(token_service.issued) <= 5, token_service.issued

        wrong = parse_upstream({"url": token_registry.url, "username": USER, "password": "nope"})
        async with RegistryClient(wrong) as client:
            with pytest.raises(UpstreamError, match="token endpoint .* answered 401"):
                await client.get_manifest("tok/env", "e-cpu")
    finally:
        await a.close()
        await b.close()
