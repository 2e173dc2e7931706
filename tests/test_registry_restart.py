"""``envcache serve`` as a real process, killed mid-upload and started again on the same data."""

from __future__ import annotations

import asyncio
import os

import aiohttp

from tests.fixtures.daemon import error_code, push_image, sha256


async def test_kill_mid_upload_then_restart(daemon_process) -> None:
    proc = daemon_process()
    base = proc.url
    data = os.urandom(3 * 1024 * 1024)
    first, rest = data[:1024 * 1024], data[1024 * 1024:]
    async with aiohttp.ClientSession() as http:
        manifest_digest, manifest_body = await push_image(http, base, "app", "v1")
        async with http.post(f"{base}/v2/app/blobs/uploads/") as resp:
            upload = resp.headers["Location"]
        async with http.patch(f"{base}{upload}", data=first, headers={"Content-Range": f"0-{len(first) - 1}"}) as resp:
            assert resp.status == 202

        streamed = asyncio.Event()

        async def slow_rest():
            yield rest[:1536 * 1024]
            await asyncio.sleep(0.5)
            streamed.set()
            await asyncio.sleep(30)  # the daemon dies while this chunk is "in flight"
            yield rest[1536 * 1024:]

        patch = asyncio.create_task(http.patch(f"{base}{upload}", data=slow_rest()))
        await streamed.wait()
        session_file = proc.data_dir / "uploads" / upload.rsplit("/", 1)[1]
        assert session_file.stat().st_size > len(first)  # unacknowledged bytes reached the disk
        await asyncio.to_thread(proc.kill)
        try:
            await patch
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        else:
            raise AssertionError("the PATCH should have failed when the daemon was killed")

    await asyncio.to_thread(proc.restart)
    async with aiohttp.ClientSession() as http:
        # The partial upload never became a blob...
        async with http.head(f"{base}/v2/app/blobs/{sha256(data)}") as resp:
            assert resp.status == 404
        assert not any(p.name == sha256(data)[7:] for p in (proc.data_dir / "blobs").rglob("*"))
        # ...it resumes from the last acknowledged chunk (the half-sent one was cut off)...
        async with http.get(f"{base}{upload}") as resp:
            assert resp.status == 204 and resp.headers["Range"] == f"0-{len(first) - 1}"
        async with http.patch(f"{base}{upload}", data=rest,
                              headers={"Content-Range": f"{len(first)}-{len(data) - 1}"}) as resp:
            assert resp.status == 202
        async with http.put(f"{base}{upload}", params={"digest": sha256(data)}) as resp:
            assert resp.status == 201
        async with http.get(f"{base}/v2/app/blobs/{sha256(data)}") as resp:
            assert await resp.read() == data
        # ...and what was complete before the crash is all still there, byte-for-byte.
        async with http.get(f"{base}/v2/app/manifests/v1") as resp:
            assert resp.headers["Docker-Content-Digest"] == manifest_digest
            assert await resp.read() == manifest_body
        async with http.get(f"{base}/v2/app/blobs/{sha256(b'layer-two')}") as resp:
            assert await resp.read() == b"layer-two"


async def test_interrupted_monolithic_push_leaves_no_blob(daemon_process) -> None:
    proc = daemon_process()
    data = os.urandom(2 * 1024 * 1024)
    sent = asyncio.Event()

    async def body():
        yield data[:1024 * 1024]
        await asyncio.sleep(0.5)
        sent.set()
        await asyncio.sleep(30)
        yield data[1024 * 1024:]

    async with aiohttp.ClientSession() as http:
        push = asyncio.create_task(http.post(f"{proc.url}/v2/r/blobs/uploads/", params={"digest": sha256(data)},
                                             data=body()))
        await sent.wait()
        await asyncio.to_thread(proc.kill)
        try:
            await push
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
    await asyncio.to_thread(proc.restart)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proc.url}/v2/r/blobs/{sha256(data)}") as resp:
            assert resp.status == 404 and await error_code(resp) == "BLOB_UNKNOWN"
    assert [p for p in (proc.data_dir / "blobs").rglob("*") if p.is_file()] == []
    assert list((proc.data_dir / "tmp").iterdir()) == []
