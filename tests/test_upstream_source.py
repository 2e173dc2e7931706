"""The upstream source and push queue against a real registry, and against broken upstreams.

Broken upstreams are real loopback servers: a closed port (down), a TCP server that accepts and
never answers (stalled), and an aiohttp app that answers with wrong bytes (garbage). In each
case the source must answer "miss" quickly, report why, and leave no unverified blob or tag.
"""

from __future__ import annotations

import os
import time


from envcache.definition import Definition
from envcache.store import Store
from envcache.upstream.config import parse_upstream
from envcache.upstream.push import push_status
from envcache.upstream.source import ENV_REPO, STAGE_REPO, UpstreamSource
from tests.fixtures.processes import free_port
from tests.fixtures.upstream import image_blobs, make_image, make_layer


async def read_lock(store: Store, tag: str, repo: str, digest: str) -> dict[str, str]:
    """Stands in for the build side's lock reader."""
    return {"read": f"{repo}@{digest}"}


class _Prepared:
    """The fields of envcache.service.ensure.Prepared the source reads (a definition pinning no wheel)."""

    def __init__(self, key: str, variant: str = "cpu") -> None:
        self.key, self.variant, self.definition = key, variant, Definition()


async def test_push_after_build_then_pull_by_another_store(stores: tuple[Store, Store],
                                                           reference_registry: str) -> None:
    a, b = stores
    base, conda, top = (make_layer({n: os.urandom(128)}) for n in ("base", "conda", "top"))
    await make_image(a, STAGE_REPO, "stagekey1", [base])
    await make_image(a, STAGE_REPO, "stagekey2", [base, conda])
    await make_image(a, STAGE_REPO, "unrelated", [make_layer({"other": b"x"})])
    digest = await make_image(a, ENV_REPO, "imgkey-cpu", [base, conda, top])
    upstream = parse_upstream({"url": reference_registry, "prefix": "share1"})

    source_a = UpstreamSource(a, [upstream])
    try:
        assert sorted(await source_a.stages_of(ENV_REPO, "imgkey-cpu")) == ["stagekey1", "stagekey2"]
        ids = await source_a.push_after_build(ENV_REPO, "imgkey-cpu")
        assert len(ids) == 3
        await source_a.pushes.drain(timeout=60)
        status = await push_status(a.pushes)
        assert status["counts"]["done"] == 3 and status["counts"]["failed"] == 0
        env_row = next(r for r in status["recent"] if r["repository"] == ENV_REPO)
        # Stages went first; the image's shared layers were mounted from share1/stage, not re-sent.
        assert env_row["digest"] == digest and env_row["mounted"] == 2
        assert env_row["bytes"] < len(top) + 400                   # top layer + config only
    finally:
        await source_a.aclose()

    lines: list[str] = []
    source_b = UpstreamSource(b, [upstream], lock_reader=read_lock)
    try:
        assert await source_b(_Prepared("nosuchkey"), lines.append) is None
        assert any("not found" in line for line in lines)
        hit = await source_b(_Prepared("imgkey"), lines.append)
        assert hit is not None and hit.manifest_digest == digest and hit.tag == "imgkey-cpu"
        assert hit.lock == {"read": f"{ENV_REPO}@{digest}"}
        assert hit.size > len(base) + len(conda) + len(top)
        assert await image_blobs(a, ENV_REPO, "imgkey-cpu") == await image_blobs(b, ENV_REPO, "imgkey-cpu")
        assert source_b.counters["pull_hits"] == 1 and source_b.counters["pull_misses"] == 1
        # Stage reuse: a miss on the whole image still pulls the deepest stage upstream has.
        stage = await source_b.try_pull_stage(["stagekey1", "stagekey2", "notbuiltyet"])
        assert stage is not None and stage.tag == "stagekey2"
        assert await b.get_manifest(STAGE_REPO, "stagekey2") is not None
        assert await b.get_manifest(STAGE_REPO, "stagekey1") is None
    finally:
        await source_b.aclose()


async def test_stage_keys_hook_pulls_prefix_on_image_miss(stores: tuple[Store, Store], reference_registry: str) -> None:
    a, b = stores
    await make_image(a, STAGE_REPO, "pfx-base", [make_layer({"b": b"base"})])
    upstream = parse_upstream({"url": reference_registry, "prefix": "share2"})
    source_a = UpstreamSource(a, [upstream])
    await source_a.pushes.schedule(upstream, STAGE_REPO, "pfx-base")
    await source_a.pushes.drain(timeout=60)
    await source_a.aclose()
    async def stage_keys(prepared: _Prepared, log: object) -> list[str]:     # the build side computes them async
        return ["pfx-base", f"{prepared.key}-pip"]

    source_b = UpstreamSource(b, [upstream], stage_keys=stage_keys)
    try:
        lines: list[str] = []
        assert await source_b(_Prepared("fresh"), lines.append) is None   # image: miss → build
        assert await b.get_manifest(STAGE_REPO, "pfx-base") is not None        # but the prefix is here
        assert source_b.counters["stage_pulls"] == 1
    finally:
        await source_b.aclose()


async def test_upstream_down_is_a_reported_miss(stores: tuple[Store, Store]) -> None:
    _, b = stores
    upstream = parse_upstream({"url": f"http://127.0.0.1:{free_port()}", "timeout": 2})
    source = UpstreamSource(b, [upstream])
    lines: list[str] = []
    try:
        assert await source(_Prepared("k"), lines.append) is None
    finally:
        await source.aclose()
    assert "cannot connect" in source.last_errors[0] and source.counters["pull_errors"] == 1
    assert any("falling back" in line for line in lines)


async def test_stalled_upstream_times_out(stores: tuple[Store, Store], stalled_server: str) -> None:
    _, b = stores
    source = UpstreamSource(b, [parse_upstream({"url": stalled_server, "timeout": 0.5})])
    began = time.monotonic()
    try:
        assert await source(_Prepared("k"), lambda _l: None) is None
    finally:
        await source.aclose()
    assert time.monotonic() - began < 5
    assert "timed out" in source.last_errors[0]


async def test_garbage_upstream_stores_nothing_unverified(stores: tuple[Store, Store],
                                                         garbage_registry: tuple[str, dict[str, str]]) -> None:
    _, b = stores
    url, digests = garbage_registry
    source = UpstreamSource(b, [parse_upstream({"url": url, "timeout": 5})])
    try:
        for key in ("badlayer", "notjson", "liar", "servererror", "oversize"):
            assert await source.try_pull(key, "cpu") is None
    finally:
        await source.aclose()
    errors = "\n".join(source.last_errors)
    assert "failed verification" in errors and "not JSON" in errors
    assert "digest mismatch" in errors and "HTTP 500" in errors
    assert "sent more than the 8 bytes its manifest declares" in errors
    assert not await b.has_blob(digests["layer"])                   # the lying blob never landed
    assert await b.manifests.tags(ENV_REPO) == []
    assert list((b.data_dir / "tmp").iterdir()) == []             # no half-written temp files


async def test_failed_push_is_retried_then_visible(stores: tuple[Store, Store]) -> None:
    a, _ = stores
    await make_image(a, ENV_REPO, "k-cpu", [make_layer({"x": b"1"})])
    down = parse_upstream({"url": f"http://127.0.0.1:{free_port()}", "timeout": 2})
    source = UpstreamSource(a, [down], push_attempts=3, push_backoff=0.05)
    try:
        began = time.monotonic()
        [push_id] = await source.push_after_build(ENV_REPO, "k-cpu")
        await source.pushes.drain(timeout=30)
        assert time.monotonic() - began >= 0.05 + 0.1           # backoff 0.05 then 0.1 was honoured
    finally:
        await source.aclose()
    row = a.metadata.db["upstream_pushes"].get(push_id)
    assert row["state"] == "failed" and row["attempts"] == 3 and "cannot connect" in row["error"]
    assert (await source.status())["pushes"]["counts"]["failed"] == 1


async def test_unfinished_pushes_resume_after_restart(stores: tuple[Store, Store], reference_registry: str) -> None:
    a, _ = stores
    await make_image(a, ENV_REPO, "resume-cpu", [make_layer({"r": b"resume"})])
    upstream = parse_upstream({"url": reference_registry, "prefix": "resume"})
    stopping = UpstreamSource(a, [upstream])
    [push_id] = await stopping.push_after_build(ENV_REPO, "resume-cpu")
    await stopping.aclose()                       # the daemon stops before the push ran
    assert a.metadata.db["upstream_pushes"].get(push_id)["state"] == "queued"
    restarted = UpstreamSource(a, [upstream])
    try:
        assert await restarted.pushes.resume(restarted.upstreams) == 1
        await restarted.pushes.drain(timeout=60)
    finally:
        await restarted.aclose()
    row = a.metadata.db["upstream_pushes"].get(push_id)
    assert row["state"] == "done" and row["digest"] == (await a.get_manifest(ENV_REPO, "resume-cpu")).digest
