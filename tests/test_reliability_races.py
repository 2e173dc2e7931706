"""gc racing the registry's writers, against a real ``envcache serve`` over real sockets (issue 13,
"Data loss" 1–2): nothing the registry acknowledged may disappear while it is still within the
grace period, whatever gc does at the same moment.

Each race is forced many times with the two sides placed at random offsets of each other (real
timing, no hooks): an old, unreferenced blob re-pushed while gc collects it; a manifest pushed
naming such a blob; a mount of such a blob; a monolithic upload still streaming while gc sweeps
temp files. "Lost" is an acknowledgement (201) followed by a 404 or a MANIFEST_BLOB_UNKNOWN for
the same content while its grace period still covers it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from tests.fixtures.daemon import OCI_INDEX, OCI_MANIFEST, error_code, image_manifest, push_blob, sha256

GRACE = 1.0  # seconds: long enough for every check below, short enough to age content quickly
CONFIG = b'{"architecture":"amd64","os":"linux","race":true}'


async def gc(http: aiohttp.ClientSession, base: str, grace: float = GRACE) -> dict[str, Any]:
    async with http.post(f"{base}/api/v1/gc", json={"grace_seconds": grace}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def put_manifest(http: aiohttp.ClientSession, base: str, repo: str, tag: str,
                       layers: list[bytes]) -> tuple[int, str]:
    """PUT an image manifest over CONFIG and ``layers``; (status, OCI error code or digest)."""
    body = json.dumps(image_manifest(CONFIG, layers)).encode()
    async with http.put(f"{base}/v2/{repo}/manifests/{tag}", data=body,
                        headers={"Content-Type": OCI_MANIFEST}) as resp:
        if resp.status == 201:
            return 201, resp.headers["Docker-Content-Digest"]
        return resp.status, await error_code(resp)


async def blob_status(http: aiohttp.ClientSession, base: str, repo: str, data: bytes) -> int:
    async with http.get(f"{base}/v2/{repo}/blobs/{sha256(data)}") as resp:
        return resp.status if resp.status != 200 or await resp.read() == data else -1


async def old_unreferenced_layers(http: aiohttp.ClientSession, base: str, repo: str, count: int) -> list[bytes]:
    """``count`` layers, each kept by its own tag ``keep-<i>`` until the race drops that tag; all
    older than the grace period when this returns (so gc sees a candidate the moment it is untagged)."""
    await push_blob(http, base, repo, CONFIG)
    layers = [os.urandom(48 * 1024) for _ in range(count)]
    for i, layer in enumerate(layers):
        await push_blob(http, base, repo, layer)
        assert (await put_manifest(http, base, repo, f"keep-{i}", [layer]))[0] == 201
    await asyncio.sleep(GRACE + 0.3)
    return layers


async def untag(http: aiohttp.ClientSession, base: str, repo: str, tag: str) -> None:
    async with http.delete(f"{base}/v2/{repo}/manifests/{tag}") as resp:
        assert resp.status == 202


async def send(port: int, method: str, path: str, body: bytes = b"",
               content_type: str = "application/json") -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """An open connection and the bytes of one request on it (written later by :func:`collide`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return reader, writer, head.encode() + body


async def status_of(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bytes]:
    raw = await reader.read()  # Connection: close, so the answer ends at EOF
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def collide(first: tuple[Any, Any, bytes], second: tuple[Any, Any, bytes], gap: float) -> None:
    """Both requests written back to back (``gap`` 0: in the same instant, so the daemon reads
    them in one turn of its loop) or ``gap`` seconds apart."""
    first[1].write(first[2])
    if gap:
        await asyncio.sleep(gap)
    second[1].write(second[2])


async def finish_request(http: aiohttp.ClientSession, base: str, port: int, repo: str,
                         data: bytes) -> tuple[Any, Any, bytes]:
    """An upload session holding ``data``, and its final ``PUT ?digest=`` ready to send."""
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        location = resp.headers["Location"]
    async with http.patch(f"{base}{location}", data=data) as resp:
        assert resp.status == 202
    return await send(port, "PUT", f"{location}?digest={sha256(data)}")


def gc_request(port: int) -> Any:
    return send(port, "POST", "/api/v1/gc", json.dumps({"grace_seconds": GRACE}).encode())


Request = tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]


async def collisions(http: aiohttp.ClientSession, proc: Any, repo: str, count: int, seed: int,
                     writer: Callable[[int, bytes], Awaitable[Request]]) -> AsyncIterator[tuple[int, bytes, int, bytes]]:
    """``count`` forced collisions: layer ``i`` becomes old garbage (its tag goes), then the
    request ``writer(i, layer)`` prepared is sent in the same instant as a gc — in either order,
    every other pair a little apart. Yields ``(i, layer, writer's status, writer's body)``."""
    rng = random.Random(seed)
    for i, layer in enumerate(await old_unreferenced_layers(http, proc.url, repo, count)):
        write = await writer(i, layer)
        await untag(http, proc.url, repo, f"keep-{i}")
        sweep = await gc_request(proc.port)
        await collide(*((write, sweep) if i % 2 == 0 else (sweep, write)), gap=0 if i % 4 < 2 else rng.uniform(0, 0.02))
        (status, answer), (swept, _) = await asyncio.gather(status_of(*write[:2]), status_of(*sweep[:2]))
        assert swept == 200
        yield i, layer, status, answer


async def test_repush_of_a_blob_gc_is_collecting_is_never_lost(daemon_process) -> None:
    """The issue's race, forced 80 times: an old unreferenced blob is pushed again (the upload's
    final PUT) in the same instant as gc collects it."""
    proc = daemon_process()
    base, repo = proc.url, "race/repush"
    lost: list[str] = []
    async with aiohttp.ClientSession() as http:
        async def finish(i: int, layer: bytes) -> Request:
            return await finish_request(http, base, proc.port, repo, layer)

        async for i, layer, pushed, _ in collisions(http, proc, repo, 80, 1301, finish):
            assert pushed == 201
            # Acknowledged moments ago, so inside its grace period: it must be there, and usable.
            status = await blob_status(http, base, repo, layer)
            manifest = await put_manifest(http, base, repo, f"back-{i}", [layer])
            if status != 200 or manifest[0] != 201:
                lost.append(f"#{i}: GET {status}, manifest PUT {manifest}")
    assert lost == [], f"{len(lost)} of 80 acknowledged re-pushes lost: {lost[:5]}"


async def test_manifest_naming_a_blob_gc_is_collecting_is_refused_or_complete(daemon_process) -> None:
    """A manifest PUT naming an old unreferenced blob in the same instant as gc collects it: the
    PUT is refused (MANIFEST_BLOB_UNKNOWN, and the client pushes the blob again) or the image is whole."""
    proc = daemon_process()
    base, repo = proc.url, "race/manifest"
    broken: list[str] = []
    async with aiohttp.ClientSession() as http:
        async def manifest(i: int, layer: bytes) -> Request:
            body = json.dumps(image_manifest(CONFIG, [layer])).encode()
            return await send(proc.port, "PUT", f"/v2/{repo}/manifests/v{i}", body, OCI_MANIFEST)

        async for i, layer, status, answer in collisions(http, proc, repo, 40, 1302, manifest):
            if status == 400:
                assert json.loads(answer)["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
                continue
            assert status == 201, answer
            got = await blob_status(http, base, repo, layer)
            if got != 200:
                broken.append(f"#{i}: manifest acknowledged, its layer answers {got}")
    assert broken == [], f"{len(broken)} acknowledged manifests name a collected blob: {broken[:5]}"


async def test_index_naming_an_old_untagged_manifest_gc_is_collecting_keeps_all_of_it(daemon_process) -> None:
    """An index pushed (and tagged) in the same instant as gc collects the untagged image it
    lists. Indexes may list manifests kept elsewhere, so one that arrives after gc took the
    child is accepted without it; but a child the index found is kept whole — never a manifest
    whose layers are gone."""
    proc = daemon_process()
    base, repo = proc.url, "race/index"
    broken: list[str] = []
    whole = 0
    children: dict[int, bytes] = {}
    async with aiohttp.ClientSession() as http:
        async def index(i: int, layer: bytes) -> Request:
            async with http.get(f"{base}/v2/{repo}/manifests/keep-{i}", headers={"Accept": OCI_MANIFEST}) as resp:
                children[i] = child = await resp.read()
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": sha256(child), "size": len(child),
                 "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
            return await send(proc.port, "PUT", f"/v2/{repo}/manifests/index-{i}", body, OCI_INDEX)

        async for i, layer, status, answer in collisions(http, proc, repo, 40, 1303, index):
            assert status == 201, answer
            async with http.get(f"{base}/v2/{repo}/manifests/{sha256(children[i])}",
                                headers={"Accept": OCI_MANIFEST}) as resp:
                child_status = resp.status
            got = await blob_status(http, base, repo, layer)
            if child_status == 200 and got != 200:
                broken.append(f"#{i}: child manifest {child_status}, its layer {got}")
            whole += child_status == got == 200
    assert broken == [], f"{len(broken)} acknowledged indexes list a broken manifest: {broken[:5]}"
    assert whole >= 10  # the index came first often enough for the race to be exercised


async def test_a_mount_is_a_use_that_gc_respects(daemon_process) -> None:
    """Mounted from another repository moments ago: gc must keep it for the grace period."""
    proc = daemon_process()
    base = proc.url
    layer = os.urandom(32 * 1024)
    async with aiohttp.ClientSession() as http:
        await push_blob(http, base, "team/source", layer)
        await asyncio.sleep(GRACE + 0.3)  # the blob is now old and nothing references it
        async with http.post(f"{base}/v2/team/target/blobs/uploads/",
                             params={"mount": sha256(layer), "from": "team/source"}) as resp:
            assert resp.status == 201
        await gc(http, base, grace=GRACE)
        assert await blob_status(http, base, "team/target", layer) == 200
        await push_blob(http, base, "team/target", CONFIG)
        assert (await put_manifest(http, base, "team/target", "v1", [layer]))[0] == 201


async def test_monolithic_upload_still_streaming_survives_gc(daemon_process) -> None:
    """The body of a ``POST ?digest=`` is still arriving when gc (grace 0) sweeps temp files."""
    proc = daemon_process()
    base = proc.url
    data = os.urandom(3 * 1024 * 1024)
    half = asyncio.Event()

    async def body() -> Any:
        yield data[:1024 * 1024]
        half.set()
        await asyncio.sleep(1.5)  # idle long enough to look stale to a grace-0 sweep
        yield data[1024 * 1024:]

    async with aiohttp.ClientSession() as http:
        push = asyncio.create_task(http.post(f"{base}/v2/team/app/blobs/uploads/", params={"digest": sha256(data)},
                                             data=body()))
        await half.wait()
        await asyncio.sleep(1.0)
        await gc(http, base, grace=0)
        async with await push as resp:
            assert resp.status == 201, await resp.text()
        assert await blob_status(http, base, "team/app", data) == 200


async def test_delete_of_a_blob_a_manifest_names_is_refused(daemon_process) -> None:
    """OCI leaves blob deletion to the registry; a blob a stored manifest names (config, layer, or
    the manifest itself) is refused with 405 DENIED, as zot does, so the image stays pullable."""
    proc = daemon_process()
    base, repo = proc.url, "team/app"
    layer, spare = os.urandom(4096), os.urandom(4096)
    async with aiohttp.ClientSession() as http:
        await push_blob(http, base, repo, CONFIG)
        await push_blob(http, base, repo, layer)
        await push_blob(http, base, repo, spare)
        _, tagged = await put_manifest(http, base, repo, "v1", [layer])
        for digest in (sha256(layer), sha256(CONFIG), tagged):
            async with http.delete(f"{base}/v2/{repo}/blobs/{digest}") as resp:
                assert resp.status == 405, digest
                assert await error_code(resp) == "DENIED"
        assert await blob_status(http, base, repo, layer) == 200
        async with http.get(f"{base}/v2/{repo}/manifests/v1") as resp:
            assert resp.status == 200
        # An untagged manifest still names its blobs (it can be pulled by digest).
        async with http.delete(f"{base}/v2/{repo}/manifests/v1") as resp:
            assert resp.status == 202
        async with http.delete(f"{base}/v2/{repo}/blobs/{sha256(layer)}") as resp:
            assert resp.status == 405
        # Once no manifest names it, the blob goes; one nothing names goes at once.
        async with http.delete(f"{base}/v2/{repo}/manifests/{tagged}") as resp:
            assert resp.status == 202
        for data in (layer, spare):
            async with http.delete(f"{base}/v2/{repo}/blobs/{sha256(data)}") as resp:
                assert resp.status == 202
            assert await blob_status(http, base, repo, data) == 404
