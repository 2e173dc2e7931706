"""fsck over a real daemon's store, and the gc/fsck CLI over a real ``envcache serve`` data dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp

from envcache.store import Store, open_store
from envcache.store.fsck import run_fsck
from tests.fixtures.daemon import push_blob, push_image, sha256

LAYERS = (b"layer-one" * 50, b"layer-two" * 70)
CONFIG = b'{"architecture":"amd64","os":"linux"}'


def envcache(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envcache.cli", *args], capture_output=True, text=True, timeout=60)


async def test_clean_store_has_no_problems(daemon) -> None:
    async with aiohttp.ClientSession() as http:
        await push_image(http, daemon, "team/app", "v1", config=CONFIG, layers=LAYERS)
    report = await run_fsck(daemon.store)
    assert report.problems == 0 and report.unrepaired == 0
    assert report.blobs_checked == 4 and report.bytes_checked > sum(map(len, LAYERS))


async def test_corrupt_file_is_reported_then_quarantined(daemon) -> None:
    store: Store = daemon.store
    async with aiohttp.ClientSession() as http:
        manifest, _ = await push_image(http, daemon, "team/app", "v1", config=CONFIG, layers=LAYERS)
    layer = sha256(LAYERS[1])
    path = store.files.path(layer)
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01
    path.write_bytes(bytes(data))

    report = await run_fsck(store)
    assert [item.split()[0] for item in report.corrupt] == [layer]
    assert report.unrepaired == report.problems > 0
    assert path.is_file() and not (store.data_dir / "quarantine").exists()  # report only: untouched

    repaired = await run_fsck(store, repair=True)
    assert not path.exists()
    quarantined = store.data_dir / "quarantine" / layer.replace(":", "-")
    assert repaired.quarantined == [str(quarantined)] and quarantined.read_bytes() == bytes(data)
    assert store.metadata.db.execute("SELECT 1 FROM blobs WHERE digest = ?", [layer]).fetchone() is None
    # The manifest now names a blob nobody has: reported, and fsck cannot invent it.
    assert repaired.dangling_manifests == [f"team/app@{manifest}: missing blob {layer}"]
    assert repaired.unrepaired == 1
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon}/v2/team/app/blobs/{layer}") as resp:
            assert resp.status == 404
        await push_blob(http, daemon, "team/app", LAYERS[1])  # re-pushing the layer heals it
    assert (await run_fsck(store)).problems == 0


async def test_deleted_row_and_links_are_restored_from_the_files(daemon) -> None:
    store: Store = daemon.store
    async with aiohttp.ClientSession() as http:
        await push_image(http, daemon, "team/app", "v1", config=CONFIG, layers=LAYERS)
    layer = sha256(LAYERS[0])
    with store.metadata.db.conn:
        store.metadata.db.execute("DELETE FROM blobs WHERE digest = ?", [layer])
        store.metadata.db.execute("DELETE FROM repository_blobs WHERE digest = ?", [sha256(CONFIG)])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon}/v2/team/app/blobs/{sha256(CONFIG)}") as resp:
            assert resp.status == 404

    report = await run_fsck(store, repair=True)

    assert report.rows_missing == [layer]
    assert report.links_missing == [f"team/app {sha256(CONFIG)}"]
    assert report.unrepaired == 0
    row = store.metadata.db["blobs"].get(layer)
    assert row["size"] == len(LAYERS[0]) and row["media_type"] == "application/vnd.oci.image.layer.v1.tar"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon}/v2/team/app/blobs/{sha256(CONFIG)}") as resp:
            assert resp.status == 200 and await resp.read() == CONFIG
    assert (await run_fsck(store)).problems == 0


async def test_missing_files_are_reported_and_their_rows_dropped(daemon) -> None:
    store: Store = daemon.store
    async with aiohttp.ClientSession() as http:
        manifest, _ = await push_image(http, daemon, "team/app", "v1", config=CONFIG, layers=LAYERS)
        other, _ = await push_image(http, daemon, "team/app", "v2", layers=(b"other",))
    store.metadata.db["images"].insert({"key": "k", "variant": "cpu", "repository": "team/app", "tag": "v2",
                               "manifest_digest": other, "last_used": 0.0})
    store.files.path(sha256(LAYERS[0])).unlink()
    store.files.path(other).unlink()  # a manifest body: that manifest is unknowable now

    report = await run_fsck(store)
    assert report.files_missing == sorted([sha256(LAYERS[0]), other])
    assert report.manifests_missing == [f"team/app@{other}"]
    assert report.tags_dangling == ["team/app:v2"] and report.images_dangling == ["k"]
    assert report.dangling_manifests == [f"team/app@{manifest}: missing blob {sha256(LAYERS[0])}"]

    repaired = await run_fsck(store, repair=True)
    assert repaired.unrepaired == 1  # only the manifest naming the lost layer remains wrong
    assert store.metadata.db.execute("SELECT COUNT(*) FROM blobs WHERE digest IN (?, ?)",
                            [sha256(LAYERS[0]), other]).fetchone()[0] == 0
    assert await store.manifests.tags("team/app") == ["v1"]
    assert store.metadata.db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 0
    assert (await run_fsck(store)).problems == 1


async def test_stray_file_in_blob_tree_is_quarantined(daemon) -> None:
    store: Store = daemon.store
    stray = store.files.root / "sha256" / "zz-not-a-blob"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"?")
    report = await run_fsck(store, repair=True)
    assert report.stray_files == ["blobs/sha256/zz-not-a-blob"] and report.unrepaired == 0
    assert not stray.exists() and (store.data_dir / "quarantine" / "stray-zz-not-a-blob").read_bytes() == b"?"


async def test_cli_refuses_a_running_daemons_store_then_works_offline(daemon_process, tmp_path: Path) -> None:
    proc = daemon_process(tmp_path / "data")
    async with aiohttp.ClientSession() as http:
        await push_image(http, proc.url, "team/app", "a", config=CONFIG, layers=LAYERS)
        await push_image(http, proc.url, "team/app", "b", layers=(LAYERS[0],))
        async with http.delete(f"{proc.url}/v2/team/app/manifests/a") as resp:
            assert resp.status == 202
    data = str(proc.data_dir)

    busy = envcache("gc", "--data", data)
    assert busy.returncode == 1
    assert "in use by a running envcache daemon" in busy.stderr and "--url" in busy.stderr
    assert "Traceback" not in busy.stderr
    busy = envcache("fsck", "--repair", "--data", data)
    assert busy.returncode == 1 and "stop the daemon first" in busy.stderr
    readonly = envcache("fsck", "--data", data)  # report-only is fine beside a daemon
    assert readonly.returncode == 0 and "no problems found" in readonly.stdout
    proc.stop()

    dry = envcache("gc", "--data", data, "--dry-run", "--grace", "0", "--json")
    assert dry.returncode == 0, dry.stderr
    predicted = json.loads(dry.stdout)
    assert predicted["dry_run"] is True and predicted["blobs_deleted"] == 2  # manifest a + its own layer (config is shared)
    real = envcache("gc", "--data", data, "--grace", "0")
    assert real.returncode == 0, real.stderr
    assert "gc: freed" in real.stdout and f"({predicted['bytes_freed']} bytes)" in real.stdout
    assert "blobs deleted:      2" in real.stdout

    store = await open_store(proc.data_dir)
    try:
        store.files.path(sha256(LAYERS[0])).write_bytes(b"bit rot")
    finally:
        await store.close()
    found = envcache("fsck", "--data", data, "--json")
    assert found.returncode == 1 and json.loads(found.stdout)["corrupt"][0].startswith(sha256(LAYERS[0]))
    fixed = envcache("fsck", "--data", data, "--repair")
    assert fixed.returncode == 1  # manifest b now names a quarantined layer: not repairable from files
    assert "quarantined" in fixed.stdout and "re-push it or delete the tag" in fixed.stdout

    bad = envcache("gc", "--data", data, "--keep-days", "-3")
    assert bad.returncode == 2 and "--keep-days" in bad.stderr
    missing = envcache("gc", "--data", str(tmp_path / "nowhere"))
    assert missing.returncode == 3 and "no envcache data directory" in missing.stderr


async def test_crash_leftovers_are_a_note_not_a_problem(daemon_process, tmp_path: Path) -> None:
    """What a kill -9 between the steps of a write leaves — a verified blob file whose row was
    never committed, spool bytes of a session never created, a temp file — is harmless (nothing
    names it; the next gc removes it): fsck says so and exits 0. Real problems still exit 1."""
    proc = daemon_process(tmp_path / "data")
    async with aiohttp.ClientSession() as http:
        await push_image(http, proc.url, "team/app", "v1", config=CONFIG, layers=LAYERS)
    orphan = b"pushed, never acknowledged" * 100
    path = proc.data_dir / "blobs" / "sha256" / sha256(orphan)[7:9] / sha256(orphan)[7:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orphan)
    (proc.data_dir / "uploads" / "3f0e1d9c-0000-4000-8000-000000000000").write_bytes(b"half a chunk")

    found = envcache("fsck", "--data", str(proc.data_dir))
    assert found.returncode == 0, found.stdout + found.stderr
    assert "no problems found" in found.stdout and sha256(orphan) in found.stdout
    assert "orphan" in found.stdout and "next gc" in found.stdout
    as_json = json.loads(envcache("fsck", "--data", str(proc.data_dir), "--json").stdout)
    assert as_json["problems"] == 0 and as_json["orphan_files"] == [sha256(orphan)]

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{proc.url}/api/v1/gc", json={"grace_seconds": 0}) as resp:
            assert resp.status == 200 and (await resp.json())["blobs_deleted"] == 1
    assert not path.exists()
    clean = envcache("fsck", "--data", str(proc.data_dir))
    assert clean.returncode == 0 and "orphan" not in clean.stdout

    proc.stop()
    store = await open_store(proc.data_dir)
    try:
        store.files.path(sha256(LAYERS[1])).write_bytes(b"bit rot")
    finally:
        await store.close()
    assert envcache("fsck", "--data", str(proc.data_dir)).returncode == 1
