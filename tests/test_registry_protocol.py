"""OCI distribution-spec v1.1 endpoints and error codes against a real in-process daemon."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

import aiohttp
import pytest
from yarl import URL

from envcache.service.config import Config
from tests.fixtures.daemon import (
    EMPTY_JSON,
    OCI_INDEX,
    OCI_MANIFEST,
    error_code,
    image_manifest,
    push_blob,
    push_image,
    sha256,
)


@pytest.fixture
async def http() -> aiohttp.ClientSession:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_ping_answers_with_api_version(daemon: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{daemon}/v2/") as resp:
        assert resp.status == 200
        assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert await resp.json() == {}


async def test_monolithic_push_then_head_get_and_ranges(daemon: str, http: aiohttp.ClientSession) -> None:
    data = os.urandom(100_000)
    digest = await push_blob(http, daemon, "team/app", data)
    async with http.head(f"{daemon}/v2/team/app/blobs/{digest}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(data))
        assert resp.headers["Docker-Content-Digest"] == digest
    async with http.get(f"{daemon}/v2/team/app/blobs/{digest}") as resp:
        assert resp.status == 200 and await resp.read() == data
        assert resp.headers["Docker-Content-Digest"] == digest
    async with http.get(f"{daemon}/v2/team/app/blobs/{digest}", headers={"Range": "bytes=10-19"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
        assert await resp.read() == data[10:20]
    async with http.get(f"{daemon}/v2/team/app/blobs/{digest}", headers={"Range": f"bytes={len(data) + 5}-"}) as resp:
        assert resp.status == 416
    # The blob was pushed to team/app only: another repository does not see it.
    async with http.get(f"{daemon}/v2/other/blobs/{digest}") as resp:
        assert resp.status == 404 and await error_code(resp) == "BLOB_UNKNOWN"


async def test_sha512_blob(daemon: str, http: aiohttp.ClientSession) -> None:
    data = b"sha512 content"
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    async with http.post(f"{daemon}/v2/r/blobs/uploads/", params={"digest": digest}, data=data) as resp:
        assert resp.status == 201
    async with http.get(f"{daemon}/v2/r/blobs/{digest}") as resp:
        assert await resp.read() == data and resp.headers["Docker-Content-Digest"] == digest
    assert daemon.store.files.path(digest).parent.parent.name == "sha512"


async def test_chunked_upload_with_status_and_range_checks(daemon: str, http: aiohttp.ClientSession) -> None:
    data = os.urandom(3000)
    async with http.post(f"{daemon}/v2/r/blobs/uploads/") as resp:
        assert resp.status == 202
        location = resp.headers["Location"]
        assert resp.headers["Docker-Upload-UUID"] in location
    url = f"{daemon}{location}"
    async with http.patch(url, data=data[:1000], headers={"Content-Range": "0-999"}) as resp:
        assert resp.status == 202 and resp.headers["Range"] == "0-999"
    # Out of order (skips bytes) and overlapping chunks are refused with 416 and the real offset.
    for bad in ("1500-1999", "500-1499"):
        chunk = data[int(bad.split("-")[0]):int(bad.split("-")[1]) + 1]
        async with http.patch(url, data=chunk, headers={"Content-Range": bad}) as resp:
            assert resp.status == 416, bad
            assert resp.headers["Range"] == "0-999"
            assert await error_code(resp) == "BLOB_UPLOAD_INVALID"
    async with http.get(url) as resp:
        assert resp.status == 204 and resp.headers["Range"] == "0-999"
    async with http.patch(url, data=data[1000:2000], headers={"Content-Range": "1000-1999"}) as resp:
        assert resp.status == 202 and resp.headers["Range"] == "0-1999"
    # The last chunk comes with the PUT.
    digest = sha256(data)
    async with http.put(url, params={"digest": digest}, data=data[2000:],
                        headers={"Content-Range": "2000-2999"}) as resp:
        assert resp.status == 201, await resp.text()
        assert resp.headers["Location"] == f"/v2/r/blobs/{digest}"
        assert resp.headers["Docker-Content-Digest"] == digest
    async with http.get(f"{daemon}/v2/r/blobs/{digest}") as resp:
        assert await resp.read() == data
    async with http.get(url) as resp:  # the session is gone once finished
        assert resp.status == 404 and await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"


async def test_streamed_patch_then_empty_put(daemon: str, http: aiohttp.ClientSession) -> None:
    data = os.urandom(2 * 1024 * 1024 + 7)

    async def stream():
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    async with http.post(f"{daemon}/v2/r/blobs/uploads/") as resp:
        url = f"{daemon}{resp.headers['Location']}"
    async with http.patch(url, data=stream()) as resp:
        assert resp.status == 202 and resp.headers["Range"] == f"0-{len(data) - 1}"
    async with http.put(url, params={"digest": sha256(data)}) as resp:
        assert resp.status == 201
    assert daemon.store.files.path(sha256(data)).read_bytes() == data


async def test_digest_mismatch_is_refused_and_stores_nothing(daemon: str, http: aiohttp.ClientSession) -> None:
    wrong = sha256(b"something else")
    async with http.post(f"{daemon}/v2/r/blobs/uploads/", params={"digest": wrong}, data=b"payload") as resp:
        assert resp.status == 400 and await error_code(resp) == "DIGEST_INVALID"
    async with http.post(f"{daemon}/v2/r/blobs/uploads/") as resp:
        url = f"{daemon}{resp.headers['Location']}"
    async with http.put(url, params={"digest": wrong}, data=b"payload") as resp:
        assert resp.status == 400 and await error_code(resp) == "DIGEST_INVALID"
    assert not await daemon.store.has_blob(wrong)
    assert not await daemon.store.has_blob(sha256(b"payload"))
    async with http.post(f"{daemon}/v2/r/blobs/uploads/", params={"digest": "sha256:abc"}, data=b"x") as resp:
        assert resp.status == 400 and await error_code(resp) == "DIGEST_INVALID"
    async with http.put(url, data=b"x") as resp:  # PUT without ?digest=
        assert resp.status in (400, 404)


async def test_wrong_size_is_refused(daemon: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{daemon}/v2/r/blobs/uploads/") as resp:
        url = f"{daemon}{resp.headers['Location']}"
    # Content-Range says 10 bytes, the body has 5.
    async with http.patch(url, data=b"12345", headers={"Content-Range": "0-9"}) as resp:
        assert resp.status == 400 and await error_code(resp) == "SIZE_INVALID"
    async with http.get(url) as resp:
        assert resp.headers["Range"] == "0-0"  # nothing was acknowledged
    assert daemon.store.files.upload_path(url.rsplit("/", 1)[1]).stat().st_size == 0


async def test_invalid_names_tags_and_digests(daemon: str, http: aiohttp.ClientSession) -> None:
    for path in ("/v2/../x/blobs/uploads/", "/v2/a/../../x/tags/list", "/v2/Upper/blobs/uploads/",
                 "/v2/a__-b/manifests/latest", "/v2/-lead/tags/list"):
        async with http.request("POST" if path.endswith("uploads/") else "GET",
                                URL(daemon + path, encoded=True)) as resp:
            assert resp.status == 400, path
            assert await error_code(resp) == "NAME_INVALID", path
    async with http.get(f"{daemon}/v2/r/blobs/sha256:XYZ") as resp:
        assert resp.status == 400 and await error_code(resp) == "DIGEST_INVALID"
    async with http.put(f"{daemon}/v2/r/manifests/.bad-tag", data=b"{}",
                        headers={"Content-Type": OCI_MANIFEST}) as resp:
        assert resp.status == 400 and await error_code(resp) == "MANIFEST_INVALID"
    # Nothing was created on disk for any of it.
    assert await daemon.store.manifests.repositories() == []


async def test_cancel_upload(daemon: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{daemon}/v2/r/blobs/uploads/") as resp:
        url = f"{daemon}{resp.headers['Location']}"
    async with http.patch(url, data=b"abc") as resp:
        assert resp.status == 202
    async with http.delete(url) as resp:
        assert resp.status == 204
    async with http.get(url) as resp:
        assert resp.status == 404 and await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"
    async with http.delete(url) as resp:
        assert resp.status == 404 and await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"
    assert list((daemon.data_dir / "uploads").iterdir()) == []


async def test_cross_repository_mount(daemon: str, http: aiohttp.ClientSession) -> None:
    digest = await push_blob(http, daemon, "src", b"shared layer")
    async with http.post(f"{daemon}/v2/dst/blobs/uploads/", params={"mount": digest, "from": "src"}) as resp:
        assert resp.status == 201
        assert resp.headers["Location"] == f"/v2/dst/blobs/{digest}"
        assert resp.headers["Docker-Content-Digest"] == digest
    # Without "from" the registry may mount from any repository.
    async with http.post(f"{daemon}/v2/third/blobs/uploads/", params={"mount": digest}) as resp:
        assert resp.status == 201
    # From a repository that does not have it: falls back to an upload session.
    async with http.post(f"{daemon}/v2/fourth/blobs/uploads/", params={"mount": digest, "from": "dst2"}) as resp:
        assert resp.status == 202 and "/v2/fourth/blobs/uploads/" in resp.headers["Location"]
    for repo in ("dst", "third"):
        async with http.get(f"{daemon}/v2/{repo}/blobs/{digest}") as resp:
            assert await resp.read() == b"shared layer"


async def test_manifest_put_get_head_byte_for_byte(daemon: str, http: aiohttp.ClientSession) -> None:
    digest, body = await push_image(http, daemon, "app", "v1")
    assert digest == sha256(body)
    for ref in ("v1", digest):
        async with http.get(f"{daemon}/v2/app/manifests/{ref}") as resp:
            assert resp.status == 200
            assert await resp.read() == body  # indent=3 whitespace kept exactly
            assert resp.headers["Content-Type"] == OCI_MANIFEST
            assert resp.headers["Docker-Content-Digest"] == digest
        async with http.head(f"{daemon}/v2/app/manifests/{ref}") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(body))
            assert resp.headers["Docker-Content-Digest"] == digest
    async with http.get(f"{daemon}/v2/app/manifests/v2") as resp:
        assert resp.status == 404 and await error_code(resp) == "MANIFEST_UNKNOWN"
    async with http.head(f"{daemon}/v2/app/manifests/v2") as resp:
        assert resp.status == 404


async def test_manifest_by_digest_and_any_media_type(daemon: str, http: aiohttp.ClientSession) -> None:
    digest, _ = await push_image(http, daemon, "app", "v1")
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}}
    ]}).encode()
    async with http.put(f"{daemon}/v2/app/manifests/{sha256(index)}", data=index,
                        headers={"Content-Type": OCI_INDEX}) as resp:
        assert resp.status == 201 and resp.headers["Docker-Content-Digest"] == sha256(index)
    # A BuildKit cache manifest list, and a docker schema2 media type, are stored as given.
    cache = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
                        "manifests": []}).encode()
    async with http.put(f"{daemon}/v2/app/manifests/buildcache", data=cache,
                        headers={"Content-Type": "application/vnd.docker.distribution.manifest.list.v2+json"}) as resp:
        assert resp.status == 201
    # Pushing under a digest that is not the body's digest is refused.
    async with http.put(f"{daemon}/v2/app/manifests/{sha256(b'other')}", data=index,
                        headers={"Content-Type": OCI_INDEX}) as resp:
        assert resp.status == 400 and await error_code(resp) == "DIGEST_INVALID"


async def test_manifest_errors(daemon: str, http: aiohttp.ClientSession) -> None:
    missing = json.dumps(image_manifest(b"never-pushed-config", [b"never-pushed-layer"])).encode()
    async with http.put(f"{daemon}/v2/app/manifests/x", data=missing, headers={"Content-Type": OCI_MANIFEST}) as resp:
        assert resp.status == 400 and await error_code(resp) == "MANIFEST_BLOB_UNKNOWN"
    async with http.put(f"{daemon}/v2/app/manifests/x", data=b"not json", headers={"Content-Type": OCI_MANIFEST}) as resp:
        assert resp.status == 400 and await error_code(resp) == "MANIFEST_INVALID"
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    async with http.put(f"{daemon}/v2/app/manifests/x", data=body, headers={"Content-Type": OCI_MANIFEST}) as resp:
        assert resp.status == 400 and await error_code(resp) == "MANIFEST_INVALID"  # mediaType contradicts


async def test_manifest_size_limit_4_mib(daemon: str, http: aiohttp.ClientSession) -> None:
    limit = 4 * 1024 * 1024

    def padded(size: int) -> bytes:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "annotations": {"pad": ""}}
        base = len(json.dumps(doc).encode())
        doc["annotations"]["pad"] = "x" * (size - base)
        out = json.dumps(doc).encode()
        assert len(out) == size
        return out

    at_limit = padded(limit)
    async with http.put(f"{daemon}/v2/big/manifests/ok", data=at_limit, headers={"Content-Type": OCI_INDEX}) as resp:
        assert resp.status == 201
    async with http.get(f"{daemon}/v2/big/manifests/ok") as resp:
        assert await resp.read() == at_limit
    async with http.put(f"{daemon}/v2/big/manifests/toobig", data=padded(limit + 1),
                        headers={"Content-Type": OCI_INDEX}) as resp:
        assert resp.status == 413 and await error_code(resp) == "SIZE_INVALID"


async def test_subject_and_referrers_with_filter(daemon: str, http: aiohttp.ClientSession) -> None:
    subject_digest, subject_body = await push_image(http, daemon, "app", "v1")
    subject = {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": len(subject_body)}
    empty = await push_blob(http, daemon, "app", b"{}")
    referrers = {}
    for artifact_type in ("application/vnd.example.sbom", "application/vnd.example.signature"):
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
               "config": {"mediaType": EMPTY_JSON, "digest": empty, "size": 2},
               "layers": [], "subject": subject, "annotations": {"kind": artifact_type}}
        body = json.dumps(doc).encode()
        async with http.put(f"{daemon}/v2/app/manifests/{sha256(body)}", data=body,
                            headers={"Content-Type": OCI_MANIFEST}) as resp:
            assert resp.status == 201
            assert resp.headers["OCI-Subject"] == subject_digest
        referrers[artifact_type] = sha256(body)
    async with http.get(f"{daemon}/v2/app/referrers/{subject_digest}") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith(OCI_INDEX)
        assert "OCI-Filters-Applied" not in resp.headers
        index = await resp.json(content_type=None)
    assert {m["digest"] for m in index["manifests"]} == set(referrers.values())
    assert all(m["annotations"]["kind"] == m["artifactType"] for m in index["manifests"])
    async with http.get(f"{daemon}/v2/app/referrers/{subject_digest}",
                        params={"artifactType": "application/vnd.example.sbom"}) as resp:
        assert resp.headers["OCI-Filters-Applied"] == "artifactType"
        index = await resp.json(content_type=None)
    assert [m["digest"] for m in index["manifests"]] == [referrers["application/vnd.example.sbom"]]
    async with http.get(f"{daemon}/v2/app/referrers/{sha256(b'nothing refers')}") as resp:
        assert resp.status == 200 and (await resp.json(content_type=None))["manifests"] == []
    async with http.get(f"{daemon}/v2/app/referrers/not-a-digest") as resp:
        assert resp.status == 400 and await error_code(resp) == "DIGEST_INVALID"


async def test_tags_list_pagination_and_catalog(daemon: str, http: aiohttp.ClientSession) -> None:
    digest, body = await push_image(http, daemon, "app", "a")
    for tag in ("d", "b", "c"):
        async with http.put(f"{daemon}/v2/app/manifests/{tag}", data=body, headers={"Content-Type": OCI_MANIFEST}) as r:
            assert r.status == 201
    async with http.get(f"{daemon}/v2/app/tags/list") as resp:
        assert await resp.json() == {"name": "app", "tags": ["a", "b", "c", "d"]}
        assert "Link" not in resp.headers
    async with http.get(f"{daemon}/v2/app/tags/list", params={"n": "2"}) as resp:
        assert (await resp.json())["tags"] == ["a", "b"]
        assert resp.headers["Link"] == '</v2/app/tags/list?n=2&last=b>; rel="next"'
    async with http.get(f"{daemon}/v2/app/tags/list", params={"n": "2", "last": "b"}) as resp:
        assert (await resp.json())["tags"] == ["c", "d"]
        assert "Link" not in resp.headers
    async with http.get(f"{daemon}/v2/app/tags/list", params={"n": "x"}) as resp:
        assert resp.status == 400
    async with http.get(f"{daemon}/v2/nope/tags/list") as resp:
        assert resp.status == 404 and await error_code(resp) == "NAME_UNKNOWN"
    await push_blob(http, daemon, "zeta/one", b"z")
    async with http.get(f"{daemon}/v2/_catalog") as resp:
        assert await resp.json() == {"repositories": ["app", "zeta/one"]}
    async with http.get(f"{daemon}/v2/_catalog", params={"n": "1"}) as resp:
        assert (await resp.json())["repositories"] == ["app"]
        assert resp.headers["Link"] == '</v2/_catalog?n=1&last=app>; rel="next"'


async def test_deletions(daemon: str, http: aiohttp.ClientSession) -> None:
    digest, body = await push_image(http, daemon, "app", "keep", layers=(b"only-layer",))
    async with http.put(f"{daemon}/v2/app/manifests/drop", data=body, headers={"Content-Type": OCI_MANIFEST}) as r:
        assert r.status == 201
    async with http.delete(f"{daemon}/v2/app/manifests/drop") as resp:
        assert resp.status == 202
    async with http.get(f"{daemon}/v2/app/manifests/drop") as resp:
        assert resp.status == 404
    async with http.get(f"{daemon}/v2/app/manifests/keep") as resp:
        assert resp.status == 200  # deleting a tag leaves the manifest and other tags
    async with http.delete(f"{daemon}/v2/app/manifests/{digest}") as resp:
        assert resp.status == 202
    for ref in ("keep", digest):
        async with http.get(f"{daemon}/v2/app/manifests/{ref}") as resp:
            assert resp.status == 404 and await error_code(resp) == "MANIFEST_UNKNOWN"
    async with http.delete(f"{daemon}/v2/app/manifests/{digest}") as resp:
        assert resp.status == 404 and await error_code(resp) == "MANIFEST_UNKNOWN"
    layer = sha256(b"only-layer")
    async with http.delete(f"{daemon}/v2/app/blobs/{layer}") as resp:
        assert resp.status == 202
    async with http.get(f"{daemon}/v2/app/blobs/{layer}") as resp:
        assert resp.status == 404 and await error_code(resp) == "BLOB_UNKNOWN"
    async with http.delete(f"{daemon}/v2/app/blobs/{layer}") as resp:
        assert resp.status == 404 and await error_code(resp) == "BLOB_UNKNOWN"


async def test_concurrent_pushes_of_one_blob(daemon: str, http: aiohttp.ClientSession) -> None:
    data = os.urandom(1024 * 1024)
    digest = sha256(data)

    async def push_session(i: int) -> int:
        async with http.post(f"{daemon}/v2/repo{i % 3}/blobs/uploads/") as resp:
            url = f"{daemon}{resp.headers['Location']}"
        async with http.patch(url, data=data) as resp:
            assert resp.status == 202
        async with http.put(url, params={"digest": digest}) as resp:
            return resp.status

    async def push_monolithic(i: int) -> int:
        async with http.post(f"{daemon}/v2/repo{i % 3}/blobs/uploads/", params={"digest": digest}, data=data) as resp:
            return resp.status

    statuses = await asyncio.gather(*(push_session(i) for i in range(6)), *(push_monolithic(i) for i in range(6)))
    assert statuses == [201] * 12
    files = [p for p in (daemon.data_dir / "blobs").rglob("*") if p.is_file()]
    assert files == [daemon.store.files.path(digest)]
    assert files[0].read_bytes() == data
    assert list((daemon.data_dir / "tmp").iterdir()) == []
    assert list((daemon.data_dir / "uploads").iterdir()) == []


async def test_upload_sessions_expire(make_daemon, http: aiohttp.ClientSession) -> None:
    config = Config()
    config.registry.upload_session_ttl = 1
    base = await make_daemon(config)
    async with http.post(f"{base}/v2/r/blobs/uploads/") as resp:
        url = f"{base}{resp.headers['Location']}"
    async with http.patch(url, data=b"partial") as resp:
        assert resp.status == 202
    await asyncio.sleep(2.5)  # the background sweep runs every second at this TTL
    assert list((base.data_dir / "uploads").iterdir()) == []
    async with http.patch(url, data=b"more") as resp:
        assert resp.status == 404 and await error_code(resp) == "BLOB_UPLOAD_UNKNOWN"
    async with http.put(url, params={"digest": sha256(b"partialmore")}) as resp:
        assert resp.status == 404


async def test_unsupported_method(daemon: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{daemon}/v2/app/tags/list") as resp:
        assert resp.status == 405 and await error_code(resp) == "UNSUPPORTED"


async def test_session_upload_finished_with_sha512(daemon: str, http: aiohttp.ClientSession) -> None:
    data = os.urandom(70_000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    async with http.post(f"{daemon}/v2/r/blobs/uploads/") as resp:
        url = f"{daemon}{resp.headers['Location']}"
    async with http.patch(url, data=data) as resp:
        assert resp.status == 202
    async with http.put(url, params={"digest": digest}) as resp:
        assert resp.status == 201 and resp.headers["Docker-Content-Digest"] == digest
    async with http.get(f"{daemon}/v2/r/blobs/{digest}") as resp:
        assert await resp.read() == data
