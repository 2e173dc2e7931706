"""Bad input of any kind gets a 4xx with a JSON body, never a 500: property tests and regressions.

WHY: the rule "no traceback reaches a user" is only as good as the inputs someone thought of.
Schemathesis generates requests (valid and deliberately invalid) from the daemon's own OpenAPI
document and sends them to a real daemon on a loopback port; every answer must be < 500 and every
4xx must carry ``{"error": {"status", "message"}}``. The plain tests below pin each bug the fuzzing
(and hand probes of the /v2/ registry) found, so they stay fixed even when the generator's luck
changes.

The daemon is offline: no variants (base images resolve as none) and ``build.engine = "none"``,
so nothing builds or reaches a network; a miss that would build just fails fast.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from envcache.service.config import Config
from tests.fixtures.daemon import OCI_MANIFEST, error_code, running_daemon, sha256

PIP_DEFINITION = {"python": {"conda_dependencies": {"pip_packages": ["numpy==1.26.0"]}}}


def offline_config(data_dir: Path | None = None) -> Config:
    config = Config(variants={})
    config.build.engine = "none"
    if data_dir is not None:
        config.server.data_dir = data_dir
    return config


# -- property test: the whole OpenAPI document ------------------------------------------------------

@pytest.fixture(scope="module")
def threaded_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An in-process daemon on its own event loop in a thread.

    WHY a thread: schemathesis sends requests synchronously; on the test's own event loop they
    would wait for a server that cannot run until they return.
    """
    config = offline_config(tmp_path_factory.mktemp("fuzz-data"))
    loop = asyncio.new_event_loop()
    ready, url = threading.Event(), []
    stop = asyncio.Event()

    async def serve() -> None:
        async with running_daemon(config) as base:
            url.append(str(base))
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the daemon did not start"
    yield url[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    loop.close()


def _check_answer(case: Any, status: int, content: bytes) -> None:
    where = f"{case.method} {case.formatted_path} query={case.query!r} body={str(case.body)[:300]!r}"
    assert status < 500, f"{where} -> {status}: {content[:500]!r}"
    if status >= 400:
        try:
            body = json.loads(content)
        except ValueError:
            raise AssertionError(f"{where} -> {status} without a JSON body: {content[:300]!r}") from None
        error = body.get("error") if isinstance(body, dict) else None
        assert isinstance(error, dict) and error.get("status") == status, f"{where} -> {status}: {body}"
        assert isinstance(error.get("message"), str) and error["message"], f"{where} -> {status}: {body}"


def test_openapi_operations_never_answer_5xx(threaded_daemon: str) -> None:
    """Valid and invalid generated requests for every documented operation: < 500, JSON errors."""
    schema = schemathesis.openapi.from_url(f"{threaded_daemon}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 29  # 15, 7 for private wheels and their simple index, 1 for image history, 2 to
    # pin, 4 for pipeline runs and steps
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # A frozen pipeline is a deep document: generating 25 of them takes a minute, 8 still vary it.
            examples = 8 if operation.path == "/api/v1/pipeline-runs" else 25

            @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                if case.path in ("/api/v1/builds/{id}/log", "/api/v1/pipeline-runs/{id}/log"):
                    case.query = {**(case.query or {}), "follow": "false"}  # never wait on a live build
                response = case.call(base_url=threaded_daemon, timeout=30)
                _check_answer(case, response.status_code, response.content)

            run()
    with urllib.request.urlopen(f"{threaded_daemon}/api/v1/health", timeout=10) as resp:
        assert resp.status == 200  # and the daemon is still serving


# -- regressions: the JSON API -------------------------------------------------------------------

@pytest.fixture
async def offline(make_daemon: Any) -> Any:
    return await make_daemon(offline_config())


async def _api_error(resp: aiohttp.ClientResponse, status: int, *needles: str) -> str:
    assert resp.status == status, await resp.text()
    body = await resp.json(content_type=None)
    assert body["error"]["status"] == status
    message = body["error"]["message"]
    for needle in needles:
        assert needle in message, message
    return message


async def test_version_and_limit_accept_only_ascii_integers_sqlite_can_hold(offline: str) -> None:
    """Was 500: ``"²".isdigit()`` is True but int() refuses it; 10**22 overflowed SQLite's INTEGER."""
    async with aiohttp.ClientSession() as http:
        for value in ("²", "99999999999999999999999", "9" * 5000):
            for path, field in (("/api/v1/environments/x", "version"), ("/api/v1/environments/x/download", "version"),
                                ("/api/v1/images", "limit")):
                async with http.get(f"{offline}{path}", params={field: value}) as resp:
                    await _api_error(resp, 400, field, "positive integer")
        for version in (10**30, "²", -1, 1.5):
            body = {"environment": {"name": "x", "version": version}}
            async with http.post(f"{offline}/api/v1/resolve", json=body) as resp:
                await _api_error(resp, 400, "environment.version")
        async with http.get(f"{offline}/api/v1/images", params={"limit": "3"}) as resp:
            assert resp.status == 200 and (await resp.json())["images"] == []


async def test_deeply_nested_json_is_a_400(offline: str) -> None:
    """Was 500: RecursionError from json.loads (resolve, gc) and from a document's JSON file."""
    deep = b"[" * 100_000 + b"]" * 100_000
    async with aiohttp.ClientSession() as http:
        for path in ("/api/v1/resolve", "/api/v1/ensure", "/api/v1/gc", "/api/v1/warm", "/api/v1/environments"):
            async with http.post(f"{offline}{path}", data=deep) as resp:
                await _api_error(resp, 400, "nested too deeply")
        document = {"document": {"path": "e.json", "files": {"e.json": "[" * 5000 + "]" * 5000}}}
        async with http.post(f"{offline}/api/v1/resolve", json=document) as resp:
            await _api_error(resp, 400, "nested too deeply")


async def test_lone_surrogates_are_refused_up_front(offline: str) -> None:
    """Was 500: ``"\\ud800"`` in a document's file could not be written out (UnicodeEncodeError)."""
    bodies = [
        b'{"document": {"path": "a.yml", "files": {"a.yml": "name: \\ud800"}}}',
        b'{"document": {"path": "\\udfff.yml", "files": {"\\udfff.yml": "name: x"}}}',
        b'{"name": "ok", "definition": {"description": "\\uD83D"}}',
    ]
    async with aiohttp.ClientSession() as http:
        for raw in bodies:
            path = "/api/v1/environments" if b'"name": "ok"' in raw else "/api/v1/resolve"
            async with http.post(f"{offline}{path}", data=raw) as resp:
                await _api_error(resp, 400, "surrogate")
        # A proper pair spelled as escapes is fine.
        good = b'{"definition": {"description": "\\ud83d\\ude00"}, "variant": "cpu"}'
        async with http.post(f"{offline}/api/v1/resolve", data=good) as resp:
            assert resp.status == 404 and (await resp.json())["status"] == "miss"


async def test_recursive_and_exploding_yaml_aliases_are_refused_without_hanging(offline: str) -> None:
    """Was a hang: ``a: &a [*a]`` made the document check walk a cycle forever on the event loop."""
    laughs = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))
    cases = [("a: &a [*a]\n", "recursive alias"), ("dependencies: &d [python, *d]\n", "recursive alias"),
             (laughs, "expand to more than")]
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for text, needle in cases:
            body = {"document": {"path": "env.yml", "files": {"env.yml": text}}}
            async with http.post(f"{offline}/api/v1/resolve", json=body) as resp:
                await _api_error(resp, 400, "document.files['env.yml']", needle)
        # Plain (acyclic, small) aliases still load.
        shared = "name: &n demo\ndependencies:\n  - &py python=3.11\n  - pip: [numpy==1.26.0]\nprefix: *n\n"
        body = {"document": {"path": "env.yml", "files": {"env.yml": shared}}, "variant": "cpu"}
        async with http.post(f"{offline}/api/v1/resolve", json=body) as resp:
            assert resp.status == 404 and (await resp.json())["status"] == "miss", await resp.text()
        async with http.get(f"{offline}/api/v1/health") as resp:
            assert resp.status == 200


async def test_a_file_name_the_file_system_refuses_is_a_400_naming_it(offline: str) -> None:
    """Was 500: a 300-byte name component raised OSError (File name too long) while writing it."""
    long_name = "c/" + "b" * 300
    body = {"document": {"path": "a.txt", "files": {"a.txt": "numpy\n", long_name: "x"}}}
    async with aiohttp.ClientSession() as http, http.post(f"{offline}/api/v1/resolve", json=body) as resp:
        await _api_error(resp, 400, "document.files['c/bbb", "cannot be written")


async def _raw_post(base: str, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One HTTP/1.1 request written in a single send, answer read to the end.

    WHY not aiohttp's client: when the body arrives after the handler has started reading, aiohttp's
    server drops the connection on an undecodable body before an answer can go out; written at once
    (as small requests from real clients are) the handler's answer is what the client sees.
    """
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", "Content-Length": str(len(body)),
                                                 "Connection": "close", **headers}.items())
    writer.write(f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode() + body)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_an_undecodable_body_is_a_400(offline: str) -> None:
    """Was 500: a body declared gzip that is not gzip raised RequestPayloadError in the handler."""
    for path in ("/api/v1/resolve", "/api/v1/gc"):
        status, body = await _raw_post(offline, "POST", path, b"not gzip at all",
                                       {"Content-Encoding": "gzip", "Content-Type": "application/json"})
        assert status == 400, body
        assert "could not be read" in json.loads(body)["error"]["message"]
    # A real gzip body is read as usual.
    packed = gzip.compress(json.dumps({"definition": PIP_DEFINITION, "variant": "cpu"}).encode())
    async with aiohttp.ClientSession() as http, http.post(
            f"{offline}/api/v1/resolve", data=packed,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}) as resp:
        assert resp.status == 404 and (await resp.json())["status"] == "miss"


# -- regressions: the /v2/ registry -----------------------------------------------------------------

async def test_registry_pagination_n_accepts_only_ascii_digits(offline: str) -> None:
    """Was a plain-text 500: ``n=²`` passed isdigit() and failed int()."""
    async with aiohttp.ClientSession() as http:
        for path in ("/v2/_catalog", "/v2/a/tags/list"):
            async with http.get(f"{offline}{path}", params={"n": "²"}) as resp:
                assert resp.status == 400
                assert await error_code(resp) == "PAGINATION_NUMBER_INVALID"


async def test_registry_refuses_manifests_the_index_cannot_walk(offline: str) -> None:
    """Were plain-text 500s: JSON nested past the recursion limit, and ``layers``/``manifests`` not lists."""
    bodies = [b"[" * 100_000 + b"]" * 100_000, b'{"schemaVersion": 2, "layers": 5}',
              b'{"schemaVersion": 2, "layers": {"a": 1}}', b'{"schemaVersion": 2, "manifests": 7}']
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            async with http.put(f"{offline}/v2/a/manifests/latest", data=body,
                                headers={"Content-Type": OCI_MANIFEST}) as resp:
                assert resp.status == 400, await resp.text()
                assert await error_code(resp) == "MANIFEST_INVALID"
        async with http.get(f"{offline}/v2/a/manifests/latest") as resp:
            assert resp.status == 404  # nothing was stored


async def test_registry_bad_content_range_or_encoding_is_a_400_and_the_upload_goes_on(offline: str) -> None:
    """Were 500s: a 5000-digit Content-Range end (int() refuses it) and a body that is not the gzip it
    claims. Both now answer the OCI error body, and the session still accepts the real chunk."""
    data = b"hello, registry"
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.post(f"{offline}/v2/up/blobs/uploads/") as resp:
            assert resp.status == 202
            location = offline + resp.headers["Location"]
        async with http.patch(location, data=b"garbage", headers={"Content-Range": "0-" + "9" * 5000}) as resp:
            assert resp.status == 400, await resp.text()
            assert await error_code(resp) == "BLOB_UPLOAD_INVALID"
        status, body = await _raw_post(offline, "PATCH", location.removeprefix(offline), b"garbage",
                                       {"Content-Encoding": "gzip"})
        assert status == 400 and json.loads(body)["errors"][0]["code"] == "BLOB_UPLOAD_INVALID", body
        async with http.patch(location, data=data, headers={"Content-Range": f"0-{len(data) - 1}"}) as resp:
            assert resp.status == 202, await resp.text()
            assert resp.headers["Range"] == f"0-{len(data) - 1}"
        async with http.put(location, params={"digest": sha256(data)}) as resp:
            assert resp.status == 201, await resp.text()
        async with http.get(f"{offline}/v2/up/blobs/{sha256(data)}") as resp:
            assert resp.status == 200 and await resp.read() == data
