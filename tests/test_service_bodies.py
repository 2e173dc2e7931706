"""Request bodies arrive in pieces (issue 13, items 4 and 11): they are read to the end, with the
size limit, whatever the pieces look like.

The daemon used to read a JSON body with one ``content.read(MAX + 1)``, which returns whatever
the first network read brought: any body over ~512 KB on loopback, a 4 KB body sent in two
writes, and the real CLI behind a proxy that forwards 1,448-byte segments (one Ethernet MSS)
were cut short and refused as invalid JSON. A chunked body over the limit must be 413 like one
with a Content-Length.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from envcache.service.requests import MAX_BODY
from tests.fixtures.abuse import SEGMENT, SplittingProxy

@pytest.fixture
async def proxy(offline_daemon) -> AsyncIterator[SplittingProxy]:
    async with SplittingProxy(int(offline_daemon.rsplit(":", 1)[1])) as running:
        yield running


@pytest.fixture
async def offline_daemon(make_daemon):
    """A daemon with no default variant base images: definitions without a base resolve offline."""
    from envcache.service.config import Config

    return await make_daemon(Config(variants={}))


REQUIREMENTS = "".join(f"package-number-{i:03d}>=1.{i}  # pinned for the reason number {i}\n" for i in range(32))


async def test_the_real_cli_through_a_splitting_proxy(proxy, tmp_path: Path) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text(REQUIREMENTS)
    assert len(REQUIREMENTS) > SEGMENT
    for _ in range(8):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "envcache.cli", "resolve", str(path), "--variant", "cpu", "--url", proxy.url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        # 3: a clean miss (nothing cached) — the body arrived whole and parsed.
        assert proc.returncode == 3 and out == b"", err.decode()


async def _post(url: str, body: bytes | AsyncIterator[bytes], **headers: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/v1/resolve", data=body,
                             headers={"Content-Type": "application/json", **headers}) as resp:
            return resp.status, await resp.json(content_type=None)


def _document(padding: int) -> bytes:
    files = {"requirements.txt": "six\n", "notes.txt": "#" * padding}
    return json.dumps({"document": {"path": "requirements.txt", "files": files}, "variant": "cpu"}).encode()


async def test_a_large_body_over_loopback_and_through_the_proxy(offline_daemon, proxy) -> None:
    body = _document(520_000)
    assert len(body) > 512 * 1024 - 20_000
    for url in (offline_daemon, proxy.url):
        status, answer = await _post(url, body)
        assert status == 404 and answer["status"] == "miss", answer


async def test_a_small_body_in_two_writes(offline_daemon) -> None:
    body = _document(4000)
    port = int(offline_daemon.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /api/v1/resolve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:2000])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(body[2000:])
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:300]


async def _chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_the_limit_is_413_with_a_json_error(offline_daemon, proxy, chunked: bool) -> None:
    for url in (offline_daemon, proxy.url):
        if chunked:
            status, answer = await _post(url, _chunks(b" " * (MAX_BODY + 1)))
        else:
            status, answer = await _post(url, b" " * (MAX_BODY + 1))
        assert status == 413 and str(MAX_BODY) in answer["error"]["message"], answer
    status, answer = await _post(offline_daemon, _chunks(_document(520_000), 7000))  # chunked, under the limit
    assert status == 404 and answer["status"] == "miss", answer
