"""Campaign: the ways one request used to stall the daemon (issue 13), repeated against a real
``envcache serve`` under a 1,024 file-descriptor limit; "N tried, N survived" per case.

    python3 benchmarks/campaign_edges.py [--rounds 5] [--out benchmarks/results]

Each round throws every case at one daemon process (``[server] idle_timeout`` and
``body_timeout`` 3 s, variants on ``scratch`` so definitions resolve offline):

- include fan-out: the three include cycles and the 20-level diamond of ``tests.fixtures.abuse``
  as raw-file documents — survived: the right answer (400 naming the cycle / 404 miss) within
  20 s, and a health check during it answered within 2 s;
- split bodies: ``envcache resolve`` (the real CLI) and a 520 KB document through a proxy that
  forwards 1,448-byte segments, and a chunked body over the 1 MiB limit — survived: a miss (exit
  3 / 404), 413;
- idle and slow connections: 1,100 idle sockets, 200 half-sent requests, 600 stalled uploads —
  survived: every probe meanwhile answered within 5 s (200 or a clean 503), the half-sent ones
  closed by the deadline, a push after the uploads stalled succeeds with no 500.

The tests (``tests/test_service_includes.py``, ``test_service_bodies.py``,
``test_service_limits.py``) hold one of each; this repeats them to show they hold every time.
Results go to ``<out>/edges-campaign.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.abuse import CYCLES, SplittingProxy, closed_by_server, diamond, open_sockets  # noqa: E402
from tests.fixtures.daemon import DaemonProcess, push_image, start_daemon_process  # noqa: E402

TIMEOUT = 3  # [server] idle_timeout and body_timeout of the daemon under test


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def probe(url: str, within: float = 5.0) -> float:
    """A health check's answer time; raises unless it is 200 or a clean 503 within ``within``."""
    began = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within)) as http:
        async with http.get(f"{url}/api/v1/health") as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200 and not (resp.status == 503 and "retry" in body["error"]["message"]):
                raise RuntimeError(f"health answered {resp.status}: {body}")
    return time.monotonic() - began


async def resolve(url: str, document: dict[str, Any], within: float = 20.0) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within)) as http:
        async with http.post(f"{url}/api/v1/resolve", json={"document": document, "variant": "cpu"}) as resp:
            return resp.status, await resp.json(content_type=None)


async def with_probes(url: str, work: Awaitable[Any]) -> tuple[Any, float]:
    """Run ``work`` while probing the daemon; returns its result and the slowest probe."""
    task = asyncio.ensure_future(work)
    slowest = 0.0
    while not task.done():
        slowest = max(slowest, await probe(url))
        await asyncio.sleep(0.1)
    return await task, slowest


async def include_case(proc: DaemonProcess, files: dict[str, str], expect: int) -> float:
    started = time.monotonic()
    (status, body), slowest = await with_probes(proc.url, resolve(proc.url, {"path": "top.txt", "files": files}))
    if status != expect or (expect == 400 and "include cycle" not in body["error"]["message"]):
        raise RuntimeError(f"answered {status}: {body}")
    if slowest > 2.0:
        raise RuntimeError(f"a health check waited {slowest:.1f}s meanwhile")
    return time.monotonic() - started


async def split_cli(proc: DaemonProcess, proxy: SplittingProxy, work: Path) -> float:
    path = work / "requirements.txt"
    path.write_text("".join(f"package-number-{i:03d}>=1.{i}  # reason {i}\n" for i in range(32)))
    started = time.monotonic()
    cli = await asyncio.create_subprocess_exec(sys.executable, "-m", "envcache.cli", "resolve", str(path), "--url",
                                               proxy.url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(cli.communicate(), 60)
    if cli.returncode != 3:
        raise RuntimeError(f"the CLI exited {cli.returncode}: {err.decode()[-300:]}")
    return time.monotonic() - started


async def split_large(proc: DaemonProcess, proxy: SplittingProxy) -> float:
    started = time.monotonic()
    status, body = await resolve(proxy.url, {"path": "r.txt", "files": {"r.txt": "six\n", "n.txt": "#" * 520_000}})
    if status != 404:
        raise RuntimeError(f"answered {status}: {body}")
    return time.monotonic() - started


async def chunked_over_limit(proc: DaemonProcess, proxy: SplittingProxy) -> float:
    async def chunks() -> Any:
        for _ in range(17):
            yield b" " * 65536

    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{proxy.url}/api/v1/resolve", data=chunks()) as resp:
            if resp.status != 413:
                raise RuntimeError(f"answered {resp.status}")
    return time.monotonic() - started


async def idle_flood(proc: DaemonProcess) -> float:
    started = time.monotonic()
    idle = await open_sockets(proc.port, 1100)
    try:
        for _ in range(5):
            await probe(proc.url)
        await asyncio.sleep(TIMEOUT + 2)
        if not all(closed_by_server(sock) for sock in idle):
            raise RuntimeError("idle sockets outlived the idle timeout")
        await probe(proc.url)
    finally:
        for sock in idle:
            sock.close()
    return time.monotonic() - started


async def half_sent(proc: DaemonProcess) -> float:
    started = time.monotonic()
    half = await open_sockets(proc.port, 200, b"POST /api/v1/resolve HTTP/1.1\r\nHost: x\r\n")
    try:
        await asyncio.sleep(TIMEOUT + 2)
        await probe(proc.url)
        if not all(closed_by_server(sock) for sock in half):
            raise RuntimeError("half-sent requests outlived the idle timeout")
    finally:
        for sock in half:
            sock.close()
    return time.monotonic() - started


async def stalled_uploads(proc: DaemonProcess, round_number: int) -> float:
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        locations = []
        for _ in range(600):
            async with http.post(f"{proc.url}/v2/stalled/blobs/uploads/") as resp:
                locations.append(resp.headers["Location"])
    head = ("PATCH {} HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\nContent-Type: application/octet-stream\r\n\r\n")
    stalled = []
    try:
        for location in locations:
            stalled += await open_sockets(proc.port, 1, head.format(location).encode() + b"x" * 1000)
        deadline = time.monotonic() + TIMEOUT + 40
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    await push_image(http, proc.url, "team/app", f"r{round_number}", layers=(f"r{round_number}".encode(),))
                    break
                except AssertionError as exc:  # push_image asserts every status; only a 503 refusal may come
                    if "TOOMANYREQUESTS" not in str(exc):
                        raise RuntimeError(f"a push failed: {str(exc)[:300]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("no push got through")
                await asyncio.sleep(0.5)
    finally:
        for sock in stalled:
            sock.close()
    return time.monotonic() - started


async def campaign(work: Path, rounds: int) -> dict[str, Any]:
    config = work / "envcache.toml"
    config.write_text(f"[server]\nidle_timeout = {TIMEOUT}\nbody_timeout = {TIMEOUT}\n"
                      '[variants.cpu]\nbase_image = "scratch"\n[variants.gpu]\nbase_image = "scratch"\n')
    proc = start_daemon_process(work / "data", 0, "--config", str(config), open_files=1024)
    cases: dict[str, Callable[[int], Awaitable[float]]] = {}
    async with SplittingProxy(proc.port) as proxy:
        for name, files in CYCLES.items():
            cases[f"include cycle: {name}"] = lambda _, files=files: include_case(proc, files, 400)
        cases["include diamond, 20 levels"] = lambda _: include_case(proc, diamond(), 404)
        cases["the CLI through a 1,448-byte-segment proxy"] = lambda _: split_cli(proc, proxy, work)
        cases["a 520 KB body through the proxy"] = lambda _: split_large(proc, proxy)
        cases["a chunked body over 1 MiB through the proxy"] = lambda _: chunked_over_limit(proc, proxy)
        cases["1,100 idle sockets (ulimit -n 1024)"] = lambda _: idle_flood(proc)
        cases["200 half-sent requests"] = lambda _: half_sent(proc)
        cases["600 stalled uploads, then a push"] = lambda n: stalled_uploads(proc, n)
        results: dict[str, dict[str, Any]] = {name: {"tried": 0, "survived": 0, "failures": [], "seconds": []}
                                              for name in cases}
        try:
            for round_number in range(rounds):
                for name, case in cases.items():
                    cell = results[name]
                    cell["tried"] += 1
                    try:
                        cell["seconds"].append(round(await case(round_number), 2))
                        cell["survived"] += 1
                    except Exception as exc:  # a failure is a figure of the campaign, not its end
                        cell["failures"].append(f"round {round_number}: {type(exc).__name__}: {exc}"[:300])
                    print(f"round {round_number}: {name}: {cell['survived']}/{cell['tried']}", flush=True)
        finally:
            proc.stop()
    log = proc.log.read_text(errors="replace")
    # Each record's first line, and the last line of each traceback (the exception itself).
    errors = [line.split(" ", 2)[2] if " ERROR " in line or " WARNING " in line else line
              for line in log.splitlines()
              if " ERROR " in line or " WARNING " in line or re.match(r"[\w.]+(Error|Exception): ", line)]
    return {"cases": results, "daemon_log_bytes": len(log), "log_tracebacks": log.count("Traceback"),
            "log_records": errors}


def write_report(out: Path, results: dict[str, Any], command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "edges-campaign.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    lines = ["# Campaign: one request must never stall the daemon (issue 13)", "",
             f"Command: `{command}`  ", f"Machine: {results['machine']}  ",
             f"Load average (1/5/15 min): {results['loadavg_before']} → {results['loadavg_after']} "
             "(2 cores shared with other work)", "",
             "One `envcache serve` process under `ulimit -n 1024`, `idle_timeout` and `body_timeout` 3 s; every "
             "case once per round, in order. What \"survived\" means for each case: `benchmarks/campaign_edges.py`.", "",
             "| case | tried | survived | failed | seconds per try (median) |", "|---|---:|---:|---:|---:|"]
    for name, cell in results["cases"].items():
        seconds = sorted(cell["seconds"])
        median = seconds[len(seconds) // 2] if seconds else "—"
        lines.append(f"| {name} | {cell['tried']} | {cell['survived']} | {cell['tried'] - cell['survived']} | {median} |")
    tried = sum(c["tried"] for c in results["cases"].values())
    survived = sum(c["survived"] for c in results["cases"].values())
    lines += ["", f"**{tried} tried, {survived} survived, {tried - survived} failed.** The daemon's log after the "
              f"campaign: {results['daemon_log_bytes']:,} bytes, {results['log_tracebacks']} traceback(s)"
              + ("; its warnings and errors:" if results["log_records"] else ", no warnings or errors."), "",
              *(f"- `{record[:200]}`" for record in results["log_records"]), ""]
    failures = [f for c in results["cases"].values() for f in c["failures"]]
    if failures:
        lines += ["Failures:", "", *(f"- {f}" for f in failures), ""]
    (out / "edges-campaign.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="eccampaign-", dir="/tmp"))
    try:
        before = loadavg()
        results = asyncio.run(campaign(work, args.rounds))
        results.update(machine=f"{platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                       loadavg_before=before, loadavg_after=loadavg(), rounds=args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_report(args.out, results, "python3 " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]))


if __name__ == "__main__":
    main()
