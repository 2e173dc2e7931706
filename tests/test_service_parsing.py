"""A large definition is parsed off the event loop (issue 13, item 5): while the daemon works on
a requirements document of thousands of lines, every other client is still answered at once.

Before, pip's grammar ran on the event loop: a 249 KB, 20,000-line document blocked every client
for 4.9 s. The document here has 5,000 lines (seconds of parsing, so the test stays short); the
benchmark (``benchmarks/bench_service.py``, "large definition") measures the full 20,000 lines.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

LINES = 5000


def requirements(lines: int) -> str:
    return "".join(f"package-{i:05d}>=1.{i % 50},<{2 + i % 7}.0  # reason {i}\n" for i in range(lines))


@pytest.fixture
def scratch_daemon(daemon_process, tmp_path: Path):
    config = tmp_path / "envcache.toml"
    config.write_text('[variants.cpu]\nbase_image = "scratch"\n[variants.gpu]\nbase_image = "scratch"\n')
    return daemon_process(config=config)


@pytest.mark.parametrize("form", ["document", "definition"])
async def test_other_clients_are_answered_while_a_large_definition_is_parsed(scratch_daemon, form: str) -> None:
    url = scratch_daemon.url
    text = requirements(LINES)
    if form == "document":
        body = {"document": {"path": "requirements.txt", "files": {"requirements.txt": text}}, "variant": "cpu"}
    else:
        body = {"definition": {"python": {"conda_dependencies": {"pip_packages": text.splitlines()}}}, "variant": "cpu"}
    small = {"document": {"path": "requirements.txt", "files": {"requirements.txt": "six\n"}}, "variant": "cpu"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
        async with http.post(f"{url}/api/v1/resolve", json=small) as resp:
            assert resp.status == 404  # warm: the small one is parsed and memoised

        async def large() -> tuple[int, dict]:
            async with http.post(f"{url}/api/v1/resolve", json=body) as resp:
                return resp.status, await resp.json()

        task = asyncio.create_task(large())
        waits = []
        started = time.monotonic()
        while not task.done():
            began = time.monotonic()
            async with http.post(f"{url}/api/v1/resolve", json=small) as resp:
                assert resp.status == 404
            async with http.get(f"{url}/api/v1/health") as resp:
                assert resp.status == 200
            waits.append(time.monotonic() - began)
            await asyncio.sleep(0.05)
        status, answer = await task
        took = time.monotonic() - started
    assert status == 404 and answer["status"] == "miss", answer  # parsed, and a plain miss
    # The work was long enough to matter: ten small rounds (each with a 50 ms pause) fitted in it.
    assert len(waits) >= 10 and took > 3 * max(waits), (took, len(waits), max(waits))
    assert max(waits) < 0.5, f"a small request waited {max(waits):.2f}s while the large one took {took:.1f}s"
