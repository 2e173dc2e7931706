"""The JSON API without builds: bad input, environments, curated ones, OpenAPI, metrics, auth.

Everything runs against a real in-process daemon on a loopback port (tests.fixtures.daemon).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from envcache.client.aio import AsyncClient
from envcache.errors import InvalidInput, NotFound
from envcache.service import views
from envcache.service.app import create_app
from envcache.service.config import Config, Token
from tests.fixtures.daemon import push_image

def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


SIMPLE = {"docker": {"base_image": "127.0.0.1:1/none/base:1"}, "environment_variables": {"A": "1"}}


async def test_bad_input_gets_4xx_json_and_the_daemon_keeps_serving(daemon) -> None:
    async with aiohttp.ClientSession() as http:
        cases = [
            ("POST", "/api/v1/ensure", b"{not json", 400, "not valid JSON"),
            ("POST", "/api/v1/ensure", b"[1, 2]", 400, "JSON object"),
            ("POST", "/api/v1/ensure", json.dumps({"definition": {"docker": {"base_imag": "x"}}}).encode(), 400,
             "docker.base_imag"),
            ("POST", "/api/v1/ensure", json.dumps({"definition": {}, "variant": "tpu"}).encode(), 400, "variant"),
            ("POST", "/api/v1/resolve", json.dumps({"nothing": 1}).encode(), 400, "either 'definition'"),
            ("GET", "/api/v1/builds/does-not-exist", None, 404, "no build"),
            ("GET", "/api/v1/builds/does-not-exist/log", None, 404, "no build"),
            ("GET", "/api/v1/images/0123", None, 404, "no image"),
            ("GET", "/api/v1/environments/nobody", None, 404, "no environment"),
            ("GET", "/api/v1/environments/nobody?version=x", None, 400, "version"),
            ("POST", "/api/v1/environments", json.dumps({"name": "../x", "definition": {}}).encode(), 400, "name"),
            ("POST", "/api/v1/warm", json.dumps({"items": [{"definition": {"pyton": {}}}]}).encode(), 400, "items[0]"),
            ("POST", "/api/v1/warm", json.dumps({"items": []}).encode(), 400, "items"),
            ("GET", "/api/v1/no-such-thing", None, 404, "no such endpoint"),
            ("POST", "/api/v1/resolve", b"x" * (2 * 1024 * 1024), 413, ""),
        ]
        for method, path, body, status, text in cases:
            async with http.request(method, daemon + path, data=body) as resp:
                payload = await resp.json()
                assert resp.status == status, (path, payload)
                assert payload["error"]["status"] == status and text in payload["error"]["message"], payload
        async with http.get(daemon + "/api/v1/health") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"


async def test_environments_register_versions_by_content_and_reserve_the_curated_prefix(daemon) -> None:
    async with AsyncClient(daemon) as client:
        first = await client.register_environment("train", SIMPLE)
        assert first["created"] and first["environment"]["version"] == 1
        same = await client.register_environment("train", {**SIMPLE, "description": "only a label changed"})
        assert not same["created"] and same["environment"]["version"] == 1
        changed = await client.register_environment("train", {**SIMPLE, "environment_variables": {"A": "2"}})
        assert changed["created"] and changed["environment"]["version"] == 2
        assert (await client.environment("train"))["version"] == 2
        assert (await client.environment("train", 1))["definition"]["environment_variables"] == {"A": "1"}
        assert [v["version"] for v in (await client.environment_versions("train"))["versions"]] == [1, 2]
        with pytest.raises(NotFound):
            await client.environment("train", 9)
        with pytest.raises(InvalidInput, match="reserved"):
            await client.register_environment("envcache-mine", SIMPLE)
        listed = {e["name"]: e for e in (await client.environments())["environments"]}
        assert {"envcache-minimal", "envcache-datascience", "train"} <= set(listed)
        assert listed["envcache-minimal"]["curated"] and listed["train"]["version"] == 2
        curated = await client.environment("envcache-datascience")
        assert curated["definition"]["variants"]["gpu"]["pip_options"]
        files = (await client.download_environment("train", 1))["files"]
        assert json.loads(files["azureml_environment.json"])["name"] == "train"


async def test_registry_credentials_are_not_stored_in_clear(daemon) -> None:
    secret = "s3cr3t-password-value"
    definition = {**SIMPLE, "docker": {"base_image": "127.0.0.1:1/none/base:1",
                                       "base_image_registry": {"address": "127.0.0.1:1", "username": "u",
                                                               "password": secret}}}
    async with AsyncClient(daemon) as client:
        await client.register_environment("private", definition)
        assert secret not in json.dumps(await client.environment("private"))
    raw = (daemon.data_dir / "envcache.db").read_bytes() + b"".join(
        p.read_bytes() for p in daemon.data_dir.glob("envcache.db-*"))
    assert secret.encode() not in raw


async def test_resolve_misses_with_404_and_a_base_it_cannot_find_is_a_clear_502(daemon) -> None:
    async with aiohttp.ClientSession() as http:
        digest, _ = await push_image(http, daemon, "base/tiny", "1")
        host = daemon.removeprefix("http://")
        definition = {"docker": {"base_image": f"{host}/base/tiny:1"}}
        async with http.post(daemon + "/api/v1/resolve", json={"definition": definition, "variant": "cpu"}) as resp:
            body = await resp.json()
            assert resp.status == 404 and body["status"] == "miss" and len(body["key"]) == 32
        async with http.post(daemon + "/api/v1/resolve", json={"definition": SIMPLE, "variant": "cpu"}) as resp:
            assert resp.status == 502 and "cannot resolve base image" in (await resp.json())["error"]["message"]
    async with AsyncClient(daemon) as client:
        assert await client.resolve(definition, "gpu") is None


async def test_openapi_documents_every_route(daemon) -> None:
    routes = {r.resource.canonical for r in daemon.app.router.routes() if r.resource.canonical.startswith("/api/v1/")}
    document = views.openapi_document("x")
    assert routes == set(document["paths"])
    async with aiohttp.ClientSession() as http, http.get(daemon + "/api/v1/openapi.json") as resp:
        assert (await resp.json())["openapi"].startswith("3.")


async def test_metrics_are_prometheus_text(daemon) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(daemon + "/metrics") as resp:
            text = await resp.text()
    for name in ("envcache_hits_total", "envcache_misses_total", "envcache_builds_total", "envcache_build_seconds",
                 "envcache_registry_bytes_served_total", "envcache_build_queue_depth"):
        assert f"# TYPE {name.removesuffix('_total')}" in text


async def test_a_non_loopback_address_without_tokens_is_refused(tmp_path: Path) -> None:
    config = Config()
    config.server.host, config.server.data_dir = "0.0.0.0", tmp_path
    with pytest.raises(InvalidInput, match="needs auth tokens"):
        await create_app(config)
    served = subprocess.run([sys.executable, "-m", "envcache.cli", "serve", "--host", "0.0.0.0", "--port", "0",
                             "--data", str(tmp_path / "data")], capture_output=True, text=True, timeout=60)
    assert served.returncode == 2 and "needs auth tokens" in served.stderr and "Traceback" not in served.stderr


async def test_tokens_guard_the_api_and_the_registry_with_scopes(make_daemon) -> None:
    config = Config()
    config.auth.tokens = [Token("reader-token-0123456789abcdef0123456789", ["read"]), Token("writer-token-0123456789abcdef0123456789", ["read", "write"])]
    url = await make_daemon(config)
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/api/v1/health") as resp:
            assert resp.status == 200  # liveness stays public
        async with http.get(url + "/api/v1/environments") as resp:
            assert resp.status == 401 and "Bearer" in resp.headers["WWW-Authenticate"]
        async with http.get(url + "/v2/") as resp:
            challenge = resp.headers["WWW-Authenticate"]
            assert resp.status == 401 and challenge.startswith('Bearer realm="http://127.0.0.1:')
            assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
        async with http.get(url + "/v2/", headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        async with http.get(url + "/v2/", headers={"Authorization": "Bearer reader-token-0123456789abcdef0123456789"}) as resp:
            assert resp.status == 200
        # The Docker token flow: Basic credentials at the realm, a Bearer token back.
        async with http.get(url + "/auth/token?service=envcache", headers={"Authorization": basic("me", "reader-token-0123456789abcdef0123456789")}) as resp:
            token = (await resp.json())["token"]
        async with http.get(url + "/v2/", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
        async with http.get(url + "/auth/token", headers={"Authorization": basic("me", "nope")}) as resp:
            assert resp.status == 401
    async with AsyncClient(url, token="reader-token-0123456789abcdef0123456789") as reader:
        assert (await reader.environments())["environments"]
        with pytest.raises(Exception, match="lacks the 'write' scope"):
            await reader.register_environment("x", SIMPLE)
    async with AsyncClient(url, token="writer-token-0123456789abcdef0123456789") as writer:
        assert (await writer.register_environment("x", SIMPLE))["created"]
