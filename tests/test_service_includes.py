"""Include fan-out (issue 13, item 3): requirements files that include each other must never
stall the daemon or ``envcache hash``.

A ~100-byte request whose files include each other twice (or a 20-level diamond) used to run
forever at 100% CPU on the daemon's event loop. Every case here runs against a real daemon
process with a client timeout, and the CLI with a process timeout, so a regression fails in
bounded time instead of hanging the suite.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from envcache.wire import MAX_CHARS, MAX_FILES
from tests.fixtures.abuse import CYCLES, diamond

# Every case must answer well within this; before the fix they never answered.
ANSWER_WITHIN = 20.0

def write(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path / "top.txt"


@pytest.fixture
def scratch_daemon(daemon_process, tmp_path: Path):
    """``envcache serve`` as a real process whose variants build on ``scratch``: definitions
    without a base resolve offline, so a valid one answers 404 (miss) at once."""
    config = tmp_path / "envcache.toml"
    config.write_text('[variants.cpu]\nbase_image = "scratch"\n[variants.gpu]\nbase_image = "scratch"\n')
    return daemon_process(config=config)


async def _resolve(url: str, files: dict[str, str]) -> tuple[int, dict, float]:
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=ANSWER_WITHIN)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.post(f"{url}/api/v1/resolve", json={
                "document": {"path": "top.txt", "files": files}, "variant": "cpu"}) as resp:
            return resp.status, await resp.json(), time.monotonic() - started


async def _ping(url: str) -> float:
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with http.get(f"{url}/api/v1/health") as resp:
            assert resp.status == 200
    return time.monotonic() - started


@pytest.mark.parametrize("case", sorted(CYCLES))
async def test_a_cycle_is_refused_at_once_through_the_api(scratch_daemon, case: str) -> None:
    status, body, _ = await _resolve(scratch_daemon.url, CYCLES[case])
    message = body["error"]["message"]
    assert status == 400 and "include cycle" in message and "line " in message, body
    assert await _ping(scratch_daemon.url) < 2.0  # and the daemon is not still busy with it


async def test_a_20_level_diamond_loads_each_file_once(scratch_daemon, tmp_path: Path) -> None:
    from envcache import definition as spec

    files = diamond()
    status, body, _ = await _resolve(scratch_daemon.url, files)
    assert status == 404 and body["status"] == "miss", body  # parsed: a plain miss
    # The same key as a local load (which must be as quick): every package, each file's options
    # once, in first-include order (pip's order: an include's lines where it is written).
    loaded = spec.load_definition(write(tmp_path, files))
    deps = loaded.python.conda_dependencies
    assert set(deps.pip_packages) == {"six", *(f"pkg-{i}{s}>=1" for i in range(20) for s in "ab")}
    assert deps.pip_options == [f"--extra-index-url https://pypi.example/{i}/" for i in reversed(range(20))]
    assert body["spec_hash"] == spec.spec_hash(spec.for_variant(loaded, "cpu"))


async def test_includes_beyond_the_caps_are_refused(scratch_daemon) -> None:
    chain = {"top.txt": "-r f0.txt\n", **{f"f{i}.txt": f"-r f{i + 1}.txt\n" for i in range(MAX_FILES - 2)},
             f"f{MAX_FILES - 2}.txt": "six\n"}
    status, body, _ = await _resolve(scratch_daemon.url, chain)
    assert status == 404, body  # exactly at the file cap: fine
    status, body, _ = await _resolve(scratch_daemon.url, {"top.txt": "-r big.txt\n",
                                                          "big.txt": "# padding\n" * (MAX_CHARS // 10 + 1)})
    assert status == 400 and "characters" in body["error"]["message"], body


def _hash(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envcache.cli", "hash", str(path)], capture_output=True, text=True,
                          timeout=ANSWER_WITHIN)


@pytest.mark.parametrize("case", sorted(CYCLES))
def test_envcache_hash_refuses_a_cycle_naming_the_line(tmp_path: Path, case: str) -> None:
    result = _hash(write(tmp_path, CYCLES[case]))
    assert result.returncode == 2 and "include cycle" in result.stderr and "line " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_envcache_hash_of_a_diamond_and_of_the_files_beyond_the_cap(tmp_path: Path) -> None:
    result = _hash(write(tmp_path, diamond()))
    assert result.returncode == 0 and len(result.stdout.split()[0]) == 32, result.stderr
    chain = tmp_path / "chain"
    chain.mkdir()
    files = {"top.txt": "-r f0.txt\n", **{f"f{i}.txt": f"-r f{i + 1}.txt\n" for i in range(MAX_FILES)}}
    files[f"f{MAX_FILES}.txt"] = "six\n"
    result = _hash(write(chain, files))
    assert result.returncode == 2 and f"more than {MAX_FILES} files" in result.stderr, result.stderr


async def test_the_cli_through_the_daemon_refuses_a_cycle(scratch_daemon, tmp_path: Path) -> None:
    top = write(tmp_path, CYCLES["mutual, twice"])
    result = subprocess.run([sys.executable, "-m", "envcache.cli", "resolve", str(top), "--url", scratch_daemon.url],
                            capture_output=True, text=True, timeout=ANSWER_WITHIN)
    assert result.returncode == 2 and "include cycle" in result.stderr, result.stderr
