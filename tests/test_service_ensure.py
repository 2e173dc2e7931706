"""The ensure machinery: single-flight, build queue, log fan-out, base-digest cache.

These tests are about the machinery, not about building: the "work" is a real coroutine that
takes time, writes log lines and returns an image record, so the tests can hold a build open,
count how often work started, and cancel waiters at exact moments. Real builds on a real
engine are exercised through the daemon in test_service_builds.py; refresh, which only means
something with a real resolver, in test_build_locks.py.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from envcache import definition as spec
from envcache.service.ensure import BuildError, Ensurer, KeyCollision
from envcache.oci import normalise_reference
from envcache.builder.keys import image_key
from envcache.service.bases import BaseDigestResolver, BaseImageUnresolvable
from envcache.store import Store, open_store

DIGEST = "sha256:" + "ab" * 32


@dataclass
class Built:
    repository: str
    tag: str
    manifest_digest: str
    size: int
    lock: dict
    compression: str = ""


@dataclass
class Work:
    """Stands in for a build: blocks until released, logs, counts how often it started."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[str] = field(default_factory=list)
    fail: bool = False
    lock: dict = field(default_factory=lambda: {"pip": {"six": "1.16.0"}})

    async def __call__(self, prepared, log):
        key, variant = prepared.key, prepared.variant
        self.calls.append(key)
        log("step 1/2: working")
        await self.release.wait()
        log("step 2/2: done")
        if self.fail:
            raise RuntimeError("the work failed on purpose")
        digest = "sha256:%064x" % len(self.calls)
        return Built("envcache/env", f"{key}-{variant}", digest, 1234, dict(self.lock))


def definition(name: str = "demo", value: str = "1"):
    return spec.definition_from_dict({"name": name, "docker": {"base_image": "busybox:1.36"},
                                      "environment_variables": {"VALUE": value}})


async def fixed(reference: str, **_: object) -> str:
    return DIGEST


async def make(tmp_path: Path, work: Work, concurrency: int = 2, resolvers=(fixed,)) -> tuple[Ensurer, Store]:
    store = await open_store(tmp_path)
    resolver = BaseDigestResolver(store.base_digests, list(resolvers), ttl=3600)
    ensurer = Ensurer(store=store, resolver=resolver, builder=work, recipe_version="1",
                      variant_bases={}, concurrency=concurrency)
    await ensurer.start()
    return ensurer, store


async def test_32_concurrent_ensures_share_one_build_and_one_answer(tmp_path: Path) -> None:
    work = Work()
    ensurer, store = await make(tmp_path, work)
    outcomes = await asyncio.gather(*(ensurer.ensure(definition(), "cpu") for _ in range(32)))
    builds = {o.build.id for o in outcomes}
    assert len(builds) == 1 and all(o.image is None for o in outcomes)
    work.release.set()
    images = await asyncio.gather(*(o.build.wait() for o in outcomes))
    assert work.calls == [outcomes[0].prepared.key]
    assert len({json.dumps(i.to_json("h:1"), sort_keys=True) for i in images}) == 1
    assert store.metadata.db.execute("select count(*) from builds").fetchone()[0] == 1
    # And now it is a hit, without any new work, also for the same content under another name.
    again = await ensurer.ensure(definition(name="renamed"), "cpu")
    assert again.status == "hit" and again.image.manifest_digest == images[0].manifest_digest
    assert len(work.calls) == 1


async def test_every_follower_gets_the_whole_log_whenever_it_joins(tmp_path: Path) -> None:
    work = Work()
    ensurer, _ = await make(tmp_path, work)
    build = (await ensurer.ensure(definition(), "cpu")).build

    async def collect() -> list[str]:
        return [line async for line in build.follow()]

    early = asyncio.create_task(collect())
    await asyncio.sleep(0.05)
    late = asyncio.create_task(collect())
    work.release.set()
    await build.wait()
    after = await collect()
    lines = await early
    assert lines == await late == after
    assert any("step 1/2" in line for line in lines) and any("step 2/2" in line for line in lines)


async def test_a_waiter_that_goes_away_does_not_cancel_the_build(tmp_path: Path) -> None:
    work = Work()
    ensurer, _ = await make(tmp_path, work)
    build = (await ensurer.ensure(definition(), "cpu")).build
    leaver = asyncio.create_task(build.wait())
    stayer = asyncio.create_task(build.wait())
    await asyncio.sleep(0.05)
    leaver.cancel()
    work.release.set()
    image = await stayer
    assert build.state == "succeeded" and image.key == build.key


async def test_builds_queue_behind_the_concurrency_limit(tmp_path: Path) -> None:
    work = Work()
    ensurer, _ = await make(tmp_path, work, concurrency=1)
    first = (await ensurer.ensure(definition(value="1"), "cpu")).build
    second = (await ensurer.ensure(definition(value="2"), "cpu")).build
    await asyncio.sleep(0.05)
    assert (first.state, second.state) == ("running", "queued")
    assert ensurer.queue_depth() == 1 and ensurer.running() == 1 and len(work.calls) == 1
    work.release.set()
    await asyncio.gather(first.wait(), second.wait())
    assert ensurer.queue_depth() == 0 and len(work.calls) == 2


async def test_a_failed_build_is_reported_and_not_cached(tmp_path: Path) -> None:
    work = Work(fail=True)
    ensurer, store = await make(tmp_path, work)
    build = (await ensurer.ensure(definition(), "cpu")).build
    work.release.set()
    with pytest.raises(BuildError, match="failed on purpose"):
        await build.wait()
    row = store.metadata.db.execute("select state, error, log from builds where id = ?", [build.id]).fetchone()
    assert row[0] == "failed" and "failed on purpose" in row[1] and "step 1/2" in row[2]
    work.fail = False
    retry = await ensurer.ensure(definition(), "cpu")
    assert retry.build is not None and retry.build.id != build.id
    await retry.build.wait()
    # A finished build is still answerable from SQLite once it has left memory.
    ensurer._builds.clear()
    assert (await ensurer.get_build(build.id)).state == "failed"
    assert (await ensurer.get_build(retry.build.id)).image.key == retry.build.key


async def test_a_key_collision_is_refused_not_answered(tmp_path: Path) -> None:
    work = Work()
    work.release.set()
    ensurer, store = await make(tmp_path, work)
    await (await ensurer.ensure(definition(), "cpu")).build.wait()
    prepared = await ensurer.prepare(definition(), "cpu")
    store.metadata.db.execute("update images set canonical = ? where key = ?", [b'{"other":1}', prepared.key])
    store.metadata.db.conn.commit()
    with pytest.raises(KeyCollision):
        await ensurer.lookup(prepared)


async def test_variants_and_bases_and_recipes_give_different_keys() -> None:
    keys = {image_key("h", v, d, r) for v in ("cpu", "gpu") for d in ("sha256:1", "sha256:2") for r in ("1", "2")}
    assert len(keys) == 8
    assert normalise_reference("ubuntu") == "docker.io/library/ubuntu:latest"
    assert normalise_reference("127.0.0.1:5000/base/x") == "127.0.0.1:5000/base/x:latest"


async def test_base_digests_are_cached_and_survive_an_unreachable_registry(tmp_path: Path) -> None:
    calls: list[str] = []
    online = True

    async def registry(reference: str, **_: object) -> str | None:
        calls.append(reference)
        await asyncio.sleep(0.02)
        if not online:
            raise ConnectionError("registry unreachable")
        return DIGEST

    store = await open_store(tmp_path)
    resolver = BaseDigestResolver(store.base_digests, [registry], ttl=3600)
    results = await asyncio.gather(*(resolver.resolve("docker.io/library/busybox:1.36") for _ in range(10)))
    assert set(results) == {DIGEST} and len(calls) == 1  # one lookup for the burst, then cached
    assert await resolver.resolve("docker.io/library/busybox:1.36") == DIGEST and len(calls) == 1
    # A new daemon (empty memory cache) with the registry down falls back to the last known digest.
    online = False
    offline = BaseDigestResolver(store.base_digests, [registry], ttl=3600)
    assert await offline.resolve("docker.io/library/busybox:1.36") == DIGEST
    with pytest.raises(BaseImageUnresolvable, match="never-seen"):
        await offline.resolve("docker.io/library/never-seen:1")


async def test_builds_left_running_by_a_dead_daemon_are_marked_failed(tmp_path: Path) -> None:
    work = Work()
    ensurer, store = await make(tmp_path, work)
    build = (await ensurer.ensure(definition(), "cpu")).build
    await asyncio.sleep(0.02)
    restarted, _ = await make(tmp_path, Work())
    state, error = store.metadata.db.execute("select state, error from builds where id = ?", [build.id]).fetchone()
    assert state == "failed" and "interrupted" in error
    work.release.set()
    await build.wait()
    await restarted.close()
