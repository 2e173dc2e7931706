"""Names, tags and digests are matched in full (issue 13, item 8), and ``OCI-Tag`` answers a push
by digest with ``?tag=`` (item 10) — against a real daemon over real sockets.

``$`` in a Python regex also matches before a final newline, so ``?tag=evil%0A`` once stored a
tag no client could name again.
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from yarl import URL

from tests.fixtures.daemon import OCI_MANIFEST, error_code, image_manifest, push_blob, push_image, sha256

CONFIG = b'{"architecture":"amd64","os":"linux"}'


async def _manifest(http: aiohttp.ClientSession, base: str, repo: str) -> tuple[bytes, str]:
    for blob in (CONFIG, b"layer"):
        await push_blob(http, base, repo, blob)
    body = json.dumps(image_manifest(CONFIG, [b"layer"])).encode()
    return body, sha256(body)


def _url(base: str, path: str) -> URL:
    return URL(base + path, encoded=True)  # sent as written: %0A stays a newline on the server


@pytest.mark.parametrize("suffix", ["%0A", "%0D%0A", "%0A%0A", "%00", "%20", "%09"])
async def test_trailing_control_characters_are_refused_everywhere(daemon, suffix: str) -> None:
    async with aiohttp.ClientSession() as http:
        body, digest = await _manifest(http, daemon, "team/app")
        put = {"data": body, "headers": {"Content-Type": OCI_MANIFEST}}
        cases = [
            ("PUT", f"/v2/team/app/manifests/{digest}?tag=evil{suffix}", put, 400),
            ("PUT", f"/v2/team/app/manifests/evil{suffix}", put, 400),
            ("PUT", f"/v2/team/app{suffix}/manifests/v1", put, 400),
            ("GET", f"/v2/team/app/manifests/{digest}{suffix}", {}, 400),
            ("GET", f"/v2/team/app/blobs/{sha256(b'layer')}{suffix}", {}, 400),
            ("POST", f"/v2/team/app/blobs/uploads/?mount={sha256(b'layer')}{suffix}&from=team/app", {}, 400),
            ("POST", f"/v2/other/blobs/uploads/?mount={sha256(b'layer')}&from=team/app{suffix}", {}, 400),
            ("POST", f"/v2/team/app/blobs/uploads/?digest={sha256(b'x')}{suffix}", {"data": b"x"}, 400),
            ("GET", f"/v2/team/app/tags/list?n=5{suffix}", {}, 400),
            ("GET", f"/v2/team/app/tags/list{suffix}", {}, 404),
        ]
        for method, path, kwargs, status in cases:
            async with http.request(method, _url(daemon, path), **kwargs) as resp:
                assert resp.status == status, (method, path, resp.status, await resp.text())
                assert await error_code(resp)
        async with http.get(_url(daemon, "/v2/team/app/tags/list")) as resp:
            assert resp.status == 404 or (await resp.json())["tags"] == []  # nothing was tagged


async def test_environment_versions_are_matched_in_full(daemon) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{daemon}/api/v1/resolve", json={"environment": {"name": "envcache-minimal",
                                                                                "version": "1\n"}}) as resp:
            assert resp.status == 400 and "environment.version" in (await resp.json())["error"]["message"]
        async with http.get(_url(daemon, "/api/v1/environments/envcache-minimal?version=1%0A")) as resp:
            assert resp.status == 400


async def test_push_by_digest_answers_oci_tag_for_each_tag(daemon) -> None:
    async with aiohttp.ClientSession() as http:
        body, digest = await _manifest(http, daemon, "team/app")
        async with http.put(f"{daemon}/v2/team/app/manifests/{digest}?tag=v1&tag=latest&tag=v1.0.0", data=body,
                            headers={"Content-Type": OCI_MANIFEST}) as resp:
            assert resp.status == 201, await resp.text()
            assert resp.headers.getall("OCI-Tag") == ["v1", "latest", "v1.0.0"]
        async with http.get(f"{daemon}/v2/team/app/tags/list") as resp:
            assert sorted((await resp.json())["tags"]) == ["latest", "v1", "v1.0.0"]
        # A push by tag, or by digest without ?tag=, names no extra tags.
        _, by_tag = await push_image(http, daemon, "team/app", "v2")
        async with http.put(f"{daemon}/v2/team/app/manifests/{digest}", data=body,
                            headers={"Content-Type": OCI_MANIFEST}) as resp:
            assert resp.status == 201 and "OCI-Tag" not in resp.headers
