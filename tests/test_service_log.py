"""The daemon's log, read from a real ``envcache serve`` process: one line per request (JSON or
text), request ids answered and carried into build logs, tokens named but never shown."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp

READ_TOKEN = "laptop-token-never-in-the-log-0123456789"
WRITE_TOKEN = "ci-token-never-in-the-log-abcdefghijklmn"


def write_config(tmp_path: Path, log_format: str) -> Path:
    config = tmp_path / f"envcache-{log_format}.toml"
    config.write_text(f'''
[auth]
tokens = [{{token = "{READ_TOKEN}", scopes = ["read"], name = "laptops"}},
          {{token = "{WRITE_TOKEN}", scopes = ["read", "write"]}}]
[build]
engine = "none"
[log]
format = "{log_format}"
''')
    return config


def log_lines(proc, until: str, timeout: float = 15) -> list[str]:
    """The daemon's output so far, once a line containing ``until`` is in it (lines are written
    after each answer is sent)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = proc.log.read_text(errors="replace").splitlines()
        if any(until in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


async def test_json_access_log_request_ids_and_token_names(daemon_process, tmp_path: Path) -> None:
    proc = daemon_process(tmp_path / "data", 0, write_config(tmp_path, "json"))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proc.url}/api/v1/health", headers={"X-Request-Id": "ci-job-42.step:7"}) as resp:
            assert resp.status == 200 and resp.headers["X-Request-Id"] == "ci-job-42.step:7"
            size = len(await resp.read())
        # An id that is not a plain token is replaced, not echoed into the log.
        async with http.get(f"{proc.url}/api/v1/images", headers={"X-Request-Id": 'x" injected\\'}) as resp:
            assert resp.status == 401
            replaced = resp.headers["X-Request-Id"]
            assert replaced != 'x" injected\\' and replaced.isalnum()
        async with http.get(f"{proc.url}/v2/", headers={"Authorization": f"Bearer {READ_TOKEN}"}) as resp:
            assert resp.status == 200
            registry_id = resp.headers["X-Request-Id"]
        # A build started by a request carries that request's id in its log.
        async with http.post(f"{proc.url}/api/v1/ensure", headers={"Authorization": f"Bearer {WRITE_TOKEN}",
                                                                   "X-Request-Id": "build-starter-1"},
                             json={"definition": {"docker": {"base_image": "scratch"}}, "variant": "cpu"}) as resp:
            assert resp.status == 202, await resp.text()
            build = (await resp.json())["build"]
            assert build["request_id"] == "build-starter-1"
        async with http.get(f"{proc.url}/api/v1/builds/{build['id']}/log",
                            headers={"Authorization": f"Bearer {READ_TOKEN}"}) as resp:
            first = (await resp.text()).splitlines()[0]
            assert first.endswith("queued by request build-starter-1"), first

    lines = log_lines(proc, f"/api/v1/builds/{build['id']}/log")
    access = [json.loads(line) for line in lines if line.startswith("{") and '"method"' in line]
    by_id = {entry["request_id"]: entry for entry in access}
    health = by_id["ci-job-42.step:7"]
    assert set(health) == {"time", "request_id", "method", "path", "status", "bytes", "duration_ms", "client", "token"}
    assert (health["method"], health["path"], health["status"], health["bytes"]) == ("GET", "/api/v1/health", 200, size)
    assert health["client"] == "127.0.0.1" and health["token"] is None and health["duration_ms"] >= 0
    assert health["time"].endswith("Z")
    assert by_id[replaced]["status"] == 401
    assert by_id[registry_id]["token"] == "laptops" and by_id[registry_id]["path"] == "/v2/"
    assert by_id["build-starter-1"]["token"] == "token-2"        # unnamed: its place in the list
    # The build's own messages carry the id of the request that started it, in the same format.
    messages = [json.loads(line) for line in lines if line.startswith("{") and '"logger"' in line]
    failed = [entry for entry in messages if entry["message"].startswith(f"build {build['id']} failed")]
    assert len(failed) == 1 and failed[0]["request_id"] == "build-starter-1", messages
    started = next(entry for entry in messages if entry["message"].startswith("build engine:"))
    assert "request_id" not in started  # said at start-up, outside any request
    text = "\n".join(lines)
    assert READ_TOKEN not in text and WRITE_TOKEN not in text


def test_text_format_and_the_log_format_flag(daemon_process, tmp_path: Path) -> None:
    # The file says json; the flag wins.
    proc = daemon_process(tmp_path / "data", 0, write_config(tmp_path, "json"), "--log-format", "text")
    import urllib.request

    request = urllib.request.Request(f"{proc.url}/api/v1/health", headers={"X-Request-Id": "text-1"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers["X-Request-Id"] == "text-1"
    line = next(line for line in log_lines(proc, "text-1") if "text-1" in line)
    when, client, request_id, rest = line.split(" ", 3)
    assert when.endswith("Z") and client == "127.0.0.1" and request_id == "text-1"
    assert rest.startswith('"GET /api/v1/health" 200 ') and rest.endswith("ms -")
