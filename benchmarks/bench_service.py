"""Service benchmark: the hit path, as build tools see it, against the closest peers.

    python3 benchmarks/bench_service.py [--counts 1000,10000,100000] [--seconds 3] [--runs 20]
                                        [--out benchmarks/results]

1. ``POST /api/v1/resolve`` (a cache hit) at 1, 8 and 32 concurrent clients with 1k, 10k and
   100k images stored, side by side with a manifest ``HEAD`` against CNCF distribution 2.8 —
   BinderHub's "does this image exist" check — with the same aiohttp client. The two servers
   are measured cell by cell in alternation (envcache, distribution, at each client count and
   store size) so a burst of load from other work lands on both; the report gives the ratio
   envcache / distribution per cell. envcache does more per request (look the body up in its
   parse memo, apply the variant, canonicalise, hash, compute the image key, compare the stored
   canonical bytes); distribution does a tag lookup.
2. ``envcache ensure env.yml`` on a hit, as a whole CLI process (interpreter start included):
   the CLI reads the definition's files with the standard library, sends them raw with
   ``http.client``, and the daemon loads them — once as installed (a fresh venv) and once in the
   dev venv. Beside it: the ``curl`` one-liner for build tools that cannot start Python (the file
   posted to ``/api/v1/resolve?path=env.yml`` with ``Accept: text/plain``), a fully cached
   ``docker build`` of the same environment on a real dockerd, ``python -c pass`` and
   ``python -c "import http.client"`` (the floor of any standard-library client). All run
   round-robin, so they see the same load; medians and the ratios to docker are reported.

The envcache package is byte-compiled first (``compileall``), because an installed
package has bytecode and this sandbox sets ``PYTHONDONTWRITEBYTECODE``, which would otherwise
make every CLI start compile our modules from source. Everything runs as separate processes on
loopback: ``envcache serve`` (fresh data dir), ``docker-registry serve``, and a private
``dockerd`` (started here, as the test fixtures do). The load average is recorded before and
after each part, because the machine is shared. Results go to ``<out>/service.md`` and
``<out>/service.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import platform
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.bases import build_busybox_rootfs  # noqa: E402
from tests.fixtures.daemon import image_manifest, push_image, sha256  # noqa: E402  (plain aiohttp helpers, no pytest needed)
from tests.fixtures.engines import start_dockerd  # noqa: E402
from tests.fixtures.processes import free_port  # noqa: E402
from tests.fixtures.registry import start_reference_registry  # noqa: E402

CONCURRENCY = (1, 8, 32)


def loadavg() -> list[float]:
    """The 1/5/15-minute load averages: the machine is shared, so each result says how busy it was."""
    return [round(x, 2) for x in os.getloadavg()]


def compile_package() -> None:
    """Byte-compile envcache, as installing it would; the CLI rows then measure imports, not compiles.

    WHY explicit: with ``PYTHONDONTWRITEBYTECODE`` set (as here) Python never writes ``.pyc`` on
    import, so without this every timed ``envcache`` start would compile from source (~6 ms).
    ``compile_dir`` writes regardless of that setting; the files go to gitignored ``__pycache__``.
    """
    if not compileall.compile_dir(ROOT / "envcache", quiet=1):
        raise RuntimeError("compileall failed on the envcache package")


def start_envcache(data: Path, port: int, config: Path | None = None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "envcache.cli", "serve", "--data", str(data), "--port", str(port)]
    if config:
        args += ["--config", str(config)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(data.parent / f"serve-{port}.log", "wb"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"envcache serve exited {proc.returncode}; see {data.parent}/serve-{port}.log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("envcache serve did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


async def load(method: str, url: str, body: bytes | None, headers: dict[str, str], concurrency: int,
               seconds: float) -> dict[str, float]:
    """``concurrency`` workers hammering one request for ``seconds``; every answer must be 200."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(20):  # warm-up: connections, caches
            async with http.request(method, url, data=body, headers=headers) as resp:
                assert resp.status == 200, (resp.status, await resp.text())
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                async with http.request(method, url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{method} {url} answered {resp.status}")
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {"requests": len(latencies), "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 3)}


async def push_two_step(http: aiohttp.ClientSession, base: str, repo: str, tag: str) -> None:
    """Push a tiny image the way every registry accepts: POST a session, PUT ``?digest=``."""
    config, layer = b'{"architecture":"amd64","os":"linux"}', b"layer"
    for blob in (config, layer):
        async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
            location = resp.headers["Location"]
        location = location if location.startswith("http") else base + location
        async with http.put(location, params={"digest": sha256(blob)}, data=blob) as resp:
            assert resp.status == 201, await resp.text()
    body = json.dumps(image_manifest(config, [layer])).encode()
    async with http.put(f"{base}/v2/{repo}/manifests/{tag}", data=body,
                        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}) as resp:
        assert resp.status == 201, await resp.text()


def fill_images(db_path: Path, count: int, start: int) -> None:
    """Filler rows so the images table holds ``count`` entries (random keys, like real ones)."""
    now = time.time()
    rows = [(secrets.token_hex(16), "cpu", secrets.token_hex(16), b"{}", "envcache/env", f"t{i}",
             "sha256:" + secrets.token_hex(32), 1000, now, now, "{}", "sha256:" + "0" * 64, "1")
            for i in range(start, count)]
    with sqlite3.connect(db_path, timeout=30) as conn:
        conn.executemany("insert into images (key, variant, spec_hash, canonical, repository, tag, manifest_digest, "
                         "size, created, last_used, lock, base_digest, recipe_version) "
                         "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


async def bench_resolve(work: Path, counts: list[int], seconds: float) -> dict[str, Any]:
    from envcache import definition as spec

    port = free_port()
    data = work / "envcache-data"
    proc = start_envcache(data, port)
    base = f"http://127.0.0.1:{port}"
    registry = start_reference_registry()
    results: dict[str, Any] = {"envcache_resolve": {}, "distribution_head": {}}
    try:
        async with aiohttp.ClientSession() as http:
            await push_image(http, base, "base/tiny", "1")
            await push_two_step(http, f"http://{registry.host}", "bench/env", "latest")
            definition = {"docker": {"base_image": f"127.0.0.1:{port}/base/tiny:1"},
                          "python": {"conda_dependencies": {"pip_packages": ["numpy>=1.26", "pandas==2.2.2"]}},
                          "environment_variables": {"A": "1"}}
            body = json.dumps({"definition": definition, "variant": "cpu"}).encode()
            async with http.post(base + "/api/v1/resolve", data=body) as resp:
                key = (await resp.json())["key"]
            # The hit needs a real image under the key's tag: the daemon checks the registry has it.
            image_digest, _ = await push_image(http, base, "envcache/env", f"{key}-cpu")
        canonical = spec.canonical_bytes(spec.for_variant(spec.definition_from_dict(definition), "cpu"))
        now = time.time()
        with sqlite3.connect(data / "envcache.db", timeout=30) as conn:
            conn.execute("insert into images (key, variant, spec_hash, canonical, repository, tag, manifest_digest, "
                         "size, created, last_used, lock, base_digest, recipe_version) "
                         "values (?, 'cpu', 'x', ?, 'envcache/env', ?, ?, 1, ?, ?, '{}', '', '1')",
                         [key, canonical, f"{key}-cpu", image_digest, now, now])
        stored = 1
        headers = {"Content-Type": "application/json"}
        head_url = f"http://{registry.host}/v2/bench/env/manifests/latest"
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        results["loadavg_before"] = loadavg()
        for count in counts:
            fill_images(data / "envcache.db", count, stored)
            stored = count
            ours: dict[str, Any] = {}
            theirs: dict[str, Any] = {}
            for concurrency in CONCURRENCY:
                # Alternate cell by cell so both servers see the same background load.
                ours[str(concurrency)] = await load("POST", base + "/api/v1/resolve", body, headers, concurrency, seconds)
                theirs[str(concurrency)] = await load("HEAD", head_url, None, accept, concurrency, seconds)
                ours[str(concurrency)]["ratio_vs_distribution"] = round(
                    ours[str(concurrency)]["rps"] / theirs[str(concurrency)]["rps"], 2)
            results["envcache_resolve"][str(count)] = ours
            results["distribution_head"][str(count)] = theirs
            print(f"{count} images: envcache {ours}\n  distribution {theirs}", flush=True)
        results["loadavg_after"] = loadavg()
    finally:
        stop(proc)
        registry.stop()
    return results


def timed(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    began = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd)
    elapsed = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr[-2000:]}")
    return elapsed


def summary(samples: list[float]) -> dict[str, float]:
    return {"runs": len(samples), "median_s": round(statistics.median(samples), 4),
            "min_s": round(min(samples), 4), "max_s": round(max(samples), 4)}


def installed_python(work: Path) -> str:
    """A fresh venv (no system site-packages) that sees envcache through a plain ``.pth`` path entry:
    the interpreter a user who ``pip install``-ed envcache runs. The hit path imports only the
    standard library, so no dependency is needed; the dev venv's start-up (editable-install finder,
    the machine's own ``.pth`` hooks) is measured beside it."""
    venv = work / "installed"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "envcache.pth").write_text(f"{ROOT}\n")
    return python


def bench_cli(work: Path, runs: int) -> dict[str, Any]:
    dockerd = start_dockerd()
    try:
        rootfs = build_busybox_rootfs()
        dockerd.docker("import", "--change", 'CMD ["/bin/sh"]', rootfs.tar, "bench/busybox:latest")
        config = work / "envcache.toml"
        config.write_text(f'[build]\nengine = "docker"\ndocker_host = "{dockerd.host}"\ncompression = "gzip"\n'
                          '[log]\nlevel = "warning"\n')
        port = free_port()
        proc = start_envcache(work / "cli-data", port, config)
        installed = installed_python(work)
        try:
            steps = "RUN echo benchmark > /marker"
            env_file = work / "env.yml"
            env_file.write_text(json.dumps({"docker": {"base_dockerfile": f"FROM bench/busybox:latest\n{steps}\n"},
                                            "environment_variables": {"MARKER": "benchmark"}}))
            url = f"http://127.0.0.1:{port}"
            args = ["-m", "envcache.cli", "ensure", str(env_file), "--variant", "cpu", "--url", url]
            first = timed([sys.executable, *args])
            context = work / "docker-context"
            context.mkdir()
            (context / "Dockerfile").write_text(f"FROM bench/busybox:latest\n{steps}\nENV MARKER=benchmark\n")
            build = [shutil.which("docker") or "docker", "build", "-q", "-t", "bench/cached:latest", str(context)]
            uncached = timed(build, env=dockerd.env)
            # What each row runs. The floors say how much of a hit is the interpreter and the HTTP
            # stack (``import http.client`` is the least any standard-library client imports)
            # rather than envcache; curl is the path for build tools that cannot start Python.
            commands = {
                "envcache_ensure_hit": ([installed, *args], None),
                "envcache_ensure_hit_dev_venv": ([sys.executable, *args], None),
                "curl_resolve_hit": ([shutil.which("curl") or "curl", "-fsS", "-H", "Accept: text/plain",
                                      "--data-binary", f"@{env_file}", f"{url}/api/v1/resolve?path=env.yml&variant=cpu"],
                                     None),
                "docker_build_cached": (build, dockerd.env),
                "python_startup": ([installed, "-c", "pass"], None),
                "python_import_http_client": ([installed, "-c", "import http.client"], None),
                "python_startup_dev_venv": ([sys.executable, "-c", "pass"], None),
            }
            samples: dict[str, list[float]] = {name: [] for name in commands}
            # One warm-up round, then round-robin: a burst of load from other work then hits all
            # commands alike instead of whichever happened to be running.
            for command, env in commands.values():
                timed(command, env=env)
            load_before = loadavg()
            for _ in range(runs):
                for name, (command, env) in commands.items():
                    samples[name].append(timed(command, env=env))
            load_after = loadavg()
        finally:
            stop(proc)
    finally:
        dockerd.stop()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {"envcache_ensure_first_build_s": round(first, 3), "docker_build_first_s": round(uncached, 3),
            **{name: summary(values) for name, values in samples.items()},
            "ratio_envcache_vs_docker": round(medians["envcache_ensure_hit"] / medians["docker_build_cached"], 2),
            "ratio_curl_vs_docker": round(medians["curl_resolve_hit"] / medians["docker_build_cached"], 2),
            "ratio_envcache_vs_python": round(medians["envcache_ensure_hit"] / medians["python_startup"], 2),
            "loadavg_before": load_before, "loadavg_after": load_after}


def write_report(out: Path, results: dict[str, Any], command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "service.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    resolve, cli = results["resolve"], results["cli"]  # keys sort as text in the JSON; rows sort as numbers
    lines = ["# Service benchmark: the cache-hit path", "",
             f"Command: `{command}`  ", f"Machine: {results['machine']}  ",
             f"Load average (1/5/15 min) at start: {results['loadavg_start']}, at end: {results['loadavg_end']} "
             "(2 cores shared with other work)  ",
             "Bytecode: the script byte-compiles the envcache package first (`compileall`), as an installed "
             "package has; the standard library is precompiled.", "",
             "## Hit lookup: `POST /api/v1/resolve` vs distribution 2.8 manifest `HEAD`", "",
             f"{results['seconds']} s per cell, one aiohttp client process, servers on loopback; the two servers "
             "were measured in alternation, cell by cell, so background load falls on both. "
             "envcache looks the request body up in its parse memo (xxh3 of the body), then on every request "
             "applies the variant, canonicalises, hashes, computes the image key, reads the row and compares the "
             "stored canonical bytes; distribution answers a tag lookup (one tag stored). The client shares the "
             "machine's cores with the server. "
             f"Load average during this part: {resolve['loadavg_before']} → {resolve['loadavg_after']}.", "",
             "| stored images | clients | envcache req/s | p50 ms | p99 ms | distribution req/s | p50 ms | p99 ms "
             "| envcache / distribution |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for count, row in sorted(resolve["envcache_resolve"].items(), key=lambda item: int(item[0])):
        for clients, ours in sorted(row.items(), key=lambda item: int(item[0])):
            theirs = resolve["distribution_head"][count][clients]
            lines.append(f"| {int(count):,} | {clients} | {ours['rps']} | {ours['p50_ms']} | {ours['p99_ms']} | "
                         f"{theirs['rps']} | {theirs['p50_ms']} | {theirs['p99_ms']} | "
                         f"{ours['ratio_vs_distribution']:.2f}× |")
    lines += ["", "Ratio per client count, median over the store sizes: " + ", ".join(
        f"{clients} client{'s' if clients != '1' else ''} {statistics.median(row[clients]['ratio_vs_distribution'] for row in resolve['envcache_resolve'].values()):.2f}×"
        for clients in sorted(next(iter(resolve["envcache_resolve"].values())), key=int)) + ".", ""]

    one_client_p50 = statistics.median(row["1"]["p50_ms"] for row in resolve["envcache_resolve"].values())

    def cli_row(name: str, cell: dict[str, float]) -> str:
        return f"| {name} | {cell['runs']} | {cell['median_s']} | {cell['min_s']} | {cell['max_s']} |"

    rows = [("envcache ensure (hit), installed", "envcache_ensure_hit"),
            ("envcache ensure (hit), in the dev venv", "envcache_ensure_hit_dev_venv"),
            ("`curl` resolve (hit), `Accept: text/plain`", "curl_resolve_hit"),
            ("docker build (all steps cached)", "docker_build_cached"),
            ("`python -c pass`, installed", "python_startup"),
            ("`python -c 'import http.client'`, installed", "python_import_http_client"),
            ("`python -c pass`, in the dev venv", "python_startup_dev_venv")]
    lines += ["## `envcache ensure` on a hit (whole CLI process) and `curl` vs a fully cached `docker build`", "",
              f"The commands were run round-robin ({cli['envcache_ensure_hit']['runs']} rounds after one "
              f"warm-up round); load average during this part: {cli['loadavg_before']} → {cli['loadavg_after']}.", "",
              "| command | runs | median s | min s | max s |", "|---|---:|---:|---:|---:|",
              *(cli_row(name, cli[key]) for name, key in rows), "",
              f"envcache / docker (medians): **{cli['ratio_envcache_vs_docker']:.2f}×**; curl / docker: "
              f"**{cli['ratio_curl_vs_docker']:.2f}×**; envcache / bare interpreter start: "
              f"{cli['ratio_envcache_vs_python']:.2f}×.", "",
              "The envcache hit is a whole process (`python -m envcache.cli ensure env.yml`): interpreter start, "
              "importing only the `ensure` verb's module, reading the definition's files with the standard library "
              "(the CLI parses nothing: PyYAML, packaging and pip-requirements-parser are not imported), and one "
              "request with the standard library's `http.client`, which sends the raw files; the daemon loads them "
              "with the same loaders as a local load and answers the hit. \"Installed\" is a fresh venv that sees "
              "envcache as a plain path entry, as after `pip install envcache`; \"the dev venv\" is the test "
              "suite's venv, whose every start also runs the editable-install finder and this machine's own `.pth` "
              "hooks (compare its bare `python -c pass` row). `curl` sends the same file to `/api/v1/resolve` "
              "(`?path=env.yml`) and gets the bare image reference back. `docker build` is the Go docker CLI talking "
              "to dockerd over its Unix socket. "
              f"The first, building `envcache ensure` took {cli['envcache_ensure_first_build_s']} s (build in "
              "dockerd + ingest into the registry); docker's own first build "
              f"({cli['docker_build_first_s']} s) was already cached by the stages envcache had built in the "
              "same dockerd.", "",
              ("envcache is slower than docker here. " if cli["ratio_envcache_vs_docker"] > 1 else "")
              + "Most of the envcache time is the client's start-up, not the lookup: a resolve round trip takes a "
              f"median {one_client_p50} ms (one client, table above), while a Python process that only imports "
              f"http.client takes {cli['python_import_http_client']['median_s']} s here against "
              f"{cli['python_startup']['median_s']} s for a bare interpreter (`http.client` pulls in `email` and "
              "`ssl`); the docker CLI is a compiled Go binary, and curl a C one.", "",
              "Caveat: the machine has 2 cores shared with other work; cells vary run to run, "
              "so compare rows of one run, not across runs.", ""]
    (out / "service.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,10000,100000")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    counts = sorted(int(c) for c in args.counts.split(","))
    compile_package()
    work = Path(tempfile.mkdtemp(prefix="ecbench-", dir="/tmp"))
    try:
        results = {"machine": f"{platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                   "seconds": args.seconds, "loadavg_start": loadavg(), "bytecode": "compileall envcache/",
                   "resolve": asyncio.run(bench_resolve(work, counts, args.seconds))}
        results["cli"] = bench_cli(work, args.runs)
        results["loadavg_end"] = loadavg()
        print(json.dumps(results["cli"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_report(args.out, results, "python3 " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]))


if __name__ == "__main__":
    main()
