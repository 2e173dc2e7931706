"""Another envcache daemon as the shared upstream: its /v2 registry, with tokens on.

The envcache daemon answers with the Docker token flow (``Bearer realm=…/auth/token``), so this
exercises the client's bearer path against our own registry, plus cross-repository mount.
"""

from __future__ import annotations

import os
from pathlib import Path

from envcache.service.config import AuthConfig, Config, Token
from envcache.store import open_store
from envcache.upstream.config import parse_upstream
from envcache.upstream.push import push_status
from envcache.upstream.source import ENV_REPO, STAGE_REPO, UpstreamSource
from tests.fixtures.upstream import image_blobs, make_image, make_layer


async def test_envcache_daemon_as_upstream_with_tokens(tmp_path: Path, make_daemon) -> None:
    config = Config()
    config.auth = AuthConfig(tokens=[Token(token="team-write-token-0123456789abcdef0123456789", scopes=["read", "write"]),
                                      Token(token="laptop-read-token-0123456789abcdef0123456789", scopes=["read"])])
    upstream_daemon = await make_daemon(config)
    a, b = await open_store(tmp_path / "a"), await open_store(tmp_path / "b")
    writer = parse_upstream({"url": upstream_daemon, "prefix": "team", "username": "ci",
                             "password": "team-write-token-0123456789abcdef0123456789"})
    reader = parse_upstream({"url": upstream_daemon, "prefix": "team", "mode": "pull", "token": "laptop-read-token-0123456789abcdef0123456789"})
    try:
        shared = make_layer({"conda": os.urandom(512)})
        await make_image(a, STAGE_REPO, "stage-1", [shared])
        digest = await make_image(a, ENV_REPO, "key1-cpu", [shared, make_layer({"pip": b"top"})])
        source_a = UpstreamSource(a, [writer])
        await source_a.push_after_build(ENV_REPO, "key1-cpu")
        await source_a.pushes.drain(timeout=60)
        await source_a.aclose()
        rows = {r["repository"]: r for r in (await push_status(a.pushes))["recent"]}
        assert rows[STAGE_REPO]["state"] == rows[ENV_REPO]["state"] == "done", rows
        assert rows[ENV_REPO]["mounted"] == 1                 # shared layer mounted from team/stage
        assert (await upstream_daemon.store.get_manifest("team/env", "key1-cpu")).digest == digest

        source_b = UpstreamSource(b, [reader])
        hit = await source_b.try_pull("key1", "cpu")
        await source_b.aclose()
        assert hit is not None and hit.manifest_digest == digest
        assert await image_blobs(a, ENV_REPO, "key1-cpu") == await image_blobs(b, ENV_REPO, "key1-cpu")

        # A read-only token cannot publish: the push fails visibly, after its retries.
        source_r = UpstreamSource(b, [parse_upstream({"url": upstream_daemon, "prefix": "team",
                                                      "token": "laptop-read-token-0123456789abcdef0123456789"})],
                                  push_attempts=2, push_backoff=0.01)
        [push_id] = await source_r.push_after_build(ENV_REPO, "key1-cpu")
        await source_r.pushes.drain(timeout=30)
        await source_r.aclose()
        row = b.metadata.db["upstream_pushes"].get(push_id)
        assert row["state"] == "failed" and row["attempts"] == 2 and "403" in row["error"]

        anonymous = UpstreamSource(b, [parse_upstream({"url": upstream_daemon, "prefix": "team"})])
        assert await anonymous.try_pull("key2", "cpu") is None
        await anonymous.aclose()
        assert "authentication required" in anonymous.last_errors[0]
    finally:
        await a.close()
        await b.close()
