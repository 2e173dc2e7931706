"""Timeouts, the connection cap and the log under abuse (issue 13, items 6 and 11), against
``envcache serve`` as a real process with real sockets and a real file-descriptor limit.

Before: 200 half-sent requests were never closed; with 1,024 file descriptors, 1,100 idle
sockets made new clients time out and 600 stalled uploads made pushes fail with 500; the log
grew by tracebacks per failure; a port conflict was a traceback that left an empty data
directory behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.fixtures.daemon import push_image, sha256
from tests.fixtures.abuse import closed_by_server, open_sockets

IDLE = 2      # [server] idle_timeout in these tests
BODY = 2      # [server] body_timeout


def config_file(tmp_path: Path, **server: int) -> Path:
    path = tmp_path / "envcache.toml"
    lines = [f"{key} = {value}" for key, value in {"idle_timeout": IDLE, "body_timeout": BODY, **server}.items()]
    path.write_text("[server]\n" + "\n".join(lines) + "\n")
    return path


async def response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP response (head and Content-Length body), without waiting for the connection to close."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    return head + await reader.readexactly(length)


async def health(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.get(f"{url}/api/v1/health") as resp:
            return resp.status, await resp.json(content_type=None)


def log_of(proc) -> str:
    """The daemon's own messages: the access log (one line per request, on by default) left out,
    since these tests count what the daemon says about trouble, not how many requests it served."""
    return "".join(line for line in proc.log.read_text(errors="replace").splitlines(keepends=True)
                   if '"method": ' not in line)


async def test_half_sent_trickling_and_silent_connections_are_closed(daemon_process, tmp_path: Path) -> None:
    proc = daemon_process(config=config_file(tmp_path))
    half = await open_sockets(proc.port, 100, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
    silent = await open_sockets(proc.port, 50)
    trickling = await open_sockets(proc.port, 50, b"G")
    try:
        deadline = time.monotonic() + IDLE + 3
        while time.monotonic() < deadline:
            for sock in trickling:  # a header byte every 0.2 s never pushes the deadline back
                with contextlib.suppress(OSError):
                    sock.send(b"E")
            assert (await health(proc.url))[0] == 200  # everyone else is served meanwhile
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        still_open = [s for s in half + silent + trickling if not closed_by_server(s)]
        assert not still_open, f"{len(still_open)} of 200 connections still open after {IDLE + 3.5}s"
    finally:
        for sock in half + silent + trickling:
            sock.close()


async def test_a_stalled_body_is_answered_408_and_nothing_of_it_is_kept(daemon_process, tmp_path: Path) -> None:
    proc = daemon_process(config=config_file(tmp_path))
    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
    writer.write(b"POST /api/v1/resolve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"definition\"")
    started = time.monotonic()
    answer = await asyncio.wait_for(response(reader), BODY + 15)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"status": 408' in answer and b"no request body data" in answer
    assert time.monotonic() - started < BODY + 5

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{proc.url}/v2/team/app/blobs/uploads/") as resp:
            assert resp.status == 202
            location = resp.headers["Location"]
        async with http.patch(f"{proc.url}{location}", data=b"a" * 100,
                              headers={"Content-Type": "application/octet-stream"}) as resp:
            assert resp.status == 202 and resp.headers["Range"] == "0-99"
    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
    writer.write(f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                 f"Content-Length: 1000000\r\n\r\n".encode() + b"b" * 5000)
    answer = await asyncio.wait_for(response(reader), BODY + 15)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ") and b"BLOB_UPLOAD_INVALID" in answer, answer[:300]
    async with aiohttp.ClientSession() as http:  # the stalled chunk was not acknowledged
        async with http.get(f"{proc.url}{location}") as resp:
            assert resp.status == 204 and resp.headers["Range"] == "0-99"


async def test_1100_idle_sockets_under_a_1024_descriptor_limit(daemon_process, tmp_path: Path) -> None:
    proc = daemon_process(config=config_file(tmp_path, idle_timeout=4), open_files=1024)
    idle = await open_sockets(proc.port, 1100)
    try:
        # New clients get an answer at once: served, or a clean 503 (JSON, Retry-After).
        for _ in range(5):
            status, body = await health(proc.url, timeout=5)
            assert status == 200 or (status == 503 and "retry" in body["error"]["message"]), (status, body)
        assert sum(closed_by_server(s) for s in idle) >= 1100 - 900  # everything past the cap was refused
        await asyncio.sleep(4 + 2)
        assert (await health(proc.url))[0] == 200
        assert sum(closed_by_server(s) for s in idle) == 1100  # and the idle ones timed out
    finally:
        for sock in idle:
            sock.close()
    log = log_of(proc)
    assert "Too many open files" not in log and len(log) < 20_000, log[-3000:]


async def test_600_stalled_uploads_then_a_push_succeeds(daemon_process, tmp_path: Path) -> None:
    proc = daemon_process(config=config_file(tmp_path, body_timeout=3), open_files=1024)
    async with aiohttp.ClientSession() as http:
        locations = []
        for _ in range(600):
            async with http.post(f"{proc.url}/v2/stalled/blobs/uploads/") as resp:
                assert resp.status == 202
                locations.append(resp.headers["Location"])
    stalled = []
    loop = asyncio.get_running_loop()
    for location in locations:
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", proc.port))
        await loop.sock_sendall(sock, f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n"
                                      "Content-Type: application/octet-stream\r\n\r\n".encode() + b"x" * 1000)
        stalled.append(sock)
    statuses = []
    try:
        deadline = time.monotonic() + 40
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    digest, _ = await push_image(http, proc.url, "team/app", "v1", layers=(b"fresh layer",))
                    break
                except AssertionError as exc:  # push_image asserts 201; a 503 refusal is expected meanwhile
                    statuses.append(str(exc)[:200])
                    assert "TOOMANYREQUESTS" in str(exc) and "INTERNAL" not in str(exc), exc
                except aiohttp.ClientError as exc:
                    statuses.append(repr(exc))
                assert time.monotonic() < deadline, statuses[-5:]
                await asyncio.sleep(0.5)
            async with http.get(f"{proc.url}/v2/team/app/manifests/v1",
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}) as resp:
                assert resp.status == 200 and resp.headers["Docker-Content-Digest"] == digest
            async with http.get(f"{proc.url}/v2/team/app/blobs/{sha256(b'fresh layer')}") as resp:
                assert await resp.read() == b"fresh layer"
    finally:
        for sock in stalled:
            sock.close()
    log = log_of(proc)
    assert "Too many open files" not in log and len(log) < 20_000, log[-3000:]
    assert '"status": 500' not in proc.log.read_text(errors="replace")


async def test_repeated_errors_are_logged_once_per_minute(daemon_process, tmp_path: Path) -> None:
    # A cap above what the descriptors allow: accept() itself fails, again and again.
    proc = daemon_process(config=config_file(tmp_path, max_connections=5000, idle_timeout=30), open_files=100)
    idle = await open_sockets(proc.port, 150)  # beyond the descriptors, within the listen backlog
    try:
        await asyncio.sleep(4)  # asyncio retries accept() every second, logging each failure
    finally:
        for sock in idle:
            sock.close()
    log = log_of(proc)
    assert log.count("out of system resource") == 1, log[-3000:]
    assert log.count("Traceback") <= 1 and len(log) < 10_000, log[-3000:]


def test_a_port_conflict_is_one_clear_line_and_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "data"
        result = subprocess.run([sys.executable, "-m", "envcache.cli", "serve", "--port", str(port), "--data", str(data)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result
    assert result.stderr.startswith(f"envcache: error: cannot listen on 127.0.0.1:{port}: the port is already in use")
    assert "--port" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not data.exists()


@pytest.mark.parametrize("bad", ["short", " " * 40, " padded-token-0123456789abcdef0123456789 "])
def test_weak_tokens_are_a_config_error(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "envcache.toml"
    path.write_text(f"[[auth.tokens]]\ntoken = {json.dumps(bad)}\n")
    data = tmp_path / "data"
    result = subprocess.run([sys.executable, "-m", "envcache.cli", "serve", "--config", str(path), "--data", str(data),
                             "--port", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "auth.tokens[0]" in result.stderr and "Traceback" not in result.stderr, result
    assert not data.exists()
