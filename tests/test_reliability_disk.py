"""A full disk, for real: ``envcache serve`` over a small tmpfs (issue 13, "Full disk").

Fill it through the API until pushes are refused, restart on the full disk, then let something
else take the last byte: reads keep working (they never need a write), pushes get a clear
insufficient-storage answer and leave nothing behind, and deletes plus gc — through the API —
free the space again. Nothing acknowledged is lost on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.fixtures.daemon import OCI_MANIFEST, error_code, image_manifest, push_blob, push_image, sha256

MB = 1024 * 1024
CONFIG = b'{"architecture":"amd64","os":"linux"}'
DISK_MB = 192  # the daemon's default free-space floor is 64 MiB: room for ~100 MiB of pushes


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs of DISK_MB mounted for this test only."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def free(path: Path) -> int:
    return shutil.disk_usage(path).free


def fill(path: Path) -> Path:
    """Take every last byte of the filesystem, as another program would."""
    filler = path / "someone-elses-file"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (MB, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


async def pull(http: aiohttp.ClientSession, base: str, repo: str, digest: str, data: bytes) -> None:
    async with http.get(f"{base}/v2/{repo}/blobs/{digest}") as resp:
        assert resp.status == 200, f"GET {digest}: {resp.status} {await resp.text()}"
        assert await resp.read() == data
    async with http.head(f"{base}/v2/{repo}/blobs/{digest}") as resp:
        assert resp.status == 200


async def tag_image(http: aiohttp.ClientSession, base: str, repo: str, tag: str, layer: bytes) -> None:
    """A manifest over CONFIG and an already pushed ``layer``, under ``tag``."""
    body = json.dumps(image_manifest(CONFIG, [layer])).encode()
    async with http.put(f"{base}/v2/{repo}/manifests/{tag}", data=body, headers={"Content-Type": OCI_MANIFEST}) as resp:
        assert resp.status == 201, await resp.text()


async def check_refused(resp: aiohttp.ClientResponse) -> None:
    """507 Insufficient Storage with the OCI error body naming disk space."""
    assert resp.status == 507, f"{resp.status} {await resp.text()}"
    body = await resp.json()
    assert body["errors"][0]["code"] and "disk space" in body["errors"][0]["message"]


async def test_full_disk_refuses_pushes_keeps_reads_and_recovers_through_gc(small_disk: Path, daemon_process) -> None:
    proc = daemon_process(small_disk / "data")
    base = proc.url
    kept_layers = (os.urandom(MB), os.urandom(MB))
    junk: list[tuple[str, bytes]] = []
    async with aiohttp.ClientSession() as http:
        kept, kept_body = await push_image(http, base, "team/app", "v1", layers=kept_layers)
        await push_blob(http, base, "junk", CONFIG)

        # 1. Fill through the API: every push is acknowledged or clearly refused, never a 500.
        for i in range(40):
            layer = os.urandom(8 * MB)
            async with http.post(f"{base}/v2/junk/blobs/uploads/", params={"digest": sha256(layer)},
                                 data=layer) as resp:
                if resp.status != 201:
                    await check_refused(resp)
                    break
            junk.append((f"t{i}", layer))
            await tag_image(http, base, "junk", f"t{i}", layer)
        else:
            raise AssertionError("the disk never filled")
        assert len(junk) >= 4
        assert free(small_disk) > 8 * MB  # the floor kept room for the index and for gc
        # A chunked upload is refused too, and acknowledges nothing.
        async with http.post(f"{base}/v2/junk/blobs/uploads/") as resp:
            if resp.status == 202:
                async with http.patch(f"{base}{resp.headers['Location']}", data=os.urandom(8 * MB)) as patch:
                    await check_refused(patch)
            else:
                await check_refused(resp)
        assert not [p for p in (proc.data_dir / "tmp").iterdir() if p.is_file()]

    # 2. Restart on the full disk: the first read of every blob answers (a read writes nothing).
    await asyncio.to_thread(proc.restart)
    async with aiohttp.ClientSession() as http:
        for layer in kept_layers:
            await pull(http, base, "team/app", sha256(layer), layer)
        for _, layer in junk:
            await pull(http, base, "junk", sha256(layer), layer)

        # 3. Someone else takes the last byte: reads still work, pushes are refused cleanly,
        #    and the daemon even starts again on a disk with no byte left.
        filler = await asyncio.to_thread(fill, small_disk)
        assert free(small_disk) < MB
        await pull(http, base, "team/app", sha256(kept_layers[0]), kept_layers[0])
    await asyncio.to_thread(proc.restart)
    async with aiohttp.ClientSession() as http:
        await pull(http, base, "team/app", sha256(kept_layers[0]), kept_layers[0])
        async with http.get(f"{base}/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST}) as resp:
            assert resp.status == 200 and await resp.read() == kept_body
        small = os.urandom(64 * 1024)
        async with http.post(f"{base}/v2/team/app/blobs/uploads/", params={"digest": sha256(small)},
                             data=small) as resp:
            await check_refused(resp)

        # 4. The way out is the API: delete what is not needed, gc, push again.
        for tag, _ in junk:
            async with http.delete(f"{base}/v2/junk/manifests/{tag}") as resp:
                assert resp.status == 202, await resp.text()
        async with http.post(f"{base}/api/v1/gc", json={"grace_seconds": 0}) as resp:
            assert resp.status == 200, await resp.text()
            report = await resp.json()
        assert report["blobs_deleted"] >= len(junk) and report["blob_bytes_freed"] >= 8 * MB * len(junk)
        assert free(small_disk) > 64 * MB
        await push_blob(http, base, "team/app", small)
        for layer in (*kept_layers, small):
            await pull(http, base, "team/app", sha256(layer), layer)
        async with http.get(f"{base}/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST}) as resp:
            assert resp.headers["Docker-Content-Digest"] == kept
        async with http.get(f"{base}/v2/junk/blobs/{sha256(junk[0][1])}") as resp:
            assert resp.status == 404 and await error_code(resp) == "BLOB_UNKNOWN"
    filler.unlink()
    fsck = subprocess.run([sys.executable, "-m", "envcache.cli", "fsck", "--data", str(proc.data_dir)],
                          capture_output=True, text=True, timeout=120)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


async def test_the_free_space_floor_comes_from_the_config(daemon_process, tmp_path: Path) -> None:
    """``[storage] min_free_mb``: a floor above the free space refuses every new blob write (and
    nothing else) with the 507 that names disk space."""
    config = tmp_path / "envcache.toml"
    config.write_text("[storage]\nmin_free_mb = 100000000\n")
    proc = daemon_process(tmp_path / "data", 0, config)
    data = os.urandom(4096)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{proc.url}/v2/team/app/blobs/uploads/", params={"digest": sha256(data)},
                             data=data) as resp:
            await check_refused(resp)
        async with http.get(f"{proc.url}/v2/_catalog") as resp:
            assert resp.status == 200
        async with http.post(f"{proc.url}/api/v1/gc", json={"grace_seconds": 0}) as resp:
            assert resp.status == 200
