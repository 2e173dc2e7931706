"""Pipeline benchmark. Part ``snapshot``: hashing a source tree of 10k files / 1 GiB, next to peers;
part ``reuse``: the three-step pipeline, a whole ``envcache pipeline run`` process, reused vs run.

    python3 benchmarks/bench_pipeline.py snapshot [--files 10000] [--total-mib 1024] [--rounds 3]
                                                  [--drop-caches] [--out benchmarks/results]
    python3 benchmarks/bench_pipeline.py reuse [--rounds 3] [--out benchmarks/results]

``reuse`` starts a private dockerd and an ``envcache serve`` (the tests' helpers), builds the step
environment once (not timed), then measures, round-robin: ``pipeline run`` with every step
reused (no container), ``pipeline run --regenerate-outputs`` (every step runs in a container and
is stored), and the peer — the same three scripts with plain ``docker run`` one after the other,
mounts as envcache gives them, nothing stored. Results: ``<out>/pipeline_reuse.md`` and ``.json``.

A step's snapshot must be hashed on every submission, so it has to run at the speed of reading
the files. Measured in one run, round-robin so load from other work lands on every column:

- envcache **cold**: ``read_tree`` with an empty digest cache — every file opened and hashed
  (sha256, on up to 4 threads), the listing built and the cache file written;
- envcache **warm**: the same tree again with the cache filled — one ``stat`` per file;
- envcache **warm, 1% changed**: 100 files rewritten (same sizes) before the run;
- ``sha256sum`` over the sorted file list (``find | sort | xargs sha256sum | sha256sum``),
  the git-hash-object-style peer: one digest per file, then one over the list;
- ``tar --sort=name -cf - . | sha256sum``: one digest over the whole tree;
- ``cat`` of every file to ``/dev/null``: the read speed itself, the floor for any cold hash.

By default the files are in the page cache (they were just written), so "read speed" is memory
bandwidth through the kernel; ``--drop-caches`` (root) drops the page cache before each cold
measurement instead, which measures the disk — don't use it on a shared machine. The tree is
written under /tmp and removed afterwards. Results: ``<out>/pipeline_snapshot.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from envcache.pipeline import DigestCache, read_tree

RESULTS = Path(__file__).parent / "results"


def make_tree(root: Path, files: int, total_bytes: int) -> int:
    """``files`` files in directories of 100: 90% small (4–64 KiB), 10% large sharing the rest."""
    small_sizes = [4096 * (1 + i % 16) for i in range(files) if i % 10]
    large_count = files - len(small_sizes)
    large_size = max(1, (total_bytes - sum(small_sizes)) // max(1, large_count))
    sizes = iter(small_sizes)
    written = 0
    for i in range(files):
        size = large_size if i % 10 == 0 else next(sizes)
        path = root / f"d{i // 100:03d}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        written += size
    return written


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def shell(command: str, cwd: Path) -> Callable[[], None]:
    return lambda: subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, check=True,
                                  stdout=subprocess.DEVNULL)


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def rewrite_some(root: Path, count: int) -> None:
    for path in sorted(root.rglob("*.bin"))[::max(1, 10_000 // count)][:count]:
        path.write_bytes(os.urandom(path.stat().st_size))


def snapshot_part(args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="envcache-bench-pipeline-"))
    try:
        root = scratch / "tree"
        total = make_tree(root, args.files, args.total_mib << 20)
        os.utime(root)  # nothing below is "racy": the cache is only filled for settled files
        time.sleep(2.1)
        cold_cache = scratch / "cold-cache"
        warm = DigestCache(scratch / "warm-cache")
        reference = read_tree(root, cache=warm).digest

        def envcache_cold() -> None:
            shutil.rmtree(cold_cache, ignore_errors=True)
            tree = read_tree(root, cache=DigestCache(cold_cache))
            assert tree.digest == reference and tree.hashed_files == args.files

        def envcache_warm() -> None:
            tree = read_tree(root, cache=warm)
            assert tree.digest == reference and tree.hashed_files == 0

        columns: dict[str, Callable[[], None]] = {
            "envcache_cold": envcache_cold,
            "envcache_warm": envcache_warm,
            "sha256sum": shell("find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum", root),
            "tar_sha256sum": shell("tar --sort=name -cf - . | sha256sum", root),
            "cat": shell("find . -type f -print0 | xargs -0 cat > /dev/null", root),
        }
        cold_columns = {"envcache_cold", "sha256sum", "tar_sha256sum", "cat"}
        seconds: dict[str, list[float]] = {name: [] for name in columns}
        changed: list[float] = []
        for _ in range(args.rounds):
            for name, action in columns.items():
                if args.drop_caches and name in cold_columns:
                    drop_page_cache()
                seconds[name].append(timed(action))
            rewrite_some(root, args.files // 100)
            time.sleep(2.1)
            changed.append(timed(lambda: read_tree(root, cache=warm)))
            reference = read_tree(root, cache=warm).digest
        seconds["envcache_warm_1pct_changed"] = changed
        mib = total / (1 << 20)
        rows = [{"what": name, "best_s": round(min(times), 4), "median_s": round(statistics.median(times), 4),
                 "mib_per_s": round(mib / min(times), 1)} for name, times in seconds.items()]
        return {"files": args.files, "mib": round(mib, 1), "rounds": args.rounds,
                "page_cache": "dropped before each cold column" if args.drop_caches else "warm (files just written)",
                "rows": rows}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


LABELS = {
    "envcache_cold": "envcache `read_tree`, cold (empty digest cache)",
    "envcache_warm": "envcache `read_tree`, warm (nothing changed)",
    "envcache_warm_1pct_changed": "envcache `read_tree`, warm, 1% of files rewritten",
    "sha256sum": "peer: `find | sort | xargs sha256sum | sha256sum`",
    "tar_sha256sum": "peer: `tar --sort=name -cf - . | sha256sum`",
    "cat": "floor: `cat` every file to /dev/null",
}


def write_json(out: Path, name: str, command: str, result: dict[str, Any],
               load: tuple[float, float]) -> tuple[str, dict[str, Any]]:
    """``<out>/<name>.json``: the result with how, when and under what load it was measured."""
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    meta = {"command": command, "python": platform.python_version(), "machine": platform.machine(),
            "cores": os.cpu_count(), "when": when, "load_average_1m": {"start": load[0], "end": load[1]}}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, **result}, indent=2) + "\n")
    return when, meta


def write_results(out: Path, command: str, result: dict[str, Any], load: tuple[float, float]) -> None:
    when, meta = write_json(out, "pipeline_snapshot", command, result, load)
    by_name = {row["what"]: row for row in result["rows"]}
    floor = by_name["cat"]["best_s"]
    lines = [
        "# Pipeline benchmark: snapshot hashing",
        "",
        f"Produced by `{command}` on {when} (Python {meta['python']}, {meta['machine']}, {meta['cores']} cores "
        f"shared with other jobs, 1-minute load average {load[0]} at the start and {load[1]} at the end; "
        f"{result['rounds']} rounds, columns interleaved). Tree: {result['files']} files, {result['mib']} MiB; "
        f"page cache {result['page_cache']}.",
        "",
        "| what | best s | median s | MiB/s | × the `cat` floor |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, label in LABELS.items():
        row = by_name[name]
        lines.append(f"| {label.replace('|', chr(92) + '|')} | {row['best_s']} | {row['median_s']} | {row['mib_per_s']} | "
                     f"{round(row['best_s'] / floor, 2)}× |")
    lines += ["", "Time ratios against the peer (above 1× means envcache is faster):", ""]
    for peer in ("sha256sum", "tar_sha256sum"):
        for ours in ("envcache_cold", "envcache_warm"):
            lines.append(f"- {LABELS[ours]} vs {LABELS[peer]}: "
                         f"{round(by_name[peer]['best_s'] / by_name[ours]['best_s'], 2)}×")
    (out / "pipeline_snapshot.md").write_text("\n".join(lines) + "\n")


def reuse_part(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from tests.fixtures.bases import build_python_base, load_into_dockerd
    from tests.fixtures.daemon import start_daemon_process
    from tests.fixtures.engines import start_dockerd
    from tests.fixtures.pipelines import PIPELINE_YAML, Project

    dockerd = start_dockerd()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    daemon = None
    try:
        base = load_into_dockerd(dockerd, build_python_base().cpu, "envcache-bench/python-base:cpu")
        (work / "envcache.toml").write_text(f'[build]\nengine = "docker"\ndocker_host = "{dockerd.host}"\n')
        daemon = start_daemon_process(work / "data", 0, "--config", str(work / "envcache.toml"))
        project = Project(work / "project", ledger=False)
        project.write("env.yml", json.dumps({"docker": {"base_image": base}}))
        project.write("pipeline.yml", PIPELINE_YAML.replace("steps:\n", "defaults:\n  environment: env.yml\nsteps:\n"))
        env = dict(os.environ, XDG_CACHE_HOME=str(work / "cache"))

        def pipeline(*flags: str) -> Callable[[], None]:
            command = [sys.executable, "-m", "envcache.cli", "pipeline", "run", str(project.root / "pipeline.yml"),
                       "--url", daemon.url, *flags]
            return lambda: subprocess.run(command, check=True, capture_output=True, cwd=root, env=env)

        pipeline()()  # not timed: builds the environment image and stores every step once
        image = dockerd.docker("images", "--format", "{{.Repository}}:{{.Tag}}", "envcache/env", text=True,
                               check=True).stdout.split()[0]
        src, out = project.root / "src", work / "plain"

        def plain_docker_run() -> None:
            shutil.rmtree(out, ignore_errors=True)
            for name, reads, writes in (("prepare", project.root / "data", "prepared"),
                                        ("train", out / "prepared", "model"), ("evaluate", out / "model", "metrics")):
                (out / writes).mkdir(parents=True)
                read = "/inputs/raw.csv" if name == "prepare" else "/inputs"
                dockerd.docker("run", "--rm", "--network", "none", "-v", f"{src / name}:/snapshot",
                               "-v", f"{reads}:/inputs:ro", "-v", f"{out / writes}:/out", "-w", "/snapshot",
                               image, "python3", f"{name}.py", read, "/out", check=True)

        actions = {"reused": pipeline(), "regenerated": pipeline("--regenerate-outputs"),
                   "docker_run": plain_docker_run}
        times: dict[str, list[float]] = {name: [] for name in actions}
        for _ in range(args.rounds):
            for name, action in actions.items():
                times[name].append(timed(action))
        rows = [{"what": name, "best_s": round(min(v), 3), "median_s": round(statistics.median(v), 3)}
                for name, v in times.items()]
        return {"rounds": args.rounds, "rows": rows, "storage_driver": dockerd.storage_driver}
    finally:
        if daemon is not None:
            daemon.stop()
        dockerd.stop()
        shutil.rmtree(work, ignore_errors=True)


REUSE_LABELS = {"reused": "`envcache pipeline run`, all three steps reused (no container)",
                "regenerated": "`envcache pipeline run --regenerate-outputs` (three containers, results stored)",
                "docker_run": "peer: three plain `docker run`s, nothing stored"}


def write_reuse_results(out: Path, command: str, result: dict[str, Any], load: tuple[float, float]) -> None:
    when, meta = write_json(out, "pipeline_reuse", command, result, load)
    by_name = {row["what"]: row for row in result["rows"]}
    lines = [
        "# Pipeline benchmark: a reused pipeline vs running it",
        "",
        f"Produced by `{command}` on {when} (Python {meta['python']}, {meta['machine']}, {meta['cores']} cores "
        f"shared with other jobs, 1-minute load average {load[0]} at the start and {load[1]} at the end; "
        f"{result['rounds']} rounds, columns interleaved; dockerd storage driver {result['storage_driver']}). "
        "The three-step pipeline of the tests (prepare → train → evaluate); each time is a whole process.",
        "",
        "| what | best s | median s |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {label} | {by_name[name]['best_s']} | {by_name[name]['median_s']} |"
              for name, label in REUSE_LABELS.items()]
    reused = by_name["reused"]["best_s"]
    lines += ["", f"Reused vs running it again: {round(by_name['regenerated']['best_s'] / reused, 1)}× faster; "
              f"vs the plain `docker run`s: {round(by_name['docker_run']['best_s'] / reused, 1)}×."]
    (out / "pipeline_reuse.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["snapshot", "reuse"])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--total-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drop-caches", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    command = "python3 benchmarks/bench_pipeline.py " + " ".join(sys.argv[1:])
    start = round(os.getloadavg()[0], 2)
    if args.part == "reuse":
        result = reuse_part(args)
        write_reuse_results(args.out, command.strip(), result, (start, round(os.getloadavg()[0], 2)))
        print((args.out / "pipeline_reuse.md").read_text())
        return 0
    result = snapshot_part(args)
    write_results(args.out, command.strip(), result, (start, round(os.getloadavg()[0], 2)))
    print((args.out / "pipeline_snapshot.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
