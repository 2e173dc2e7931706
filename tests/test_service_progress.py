"""Long work shows progress: a build that prints nothing for a while, ``warm`` (on a terminal and
in a CI log), a slow upstream pull, gc. Each is driven through the real CLI against a real daemon
process, and its output is timed as it arrives: no gap of 8 seconds or more."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import secrets
import struct
import sys
import termios
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.fixtures.daemon import push_image

#: The longest silence allowed (README: "no 8-second silences").
MAX_GAP = 8.0


async def timed_lines(*args: str, stderr_fd: int | None = None, env: dict[str, str] | None = None
                      ) -> tuple[int, str, list[tuple[float, str]]]:
    """Run ``envcache ARGS``; (exit status, stdout, [(arrival time, stderr line)])."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "envcache.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=stderr_fd if stderr_fd is not None else asyncio.subprocess.PIPE, env=env)
    lines: list[tuple[float, str]] = []

    async def read_stderr() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            lines.append((time.monotonic(), raw.decode().rstrip("\n")))

    assert proc.stdout is not None
    readers = [proc.stdout.read()] + ([read_stderr()] if stderr_fd is None else [])
    out, *_ = await asyncio.wait_for(asyncio.gather(*readers), 600)
    return await proc.wait(), out.decode(), lines


def gaps(stamps: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(stamps, stamps[1:])]


@pytest.fixture
def building_daemon(daemon_process, dockerd, tmp_path: Path):
    config = tmp_path / "envcache.toml"
    config.write_text(f'[build]\nengine = "docker"\ndocker_host = "{dockerd.host}"\ncompression = "gzip"\n')
    return daemon_process(tmp_path / "data", 0, config)


def slow_definition(path: Path, base: str, seconds: int) -> Path:
    """A build with a step that prints nothing for ``seconds``, then writes a 4 MB layer."""
    marker = secrets.token_hex(4)
    path.write_text(yaml.safe_dump({"docker": {"base_dockerfile": (
        f"FROM {base}\nRUN sleep {seconds} && head -c 4000000 /dev/urandom > /blob-{marker}\n")}}))
    return path


@pytest.mark.engine
async def test_a_silent_build_step_still_shows_progress(building_daemon, busybox_image, tmp_path: Path) -> None:
    env_file = slow_definition(tmp_path / "slow.yml", busybox_image, 14)
    code, out, lines = await timed_lines("ensure", str(env_file), "--variant", "cpu", "--url", building_daemon.url)
    assert code == 0 and out.strip().endswith("-cpu"), lines
    texts = [text for _, text in lines]
    assert max(gaps([stamp for stamp, _ in lines])) < MAX_GAP, lines
    assert any(text.startswith("  | envcache: still working, ") for text in texts), texts
    # Ingest says how many bytes each new layer had and how many it stored.
    ingest = [text for text in texts if text.startswith("  | ingest: layer ")]
    assert ingest and all(" bytes read, " in text and " stored, " in text for text in ingest), texts


@pytest.mark.engine
async def test_warm_shows_each_item_live_on_a_terminal_and_in_a_log(building_daemon, busybox_image,
                                                                     tmp_path: Path) -> None:
    envs = tmp_path / "envs"
    envs.mkdir()
    slow_definition(envs / "slow.yml", busybox_image, 12)
    (envs / "broken.yml").write_text("docker: {base_image: busybox, base_dockerfile: 'FROM busybox'}\n")
    # On a terminal: lines that stay, and a status line rewritten in place while the build runs.
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 400, 0, 0))  # 400 columns: no cut paths
    chunks: list[tuple[float, bytes]] = []
    loop = asyncio.get_running_loop()
    loop.add_reader(leader, lambda: chunks.append((time.monotonic(), os.read(leader, 65536))))
    try:
        code, out, _ = await timed_lines("warm", str(envs), "--variants", "cpu", "--url", building_daemon.url,
                                         stderr_fd=follower)
        await asyncio.sleep(0.2)
    finally:
        loop.remove_reader(leader)
        os.close(follower)
        os.close(leader)
    screen = b"".join(chunk for _, chunk in chunks).decode()
    assert code == 1, screen  # the broken definition fails its item, the other one is built
    assert max(gaps([stamp for stamp, _ in chunks])) < MAX_GAP, chunks
    assert f"warm: {envs}/slow.yml (cpu): started" in screen
    assert f"\nwarm: running: {envs}/slow.yml (cpu) " in screen             # the status line…
    assert f"\r\x1b[Kwarm: running: {envs}/slow.yml (cpu) " in screen     # …rewritten in place
    assert f"\r\x1b[Kwarm: {envs}/slow.yml (cpu): built in " in screen     # …and taken back for a line that stays
    assert f"warm: {envs}/slow.yml (cpu): built in " in screen
    assert f"warm: {envs}/broken.yml (cpu): failed: " in screen
    assert "built" in out and "1 built, 1 failed" in out

    # In a log (not a terminal): one plain line each, no cursor movement.
    code, out, lines = await timed_lines("warm", str(envs / "slow.yml"), "--variants", "cpu", "--url",
                                         building_daemon.url)
    texts = [text for _, text in lines]
    assert code == 0 and texts == [f"warm: {envs}/slow.yml (cpu): started",
                                   texts[1]] and texts[1].startswith(f"warm: {envs}/slow.yml (cpu): hit in "), texts
    assert "\x1b" not in "".join(texts)


async def slow_proxy(target: str, bytes_per_second: int) -> tuple[web.AppRunner, str]:
    """A loopback HTTP proxy to ``target`` that sends answers at ``bytes_per_second``: an upstream
    registry on a slow link."""
    async def forward(request: web.Request) -> web.StreamResponse:
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
            async with http.request(request.method, f"{target}{request.rel_url}", headers=headers,
                                    data=await request.read(), allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in ("transfer-encoding", "connection")})
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(bytes_per_second // 10):
                    await response.write(chunk)
                    await asyncio.sleep(0.1)
                await response.write_eof()
                return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_pulling_from_a_slow_upstream_reports_bytes(make_daemon, tmp_path: Path) -> None:
    upstream = await make_daemon()
    key = secrets.token_hex(16)
    layer = os.urandom(6_000_000)
    async with aiohttp.ClientSession() as http:
        await push_image(http, upstream, "team/env", f"{key}-cpu", layers=(layer,))
    runner, proxy = await slow_proxy(upstream, 1_000_000)   # ~6 s for the layer
    try:
        config = tmp_path / "envcache.toml"
        config.write_text(f'[[upstreams]]\nurl = "{proxy}"\nprefix = "team"\nmode = "pull"\n')
        code, out, lines = await timed_lines("pull", key, "--variant", "cpu", "--config", str(config),
                                             "--data", str(tmp_path / "data"))
    finally:
        await runner.cleanup()
    texts = [text for _, text in lines]
    assert code == 0 and out.startswith(f"pulled envcache/env:{key}-cpu "), (out, texts)
    progress = [text for text in texts if text.startswith(f"upstream: pulling team/env:{key}-cpu from {proxy}: ")]
    assert progress and progress[-1].endswith(" MB received"), texts
    assert max(gaps([stamp for stamp, _ in lines])) < MAX_GAP, lines
    assert "bytes copied" in out


async def test_gc_says_which_phase_it_is_in(daemon_process, tmp_path: Path) -> None:
    proc = daemon_process(tmp_path / "data")
    async with aiohttp.ClientSession() as http:
        await push_image(http, proc.url, "team/app", "v1")
    proc.stop()  # the data directory is free for an offline gc
    code, out, lines = await timed_lines("gc", "--data", str(proc.data_dir), "--grace", "0", "--json")
    assert code == 0 and json.loads(out)["blobs_deleted"] == 0
    assert [text for _, text in lines] == ["gc: marking what 1 manifests reach", "gc: listing blobs (files and index)",
                                           "gc: deleting 0 blob file(s)", "gc: expiring idle uploads"]
