"""GC over a real daemon's store: images pushed through /v2/, real SQLite, real blob files.

Time is moved forward with ``run_gc(now=...)`` rather than by sleeping: the grace period is an
hour, and what matters is that content younger than it survives and older content goes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from envcache.service.app import create_app
from envcache.service.config import Config
from envcache.service.views.gc import gc_handler
from envcache.store import Store, open_store
from envcache.store.gc import GcAborted, run_gc
from tests.fixtures.daemon import EMPTY_JSON, OCI_INDEX, OCI_MANIFEST, push_blob, push_image, sha256

LATER = 2 * 3600.0  # past the default one-hour grace period
SHARED = b"shared-base-layer" * 100
ONLY_A = b"only-in-image-a" * 200
ONLY_B = b"only-in-image-b" * 300
CONFIG_A = b'{"architecture":"amd64","os":"linux","a":1}'
CONFIG_B = b'{"architecture":"amd64","os":"linux","b":2}'


def snapshot(store: Store) -> dict[str, Any]:
    """Every row of the registry tables and every file under the data directory."""
    tables = {name: sorted(map(tuple, store.metadata.db.execute(f"SELECT * FROM {name}").fetchall()))
              for name in ("blobs", "manifests", "tags", "repository_blobs", "upload_sessions", "images",
                           "repositories")}
    files = sorted(str(p.relative_to(store.data_dir)) for p in store.data_dir.rglob("*")
                   if p.is_file() and not p.name.startswith("envcache.db") and p.name != ".lock")
    return {"tables": tables, "files": files}


async def push_two_images(base: str) -> tuple[str, str, bytes]:
    async with aiohttp.ClientSession() as http:
        digest_a, body_a = await push_image(http, base, "team/app", "a", config=CONFIG_A, layers=(SHARED, ONLY_A))
        digest_b, _ = await push_image(http, base, "team/app", "b", config=CONFIG_B, layers=(SHARED, ONLY_B))
    return digest_a, digest_b, body_a


async def test_gc_frees_exactly_the_untagged_images_unshared_blobs(daemon) -> None:
    store: Store = daemon.store
    digest_a, digest_b, body_a = await push_two_images(daemon)
    async with aiohttp.ClientSession() as http:
        async with http.delete(f"{daemon}/v2/team/app/manifests/a") as resp:
            assert resp.status == 202

    report = await run_gc(store, now=time.time() + LATER)

    gone = [digest_a, sha256(CONFIG_A), sha256(ONLY_A)]
    assert report.manifests_deleted == 1
    assert report.blobs_deleted == 3
    assert report.blob_bytes_freed == len(body_a) + len(CONFIG_A) + len(ONLY_A)
    assert report.bytes_freed == report.blob_bytes_freed
    for digest in gone:
        assert not store.files.path(digest).exists()
        assert store.metadata.db.execute("SELECT 1 FROM blobs WHERE digest = ?", [digest]).fetchone() is None
    kept = [digest_b, sha256(CONFIG_B), sha256(SHARED), sha256(ONLY_B)]
    for digest in kept:
        assert store.files.path(digest).is_file()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon}/v2/team/app/manifests/b", headers={"Accept": OCI_MANIFEST}) as resp:
            assert resp.status == 200
        for digest in kept[1:]:
            async with http.get(f"{daemon}/v2/team/app/blobs/{digest}") as resp:
                assert resp.status == 200
        async with http.get(f"{daemon}/v2/team/app/blobs/{sha256(ONLY_A)}") as resp:
            assert resp.status == 404
        async with http.get(f"{daemon}/v2/team/app/manifests/{digest_a}") as resp:
            assert resp.status == 404

    again = await run_gc(store, now=time.time() + LATER)
    assert (again.blobs_deleted, again.manifests_deleted, again.bytes_freed) == (0, 0, 0)
    assert again.blobs_kept == 4


async def test_dry_run_changes_nothing_and_predicts_the_real_run(daemon) -> None:
    store: Store = daemon.store
    await push_two_images(daemon)
    await store.manifests.delete_tag("team/app", "a")
    stale = store.files.tmp / "blob-crashed"
    stale.write_bytes(b"x" * 100)
    os.utime(stale, (time.time() - LATER, time.time() - LATER))
    before = snapshot(store)

    dry = await run_gc(store, dry_run=True, now=time.time() + LATER)

    assert snapshot(store) == before
    assert dry.dry_run and dry.blobs_deleted == 3 and dry.manifests_deleted == 1 and dry.tmp_files_deleted == 1
    real = await run_gc(store, now=time.time() + LATER)
    assert {k: v for k, v in real.to_dict().items() if k not in ("dry_run", "seconds")} == \
           {k: v for k, v in dry.to_dict().items() if k not in ("dry_run", "seconds")}
    assert snapshot(store) != before and not stale.exists()


async def test_young_unreferenced_blob_and_untagged_manifest_survive_the_grace_period(daemon) -> None:
    store: Store = daemon.store
    async with aiohttp.ClientSession() as http:
        loose = await push_blob(http, daemon, "team/app", b"uploaded, manifest still to come")
        digest, _ = await push_image(http, daemon, "team/app", "tmp")
    await store.manifests.delete_tag("team/app", "tmp")  # a manifest now held only by its digest

    report = await run_gc(store)  # now: everything is younger than an hour

    assert report.blobs_deleted == 0 and report.manifests_deleted == 0
    # The young manifest is a root of its own, so only the loose blob is kept just for its age.
    assert report.blobs_kept == 5 and report.blobs_kept_young == 1
    assert store.files.path(loose).is_file()
    assert await store.get_manifest("team/app", digest) is not None

    later = await run_gc(store, now=time.time() + LATER)
    assert later.blobs_deleted == 5 and later.manifests_deleted == 1
    assert not store.files.path(loose).exists()
    assert await store.manifests.repositories() == []  # nothing left in it: the repository goes too


async def test_referrers_and_index_children_are_kept_through_their_root(daemon) -> None:
    store: Store = daemon.store
    async with aiohttp.ClientSession() as http:
        image, body = await push_image(http, daemon, "team/app", "v1")
        # An untagged signature-like artifact whose subject is the tagged image.
        await push_blob(http, daemon, "team/app", b"{}")
        sig_layer = await push_blob(http, daemon, "team/app", b"signature-bytes")
        sig = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/example.sig",
               "config": {"mediaType": EMPTY_JSON, "digest": sha256(b"{}"), "size": 2},
               "layers": [{"mediaType": "application/octet-stream", "digest": sig_layer, "size": 15}],
               "subject": {"mediaType": OCI_MANIFEST, "digest": image, "size": len(body)}}
        sig_body = json.dumps(sig).encode()
        async with http.put(f"{daemon}/v2/team/app/manifests/{sha256(sig_body)}", data=sig_body,
                            headers={"Content-Type": OCI_MANIFEST}) as resp:
            assert resp.status == 201
        # An index tagged "multi" over the image, which loses its own tag.
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": image, "size": len(body)}]}).encode()
        async with http.put(f"{daemon}/v2/team/app/manifests/multi", data=index,
                            headers={"Content-Type": OCI_INDEX}) as resp:
            assert resp.status == 201
    await store.manifests.delete_tag("team/app", "v1")

    report = await run_gc(store, now=time.time() + LATER)
    assert (report.manifests_deleted, report.blobs_deleted) == (0, 0)
    assert store.files.path(sig_layer).is_file()

    await store.manifests.delete_tag("team/app", "multi")
    report = await run_gc(store, now=time.time() + LATER)
    assert report.manifests_deleted == 3  # index, image, and the referrer that hung off it
    assert report.blobs_deleted == 3 + 2 + 3  # index+image+sig bodies, sig config+layer, image config+2 layers
    assert store.metadata.db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 0
    assert not any(p.is_file() for p in store.files.root.rglob("*"))


async def test_keep_days_expires_unused_images_and_their_index_tag(daemon) -> None:
    store: Store = daemon.store
    old = time.time() - 40 * 86400
    async with aiohttp.ClientSession() as http:
        cpu, cpu_body = await push_image(http, daemon, "envcache/env", "k1-cpu", layers=(SHARED, ONLY_A))
        gpu, gpu_body = await push_image(http, daemon, "envcache/env", "k2-gpu", config=CONFIG_B,
                                         layers=(SHARED, ONLY_B))
        stage, _ = await push_image(http, daemon, "envcache/stage", "c" * 32, config=CONFIG_A, layers=(SHARED,))
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": cpu, "size": len(cpu_body)}]}).encode()
    await store.put_manifest("envcache/env", "spechash1", index, OCI_INDEX)
    for key, tag, digest, used in (("k1", "k1-cpu", cpu, old), ("k2", "k2-gpu", gpu, time.time())):
        store.metadata.db["images"].insert({"key": key, "variant": tag[-3:], "spec_hash": "s", "repository": "envcache/env",
                                   "tag": tag, "manifest_digest": digest, "size": 1, "created": used,
                                   "last_used": used})
    # Without --keep-days the images table is a root even with the tag gone.
    await store.manifests.delete_tag("envcache/env", "k2-gpu")
    assert (await run_gc(store, now=time.time() + LATER)).manifests_deleted == 0

    report = await run_gc(store, keep_days=30, now=time.time() + LATER)

    assert report.images_expired == ["k1"]
    assert report.tags_deleted == ["envcache/env:k1-cpu", "envcache/env:spechash1"]
    assert report.manifests_deleted == 2  # the cpu image and its index
    assert not store.files.path(sha256(ONLY_A)).exists()
    assert store.files.path(sha256(SHARED)).is_file()  # still used by k2 and the stage image
    assert [r[0] for r in store.metadata.db.execute("SELECT key FROM images")] == ["k2"]
    assert await store.get_manifest("envcache/stage", "c" * 32) is not None
    assert await store.get_manifest("envcache/env", gpu) is not None


async def test_idle_upload_sessions_and_stale_temp_files_go(daemon) -> None:
    store: Store = daemon.store
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{daemon}/v2/team/app/blobs/uploads/") as resp:
            location = resp.headers["Location"]
        async with http.patch(f"{daemon}{location}", data=b"partial" * 10,
                              headers={"Content-Range": "0-69"}) as resp:
            assert resp.status == 202
    session = location.rsplit("/", 1)[1]
    fresh = store.files.tmp / "blob-in-progress"
    fresh.write_bytes(b"being written")

    assert (await run_gc(store)).uploads_expired == 0
    report = await run_gc(store, now=time.time() + LATER)

    assert report.uploads_expired == 1 and report.upload_bytes_freed == 70
    assert await store.uploads.get(session) is None and not store.files.upload_path(session).exists()
    assert report.tmp_files_deleted == 1 and not fresh.exists()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon}{location}") as resp:
            assert resp.status == 404


async def test_temp_files_and_scratch_dirs_a_writer_claims_survive_any_grace(daemon) -> None:
    """A write or a build's export can idle longer than any grace period: gc skips what its
    writer still holds (an flock), and removes the same kind of leftover once it is released."""
    store: Store = daemon.store
    with store.files.scratch("envcache-export-") as scratch:
        (scratch / "layer.tar").write_bytes(b"exported")
        staged = await store.files.stage(_chunks(b"half-written blob"))
        report = await run_gc(store, now=time.time() + LATER)
        assert report.tmp_files_deleted == 0
        assert (scratch / "layer.tar").read_bytes() == b"exported" and (store.data_dir / staged.key).exists()
        await store.files.discard(staged)
    assert not scratch.exists()
    leftover = store.files.tmp / "blob-of-a-crashed-writer"
    leftover.write_bytes(b"?")
    assert (await run_gc(store, now=time.time() + LATER)).tmp_files_deleted == 1 and not leftover.exists()


async def _chunks(data: bytes) -> Any:
    yield data


async def test_gc_refuses_when_a_manifest_in_use_is_unreadable(daemon) -> None:
    store: Store = daemon.store
    async with aiohttp.ClientSession() as http:
        digest, _ = await push_image(http, daemon, "team/app", "v1")
        await push_blob(http, daemon, "team/app", b"garbage")
    store.files.path(digest).unlink()
    before = snapshot(store)
    try:
        await run_gc(store, now=time.time() + LATER)
    except GcAborted as exc:
        assert "fsck --repair" in str(exc) and digest in str(exc)
    else:
        raise AssertionError("gc ran over an unreadable manifest")
    assert snapshot(store) == before


async def test_gc_api_route(tmp_path: Path) -> None:
    """``POST /api/v1/gc`` in a real daemon (mounted here until api.setup mounts it itself)."""
    config = Config()
    config.server.data_dir = tmp_path / "data"
    app = await create_app(config)
    if not any(getattr(r.resource, "canonical", None) == "/api/v1/gc" for r in app.router.routes()):
        app.router.add_post("/api/v1/gc", gc_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        await push_two_images(base)
        await app["store"].manifests.delete_tag("team/app", "a")
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/v1/gc", json={"dry_run": True, "grace_seconds": 0}) as resp:
                assert resp.status == 200
                dry = await resp.json()
            assert dry["dry_run"] is True and dry["blobs_deleted"] == 3 and dry["bytes_freed"] > 0
            async with http.post(f"{base}/api/v1/gc", json={"grace_seconds": 0}) as resp:
                real = await resp.json()
            assert real["blobs_deleted"] == 3 and real["manifests_deleted"] == 1
            async with http.get(f"{base}/v2/team/app/blobs/{sha256(ONLY_A)}") as resp:
                assert resp.status == 404
            async with http.post(f"{base}/api/v1/gc", json={"keep_days": -1, "colour": 1}) as resp:
                assert resp.status == 400
                assert "colour" in (await resp.json())["error"]["message"]
            async with http.post(f"{base}/api/v1/gc", json={"keep_days": "soon"}) as resp:
                assert resp.status == 400
                assert "keep_days" in (await resp.json())["error"]["message"]
        # The CLI's --url mode goes through the same route (a subprocess: this loop serves it).
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "envcache.cli", "gc", "--url", base, "--dry-run", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await cli.communicate()
        assert cli.returncode == 0, err.decode()
        assert json.loads(out)["dry_run"] is True and json.loads(out)["blobs_deleted"] == 0
    finally:
        await runner.cleanup()


async def _serve(config: Config) -> tuple[web.AppRunner, web.Application, str]:
    app = await create_app(config)
    if not any(getattr(r.resource, "canonical", None) == "/api/v1/gc" for r in app.router.routes()):
        app.router.add_post("/api/v1/gc", gc_handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, app, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_upload_receiving_bytes_survives_gc_then_completes(tmp_path: Path) -> None:
    config = Config()
    config.server.data_dir = tmp_path / "data"
    config.registry.upload_session_ttl = 1  # idle after a second; this one is busy, not idle
    runner, app, base = await _serve(config)
    data = os.urandom(256 * 1024)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v2/team/app/blobs/uploads/") as resp:
                location = resp.headers["Location"]
            release = asyncio.Event()

            async def slow() -> Any:
                yield data[:1024]
                await release.wait()
                yield data[1024:]

            patch = asyncio.create_task(http.patch(f"{base}{location}", data=slow()))
            await asyncio.sleep(1.5)
            async with http.post(f"{base}/api/v1/gc", json={"grace_seconds": 0}) as resp:
                report = await resp.json()
            assert resp.status == 200 and report["uploads_expired"] == 0
            release.set()
            async with await patch as resp:
                assert resp.status == 202
            async with http.put(f"{base}{resp.headers['Location']}", params={"digest": sha256(data)}) as resp:
                assert resp.status == 201, await resp.text()
        assert app["store"].files.path(sha256(data)).read_bytes() == data
    finally:
        await runner.cleanup()


async def test_daemon_that_does_not_own_its_store_refuses_gc(tmp_path: Path) -> None:
    holder = await open_store(tmp_path / "data")  # e.g. an offline `envcache gc` holding the lock
    config = Config()
    config.server.data_dir = tmp_path / "data"
    runner, app, base = await _serve(config)
    try:
        assert app["store"].owner is False
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/v1/gc") as resp:
                assert resp.status == 409
                assert "does not own" in (await resp.json())["error"]["message"]
    finally:
        await runner.cleanup()
        await holder.close()


async def test_gc_of_16k_dead_blobs_does_not_stall_other_requests(daemon_process, tmp_path: Path) -> None:
    """Issue 13 item 5 (gc half): 16k unreferenced blobs, each linked into a repository as pushes
    leave them. While ``envcache serve`` collects them, a client pinging ``/v2/`` every 10 ms must
    keep getting answers (before the index on ``repository_blobs(digest)`` and the batched sweep
    off the event loop, a ping waited seconds)."""
    data_dir = tmp_path / "data"
    store = await open_store(data_dir)
    try:
        digests = []
        async with store.transaction():
            for i in range(16000):
                data = b"dead blob %d" % i
                digest = sha256(data)
                path = store.files.path(digest)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                await store.blobs.restore(digest, len(data), None, 0.0)
                digests.append(digest)
            for start in range(0, len(digests), 1000):
                await store.blobs.link(f"team/app{start // 4000}", digests[start:start + 1000])
    finally:
        await store.close()
    proc = daemon_process(data_dir)
    gaps: list[float] = []

    async def ping(http: aiohttp.ClientSession, done: asyncio.Event) -> None:
        while not done.is_set():
            started = time.monotonic()
            async with http.get(f"{proc.url}/v2/") as resp:
                assert resp.status == 200
            gaps.append(time.monotonic() - started)
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as http:
        done = asyncio.Event()
        pinger = asyncio.create_task(ping(http, done))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        async with http.post(f"{proc.url}/api/v1/gc", json={"grace_seconds": 0},
                             timeout=aiohttp.ClientTimeout(total=300)) as resp:
            report = await resp.json()
        took = time.monotonic() - started
        done.set()
        await pinger
    assert resp.status == 200 and report["blobs_deleted"] == 16000, report
    assert not [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]
    assert max(gaps) < 1.0, f"a ping waited {max(gaps):.2f}s while gc ran for {took:.2f}s"
