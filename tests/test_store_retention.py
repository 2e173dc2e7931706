"""gc's size cap (issue 15, "Size-capped retention"): real images pushed through /v2/ to a real
daemon, filed in its image index, then evicted least recently used first.

The in-process tests move time forward with ``run_gc(now=...)`` (the grace period is an hour);
the process tests run ``envcache serve`` with a short grace and real concurrent pulls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from envcache.definition import definition_from_dict, for_variant, spec_hash
from envcache.oci import ENV_REPOSITORY, STAGE_REPOSITORY
from envcache.store import Store, StoredImage, open_store
from envcache.store.gc import run_gc
from tests.fixtures.daemon import DaemonURL, OCI_MANIFEST, push_image, sha256

LATER = 2 * 3600.0  # past the default one-hour grace period
SHARED = b"shared-base-layer" * 1000


def _layer(index: int, size: int) -> bytes:
    """Distinct, incompressible bytes for image ``index``."""
    seed, out = f"image-{index}".encode(), bytearray()
    while len(out) < size:
        seed = hashlib.sha256(seed).digest()
        out += seed * 8
    return bytes(out[:size])


async def push_images(base: str, count: int, size: int) -> list[tuple[str, str, bytes]]:
    """``count`` images ``envcache/env:k<i>-cpu`` (the shared layer + one of their own):
    [(key, manifest digest, own layer)]."""
    pushed = []
    async with aiohttp.ClientSession() as http:
        for i in range(count):
            own = _layer(i, size)
            digest, _ = await push_image(http, base, ENV_REPOSITORY, f"k{i}-cpu",
                                         config=b'{"architecture":"amd64","os":"linux","i":%d}' % i,
                                         layers=(SHARED, own))
            pushed.append((f"k{i}", digest, own))
    return pushed


async def file_images(store: Store, pushed: list[tuple[str, str, bytes]], last_used: list[float],
                      spec_hashes: dict[str, str] | None = None) -> None:
    """File each pushed image in the image index, as a build would, last used at the given times."""
    for (key, digest, own), used in zip(pushed, last_used):
        await store.images.put(StoredImage(key, "cpu", (spec_hashes or {}).get(key, f"spec-{key}"), None,
                                           ENV_REPOSITORY, f"{key}-cpu", digest, len(own), used, used))


def blob_bytes(store: Store) -> int:
    return sum(path.stat().st_size for path in store.files.root.rglob("*") if path.is_file())


async def test_size_cap_evicts_least_recently_used_images_first_with_their_stages(daemon: DaemonURL) -> None:
    store: Store = daemon.store
    now = time.time() + LATER
    pushed = await push_images(daemon, 5, 100_000)
    # k4 is the least recently used, k0 the most: the order is by last use, not by key or age.
    await file_images(store, pushed, [now - 1000 * (i + 2) for i in range(5)])
    async with aiohttp.ClientSession() as http:
        # A stage only k4 contains goes with k4; the base stage every image contains stays.
        await push_image(http, daemon, STAGE_REPOSITORY, "a" * 32, config=b'{"stage":"k4"}',
                         layers=(SHARED, pushed[4][2]))
        await push_image(http, daemon, STAGE_REPOSITORY, "b" * 32, config=b'{"stage":"base"}', layers=(SHARED,))
        # Content pushed through /v2/ that is no cached image is never evicted.
        await push_image(http, daemon, "team/app", "v1", layers=(_layer(99, 100_000),))
    total = blob_bytes(store)
    cap = total - 250_000  # three images' own layers must go

    dry = await run_gc(store, max_bytes=cap, now=now, dry_run=True)
    report = await run_gc(store, max_bytes=cap, now=now)

    assert [e["key"] for e in dry.evicted] == [e["key"] for e in report.evicted] == ["k4", "k3", "k2"]
    assert report.store_bytes == total
    for eviction in report.evicted:
        assert 100_000 < eviction["bytes"] < 102_000, eviction  # own layer, config, manifest
        assert "least recently used" in eviction["reason"] and f"max_bytes is {cap}" in eviction["reason"]
    assert [e["last_used"] for e in report.evicted] == [now - 6000, now - 5000, now - 4000]
    assert report.tags_deleted == [f"{ENV_REPOSITORY}:k2-cpu", f"{ENV_REPOSITORY}:k3-cpu", f"{ENV_REPOSITORY}:k4-cpu",
                                   f"{STAGE_REPOSITORY}:{'a' * 32}"]
    assert blob_bytes(store) <= cap
    for key, digest, own in pushed:
        evicted = key in ("k2", "k3", "k4")
        assert store.files.path(sha256(own)).exists() is not evicted
        assert (await store.images.get(key) is None) is evicted
    assert store.files.path(sha256(SHARED)).is_file()
    assert await store.get_manifest(STAGE_REPOSITORY, "b" * 32) is not None
    assert await store.get_manifest("team/app", "v1") is not None
    # Under the cap now: the next run evicts nothing.
    assert (await run_gc(store, max_bytes=cap, now=now)).evicted == []


async def test_pinned_images_and_registered_latest_versions_are_never_evicted(daemon: DaemonURL) -> None:
    store: Store = daemon.store
    now = time.time() + LATER
    pushed = await push_images(daemon, 5, 100_000)
    async with aiohttp.ClientSession() as http:
        for content in ("numpy", "pandas"):
            async with http.post(f"{daemon}/api/v1/environments", json={
                    "name": "train", "definition": {"environment_variables": {"LIB": content}}}) as resp:
                assert resp.status in (200, 201), await resp.text()
        # k0 (the least recently used) is pinned through the API.
        async with http.put(f"{daemon}/api/v1/images/k0-cpu/pin") as resp:
            assert resp.status == 404  # not filed yet
    versions = {v.version: v for v in await store.environments.versions("train")}
    hashes = {str(v): spec_hash(for_variant(definition_from_dict(versions[v].definition), "cpu")) for v in (1, 2)}
    # k1 is built from version 1 (no longer the latest), k2 from version 2 (the latest).
    await file_images(store, pushed, [now - 1000 * (9 - i) for i in range(5)], {"k1": hashes["1"], "k2": hashes["2"]})
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{daemon}/api/v1/images/k0-cpu/pin") as resp:
            assert resp.status == 200 and (await resp.json())["pinned"] is True
        async with http.get(f"{daemon}/api/v1/images") as resp:
            assert {i["key"]: i["pinned"] for i in (await resp.json())["images"]} == {
                "k0": True, "k1": False, "k2": False, "k3": False, "k4": False}
    cap = blob_bytes(store) - 250_000

    report = await run_gc(store, max_bytes=cap, now=now)

    assert [e["key"] for e in report.evicted] == ["k1", "k3", "k4"]
    assert (await store.images.get("k0")).pinned and await store.images.get("k2") is not None
    # Pinned images do not expire with --keep-days either; unpinned, they do.
    assert (await run_gc(store, keep_days=0, now=now)).images_expired == ["k2"]
    assert await store.images.get("k0") is not None
    async with aiohttp.ClientSession() as http:
        async with http.delete(f"{daemon}/api/v1/images/k0/pin") as resp:
            assert resp.status == 200 and (await resp.json())["pinned"] is False
    assert (await run_gc(store, keep_days=0, now=now)).images_expired == ["k0"]


async def test_nothing_used_within_the_grace_period_is_evicted(daemon: DaemonURL) -> None:
    store: Store = daemon.store
    now = time.time() + LATER
    pushed = await push_images(daemon, 3, 50_000)
    await file_images(store, pushed, [now - 600, now - 1200, now - 7200])  # only k2 is older than an hour
    cap = 1000

    report = await run_gc(store, max_bytes=cap, now=now)

    assert [e["key"] for e in report.evicted] == ["k2"]
    assert [key for key, _, _ in pushed if await store.images.get(key)] == ["k0", "k1"]
    assert any("stays over max_bytes" in note for note in report.notes), report.notes
    # A re-filed (rebuilt) image keeps its pin.
    await store.images.set_pinned("k0", True)
    await store.images.put(await store.images.get("k0"))
    assert (await store.images.get("k0")).pinned
    previous = await store.images.get("k0")  # so does a refresh that files a new image under the key
    await store.images.replace(dataclasses.replace(previous, manifest_digest=pushed[2][1], pinned=False), previous, now)
    assert (await store.images.get("k0")).pinned


async def _pull(http: aiohttp.ClientSession, url: str, tag: str, got_manifest: asyncio.Event | None = None,
                go_on: asyncio.Event | None = None) -> str:
    """Pull ``envcache/env:<tag>`` as a registry client does: the manifest, then every blob it
    names, each checked against its digest. "whole", "404" (the manifest was already gone), or
    what broke. A slow client sets ``got_manifest`` and waits for ``go_on`` in between."""
    async with http.get(f"{url}/v2/{ENV_REPOSITORY}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}) as resp:
        if resp.status == 404:
            assert (await resp.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
            return "404"
        if resp.status != 200:
            return f"manifest {resp.status}"
        manifest = json.loads(await resp.read())
    if got_manifest is not None and go_on is not None:
        got_manifest.set()
        await go_on.wait()
    for descriptor in (manifest["config"], *manifest["layers"]):
        async with http.get(f"{url}/v2/{ENV_REPOSITORY}/blobs/{descriptor['digest']}") as resp:
            data = await resp.read()
            if resp.status != 200 or sha256(data) != descriptor["digest"]:
                return f"{tag}: blob {descriptor['digest'][:19]} {resp.status} after the manifest"
    return "whole"


async def _filed(daemon_process: Any, count: int, size: int, config: Path | None = None) -> tuple[Any, list]:
    """A daemon process holding ``count`` pushed images, filed in its index as least recently used
    in key order (k0 oldest), then serving again (with ``config``)."""
    proc = daemon_process()
    pushed = await push_images(proc.url, count, size)
    proc.stop()
    store = await open_store(proc.data_dir)
    try:
        await file_images(store, pushed, [time.time() - 86400 + 60 * i for i in range(count)])
    finally:
        await store.close()
    return daemon_process(proc.data_dir, 0, config), pushed


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envcache.cli", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, ENVCACHE_TOKEN=""))


async def test_concurrent_pulls_during_eviction_get_whole_images_or_a_clean_404(daemon_process: Any) -> None:
    """Slow clients hold the manifest of every image (the three gc evicts included) while gc runs,
    and fetch the blobs after it; fast clients pull the images that stay all along. Every pull
    gets the whole image, and a pull of an evicted image that starts after gc gets a 404 on its
    manifest. Then, with the pulls over and the grace period past, the evicted images' bytes go
    and the store fits under the cap."""
    proc, pushed = await _filed(daemon_process, 7, 1_000_000)
    pinned = _cli("images", "pin", "k0-cpu", "--url", proc.url)
    assert pinned.returncode == 0 and "pinned" in pinned.stdout, pinned.stderr
    listed = json.loads(_cli("images", "--json", "--url", proc.url).stdout)
    assert {i["key"] for i in listed if i["pinned"]} == {"k0"}
    total = sum(p.stat().st_size for p in (proc.data_dir / "blobs").rglob("*") if p.is_file())
    cap = total - 2_500_000  # three 1 MB images must go: k1, k2, k3 (k0 is pinned)
    await asyncio.sleep(2.5)  # everything pushed is older than the 2 s grace period
    fast: list[str] = []
    done, go_on = asyncio.Event(), asyncio.Event()

    async def puller(start: int) -> None:
        async with aiohttp.ClientSession() as http:
            i = start
            while not done.is_set():
                fast.append(await _pull(http, proc.url, f"k{4 + i % 3}-cpu"))
                i += 1

    async with aiohttp.ClientSession() as http:
        got = [asyncio.Event() for _ in pushed]
        slow = [asyncio.create_task(_pull(http, proc.url, f"{key}-cpu", got[i], go_on))
                for i, (key, _, _) in enumerate(pushed)]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in got)), 30)
        pullers = [asyncio.create_task(puller(n)) for n in range(6)]
        async with http.post(f"{proc.url}/api/v1/gc", json={"max_bytes": cap, "grace_seconds": 2}) as resp:
            report = await resp.json()
            assert resp.status == 200, report
        after = [await _pull(http, proc.url, f"k{i}-cpu") for i in (1, 2, 3)]
        go_on.set()
        slow_outcomes = await asyncio.gather(*slow)
        done.set()
        await asyncio.gather(*pullers)

    assert [e["key"] for e in report["evicted"]] == ["k1", "k2", "k3"]
    assert slow_outcomes == ["whole"] * 7
    assert after == ["404"] * 3
    assert fast and set(fast) == {"whole"}, [o for o in fast if o != "whole"][:5]
    await asyncio.sleep(2.5)  # the slow pulls' reads leave the grace period
    final = _cli("gc", "--url", proc.url, "--max-bytes", str(cap), "--grace", "2", "--json")
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["evicted"] == []
    on_disk = sum(p.stat().st_size for p in (proc.data_dir / "blobs").rglob("*") if p.is_file())
    assert on_disk <= cap, (on_disk, cap)
    async with aiohttp.ClientSession() as http:
        assert [await _pull(http, proc.url, f"k{i}-cpu") for i in range(7)] == \
            ["whole", "404", "404", "404", "whole", "whole", "whole"]


async def test_interval_gc_keeps_the_store_under_max_bytes_by_itself(daemon_process: Any, tmp_path: Path) -> None:
    config = tmp_path / "envcache.toml"
    config.write_text("[gc]\ninterval = 1\ngrace = 1\nmax_bytes = 1200000\n")
    proc, pushed = await _filed(daemon_process, 4, 500_000, config)
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if [await _pull(http, proc.url, f"k{i}-cpu") for i in range(4)] == ["404", "404", "whole", "whole"]:
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"interval gc did not evict k0 and k1 within 30s:\n{proc.log.read_text()[-3000:]}")
    deadline = time.monotonic() + 15
    while sum(p.stat().st_size for p in (proc.data_dir / "blobs").rglob("*") if p.is_file()) > 1_200_000:
        assert time.monotonic() < deadline, "the evicted images' bytes were not freed by the next interval"
        await asyncio.sleep(0.5)
    log = proc.log.read_text()
    assert "interval gc" in log and "k0 (" in log and "k1 (" in log, log[-3000:]


def test_bad_retention_settings_are_refused_naming_them(tmp_path: Path) -> None:
    from envcache.errors import InvalidInput
    from envcache.service.config import config_from_dict

    assert config_from_dict({"gc": {"max_bytes": 10, "interval": 0}}).gc.max_bytes == 10
    for section, message in (({"max_bytes": -1}, "gc.max_bytes must be positive"),
                             ({"interval": "10m"}, "gc.interval must be an integer"),
                             ({"max_size": 1}, "unknown key gc.max_size")):
        try:
            config_from_dict({"gc": section})
        except InvalidInput as exc:
            assert message in str(exc), exc
        else:
            raise AssertionError(f"{section} was accepted")
    bad = _cli("gc", "--data", str(tmp_path), "--max-bytes", "lots")
    assert bad.returncode == 2 and "--max-bytes" in bad.stderr and "'lots'" in bad.stderr, bad.stderr
    missing = _cli("images", "pin", "--url", "http://127.0.0.1:9")
    assert missing.returncode == 2 and "give the image key" in missing.stderr, missing.stderr


async def test_offline_gc_with_a_size_suffix_evicts_from_the_data_directory(daemon_process: Any) -> None:
    proc, pushed = await _filed(daemon_process, 3, 100_000)
    proc.stop()

    done = _cli("gc", "--data", str(proc.data_dir), "--max-bytes", "0.25M", "--grace", "0")

    assert done.returncode == 0, done.stderr
    assert "images evicted:     1 (store 311." in done.stdout and "    k0: 98.4 KiB" in done.stdout, done.stdout
    store = await open_store(proc.data_dir)
    try:
        assert [key for key, _, _ in pushed if await store.images.get(key)] == ["k1", "k2"]
        assert blob_bytes(store) <= 0.25 * 2**20
    finally:
        await store.close()
