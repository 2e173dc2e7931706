"""What the dashboard's pages read, against a real SQLite store and a real daemon: the keyset
listings, the activity time series (and its bound), the storage picture, and that the pages'
files ship in the wheel."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import aiohttp

from envcache.service.activity import HOUR, MINUTE, RETENTION, WINDOWS, Activity
from envcache.service.daemon import DAEMON
from envcache.store import BuildRecord, StoredImage, open_store
from envcache.store.gc import run_gc
from envcache.store.sqlite.schema import MIGRATIONS
from envcache.store.usage import ManifestGraph, storage_usage
from tests.fixtures.daemon import push_blob, push_image

LATER = 2 * 3600.0  # past gc's default one-hour grace period


async def test_migration_3_adds_the_activity_table_and_listing_indexes_to_a_version_2_database(
        tmp_path: Path) -> None:
    await (await open_store(tmp_path / "d")).close()
    indexes = ("idx_builds_created", "idx_builds_state_created", "idx_images_last_used_key", "idx_images_size",
               "idx_upstream_pushes_repository_tag")
    with sqlite3.connect(tmp_path / "d" / "envcache.db") as conn:   # what main's schema version 2 had
        conn.execute("DROP TABLE activity_counts")
        for index in indexes:
            conn.execute(f"DROP INDEX {index}")
        conn.execute("INSERT INTO builds (id, state, created) VALUES ('b1', 'succeeded', 1.0)")
        conn.execute("UPDATE schema_version SET version = 2")
    store = await open_store(tmp_path / "d")
    try:
        assert store.schema_version == len(MIGRATIONS)
        db = store.metadata.db
        assert "activity_counts" in db.table_names() and set(db["activity_counts"].pks) == {"resolution", "name",
                                                                                            "bucket"}
        assert set(indexes) <= {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert [b.id for b in await store.builds.page(5)] == ["b1"]
    finally:
        await store.close()


async def test_environment_pages_are_keyset_pages_by_name_with_a_literal_filter(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        names = ["alpha", "a_b", "axb", "beta", "100%", "gamma"]
        for name in names:
            await store.environments.register(name, "h1-" + name, {}, 1.0)
        await store.environments.register("beta", "h2", {}, 2.0)   # beta v2: the page shows the latest
        first = await store.environments.page(3)
        assert [(v.name, v.version) for v in first] == [("100%", 1), ("a_b", 1), ("alpha", 1)]
        second = await store.environments.page(3, after=first[-1].name)
        assert [(v.name, v.version) for v in second] == [("axb", 1), ("beta", 2), ("gamma", 1)]
        back = await store.environments.page(2, before="beta")
        assert [v.name for v in back] == ["alpha", "axb"]   # the two just before, still in name order
        assert [v.name for v in await store.environments.page(10, contains="_")] == ["a_b"]
        assert [v.name for v in await store.environments.page(10, contains="%")] == ["100%"]
        assert [v.name for v in await store.environments.page(10, contains="A")] == ["a_b", "alpha", "axb", "beta",
                                                                                    "gamma"]
        assert await store.environments.count() == 6 and await store.environments.count("_") == 1
    finally:
        await store.close()


def image(key: str, last_used: float, size: int, spec: str = "s") -> StoredImage:
    return StoredImage(key, "cpu", spec, b"{}", "envcache/env", f"{key}-cpu", "sha256:" + "0" * 64, size,
                       1.0, last_used)


async def test_image_and_build_listings_page_by_time_with_ties_broken_by_id(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        for key, used, size in [("k1", 10.0, 100), ("k2", 30.0, 200), ("k3", 30.0, 300), ("k4", 20.0, 400)]:
            await store.images.put(image(key, used, size, spec=f"s-{key}"))
        first = await store.images.page(2)
        assert [i.key for i in first] == ["k3", "k2"]
        assert [i.key for i in await store.images.page(2, (first[-1].last_used, first[-1].key))] == ["k4", "k1"]
        assert await store.images.totals() == (4, 1000)
        assert {i.key for i in await store.images.by_spec_hashes(["s-k1", "s-k4", "nope"])} == {"k1", "k4"}
        now = time.time()
        rows = [("b1", "k1", "succeeded", now - 50, now - 40, now - 10),   # 30 s
                ("b2", "k2", "failed", now - 40, now - 39, now - 38),
                ("b3", "k1", "succeeded", now - 30, now - 29, now - 19),   # 10 s
                ("b4", "k3", "running", now - 20, now - 19, None),
                ("b5", "k4", "succeeded", now - 10 * 86400, 1.0, 1000.0)]  # long, but long ago
        for build_id, key, state, created, started, finished in rows:
            await store.builds.save(BuildRecord(build_id, key, "cpu", "s", None, None, state, created, started,
                                                finished, None, "a log" if finished else None))
        listed = await store.builds.page(10)
        assert [b.id for b in listed] == ["b4", "b3", "b2", "b1", "b5"] and all(b.log is None for b in listed)
        assert [b.id for b in await store.builds.page(2, before=(listed[1].created, listed[1].id))] == ["b2", "b1"]
        assert [b.id for b in await store.builds.page(10, state="succeeded", key="k1")] == ["b3", "b1"]
        assert await store.builds.counts() == {"succeeded": 3, "failed": 1, "running": 1}
        assert [b.id for b in await store.builds.slowest(5, now - 86400)] == ["b1", "b3"]
    finally:
        await store.close()


class Clock:
    """A settable clock: the series' buckets depend on "now", and waiting an hour is not a test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_activity_series_is_dense_current_and_bounded(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        clock = Clock(1_800_000_000.0)
        activity = Activity(store.activity, clock)
        for _ in range(3):
            activity.count("hit")
        activity.count("built")
        await activity.flush()
        clock.now += 5 * MINUTE
        activity.count("hit")                     # not flushed yet: the series still shows it
        series = await activity.series(WINDOWS["1h"])
        assert len(series.times) == 60 and series.times[1] - series.times[0] == MINUTE
        assert series.values["hit"][-1] == 1 and series.values["hit"][-6] == 3 and series.total("hit") == 4
        assert series.total("built") == 1 and series.total("miss") == 0
        assert series.active_since() == series.times[-6]
        day = await activity.series(WINDOWS["24h"])
        assert day.total("hit") == 4 and len(day.times) == 96
        await activity.flush()
        assert (await activity.series(WINDOWS["30d"])).total("hit") == 4   # hourly rows were written too
        # Three days on, minute buckets are pruned (the hourly ones stay for the long windows).
        clock.now += 3 * 86400
        activity.count("pull")
        await activity.flush()
        rows = dict(store.metadata.db.execute(
            "SELECT resolution, count(*) FROM activity_counts GROUP BY resolution").fetchall())
        assert rows == {MINUTE: 1, HOUR: 3}
        assert (await activity.series(WINDOWS["7d"])).total("hit") == 4
        clock.now += RETENTION[HOUR]
        await activity.flush()
        assert store.metadata.db.execute("SELECT count(*) FROM activity_counts").fetchone()[0] == 0
    finally:
        await store.close()


async def test_lookups_and_pulls_are_counted_alike_for_prometheus_and_the_charts(daemon) -> None:
    definition = {"docker": {"base_image": "scratch"}}
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(daemon + "/api/v1/resolve", json={"definition": definition, "variant": "cpu"}) as r:
                assert r.status == 404
        await push_image(http, daemon, "team/app", "v1")
        for _ in range(3):
            async with http.get(daemon + "/v2/team/app/manifests/v1",
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}) as r:
                assert r.status == 200
        async with http.head(daemon + "/v2/team/app/manifests/v1") as r:   # a check, not a pull
            assert r.status == 200
        async with http.get(daemon + "/metrics") as r:
            assert 'envcache_misses_total{variant="cpu"} 2.0' in await r.text()
    series = await daemon.app[DAEMON].metrics.activity.series(WINDOWS["1h"])
    assert series.total("miss") == 2 and series.total("pull") == 3 and series.total("hit") == 0


SHARED = b"layer shared by an image and a stage " * 50
IMAGE_ONLY = b"layer only the image has " * 80
STAGE_ONLY = b"layer only the stage has " * 40
OTHER = b"somebody else's artifact " * 30
STRAY = b"uploaded, never referenced " * 20


async def test_storage_usage_counts_each_blob_once_under_the_first_kind_that_reaches_it(daemon) -> None:
    configs = {kind: b'{"os":"linux","kind":"%s"}' % kind.encode() for kind in ("images", "stages", "other")}
    async with aiohttp.ClientSession() as http:
        _, image_body = await push_image(http, daemon, "envcache/env", "key-cpu", config=configs["images"],
                                         layers=(SHARED, IMAGE_ONLY))
        _, stage_body = await push_image(http, daemon, "envcache/stage", "chain", config=configs["stages"],
                                         layers=(SHARED, STAGE_ONLY))
        _, other_body = await push_image(http, daemon, "team/tool", "v1", config=configs["other"], layers=(OTHER,))
        await push_blob(http, daemon, "team/tool", STRAY)
    store = daemon.store
    graph = ManifestGraph()
    now = await storage_usage(store, graph)
    # The shared layer counts once, under images (the first kind that reaches it); each manifest
    # body is a blob of its own kind.
    assert now.images == len(SHARED) + len(IMAGE_ONLY) + len(configs["images"]) + len(image_body)
    assert now.stages == len(STAGE_ONLY) + len(configs["stages"]) + len(stage_body)
    assert now.other == len(OTHER) + len(configs["other"]) + len(other_body)
    assert now.young == len(STRAY) and now.reclaimable == 0 and now.blobs["young"] == 1
    assert now.total == sum(row.size for row in await store.blobs.all())
    # Two hours on, the stray blob is what gc would free — exactly what gc's own dry run says.
    later = await storage_usage(store, graph, now=time.time() + LATER)
    assert later.reclaimable == len(STRAY) and later.young == 0
    report = await run_gc(store, dry_run=True, now=time.time() + LATER)
    assert report.blob_bytes_freed == later.reclaimable


def test_dashboard_templates_and_static_files_ship_in_the_wheel(tmp_path: Path) -> None:
    source = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(source)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("envcache-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(source).as_posix() for p in (source / "envcache" / "service" / "dashboard").rglob("*")
               if p.is_file() and p.suffix in (".html", ".css", ".js", ".svg") or p.name == "LICENSE"}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "envcache/service/dashboard/static/uplot/uPlot.iife.min.js" in names
