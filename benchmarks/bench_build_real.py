"""Realistic cold-build benchmark: what users run, with real PyPI wheels, beside the peer, one run.

    nice -n 10 python3 benchmarks/bench_build_real.py [--engine docker|buildah] [--rounds 3] [--out DIR]

Set-up (not timed), with the helpers the tests use: a private dockerd or a private buildah
storage (overlay when the sandbox allows it, else vfs), the debootstrap'ed python base loaded
into it. The environment: that base + pip ``numpy==1.26.4 pandas==2.2.2 scikit-learn==1.5.0
requests==2.32.3`` (from PyPI, ~85 MB of wheels, a ~500 MB image) + two environment variables.

Variants, interleaved (the order alternates every round), each on a clean engine (every image but
the base removed):

- ``envcache``: a fresh ``envcache serve`` (empty data dir, the engine under test), then the
  whole CLI process ``envcache ensure`` — cold (includes storing every layer in envcache's
  registry), then "one pin changed" (requests 2.32.3 → 2.32.2) on the same daemon;
- the peer, the equivalent one-Dockerfile built by the same engine, storing nothing anywhere:
  Docker: ``docker build`` (classic builder) ``--no-cache`` (cold), then the engine's own cached
  rebuild after the same one-line change; buildah: ``buildah bud --layers=false`` for both (no
  layer cache to reuse; with one RUN line the change re-runs the pip step in any case).

PyPI needs this host's CA bundle when HTTPS goes through an intercepting proxy: envcache's pip
stage hands pip the host bundle (``envcache.builder.helper.host_ca_bundle``) for the build only;
the peer's Dockerfile does the same with ``COPY ca.pem`` and deletes it in the same RUN.

Results: ``<out>/build_real.md`` and ``.json`` (Docker), ``<out>/build_real_buildah.md`` and
``.json`` (buildah); rewritten after every run, so an interrupted run keeps its completed rounds.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envcache.builder.helper import host_ca_bundle  # noqa: E402
from tests.fixtures.bases import build_python_base, load_into_buildah, load_into_dockerd  # noqa: E402
from tests.fixtures.daemon import DaemonProcess, start_daemon_process  # noqa: E402
from tests.fixtures.engines import start_buildah, start_dockerd  # noqa: E402

BASE_NAME = "envcache-bench/python-base:cpu"
PINS = {"cold": "requests==2.32.3", "one pin changed": "requests==2.32.2"}
OTHER_PINS = ["numpy==1.26.4", "pandas==2.2.2", "scikit-learn==1.5.0"]
ENV_VARS = {"OMP_NUM_THREADS": "4", "BENCH_MODE": "realistic"}
COMMAND = "nice -n 10 python3 benchmarks/bench_build_real.py"


@dataclass
class Engine:
    """One engine under test, as the benchmark needs it: the peer's command, the envcache
    ``[build]`` config for it, and how to clean it and read image sizes."""

    name: str            # "docker" | "buildah"
    peer: str            # the peer variant's name in the results
    base: str            # the base image's name in this engine
    env: dict[str, str]  # the CLI's environment (DOCKER_HOST or CONTAINERS_STORAGE_CONF)
    build_config: str    # envcache's [build] table for this engine
    storage_driver: str
    stop: Callable[[], None]

    def cli(self, *args: str, check: bool = True) -> str:
        return subprocess.run([self.name, *args], env=self.env, check=check, capture_output=True, text=True,
                              timeout=900).stdout

    def peer_command(self, scenario: str, tag: str, context: Path) -> list[str]:
        if self.name == "docker":
            cache = ["--no-cache"] if scenario == "cold" else []  # the change: the engine's own cached rebuild
            return ["docker", "build", "-q", "--network", "host", *cache, "-t", tag, str(context)]
        return ["buildah", "bud", "--layers=false", "--isolation", "chroot", "--format", "oci", "--pull=false",
                "-q", "-t", tag, str(context)]

    def image_sizes(self) -> dict[str, int]:
        """{image id: uncompressed bytes} of every image the engine holds."""
        if self.name == "docker":
            ids = list(dict.fromkeys(self.cli("images", "-aq", "--no-trunc").split()))
            sizes = self.cli("image", "inspect", "--format", "{{.Size}}", *ids).split() if ids else []
            return dict(zip(ids, map(int, sizes)))
        # buildah 1.28 gives only a rounded, decimal-unit size ("650 MB"): enough for a size in MB
        units = {"B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9}
        return {image["id"]: round(float(image["size"].split()[0]) * units[image["size"].split()[1]])
                for image in json.loads(self.cli("images", "--json") or "[]")}

    def clean(self) -> None:
        """Remove every image but the base, so each variant starts cold in the same engine."""
        base_id = self.cli("images", "-q", "--no-trunc", self.base).split()[0]
        if self.name == "docker":
            self.cli("container", "prune", "-f", check=False)
        else:
            self.cli("rm", "--all", check=False)
        ids = [i for i in self.image_sizes() if not same_id(i, base_id)]
        if ids:
            self.cli("rmi", "-f", *sorted(ids), check=False)


def same_id(a: str, b: str) -> bool:
    """Image ids as engines print them: with or without ``sha256:``, full or truncated."""
    a, b = a.removeprefix("sha256:"), b.removeprefix("sha256:")
    return a.startswith(b) or b.startswith(a)


def start_engine(name: str) -> Engine:
    base = build_python_base().cpu
    if name == "docker":
        dockerd = start_dockerd()
        return Engine("docker", "docker build", load_into_dockerd(dockerd, base, BASE_NAME),
                      dict(dockerd.env, DOCKER_BUILDKIT="0"), f'engine = "docker"\ndocker_host = "{dockerd.host}"\n',
                      dockerd.storage_driver, dockerd.stop)
    store = start_buildah()
    return Engine("buildah", "buildah bud", load_into_buildah(store, base, BASE_NAME), store.env,
                  f'engine = "buildah"\nbuildah_root = "{store.storage_root}"\nbuildah_runroot = "{store.run_root}"\n'
                  f'buildah_storage_driver = "{store.storage_driver}"\n', store.storage_driver, store.stop)


def pip_set(scenario: str) -> list[str]:
    return [*OTHER_PINS, PINS[scenario]]


def definition_yaml(base: str, scenario: str) -> str:
    pins = ", ".join(json.dumps(p) for p in pip_set(scenario))
    env = "".join(f'  {k}: "{v}"\n' for k, v in ENV_VARS.items())
    return (f"name: bench-real\ndocker:\n  base_image: {base}\npython:\n  conda_dependencies:\n"
            f"    pip_packages: [{pins}]\nenvironment_variables:\n{env}")


def dockerfile(base: str, scenario: str) -> str:
    """What a user writes by hand for the same environment (one RUN, the CA bundle removed in it)."""
    env = " ".join(f'{k}="{v}"' for k, v in ENV_VARS.items())
    return (f"FROM {base}\nCOPY ca.pem /tmp/ca.pem\n"
            "RUN PIP_CERT=/tmp/ca.pem PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore"
            f" python3 -m pip install --no-input --progress-bar off {' '.join(pip_set(scenario))} && rm /tmp/ca.pem\n"
            f"ENV {env}\n")


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, str]:
    """Run ``cmd`` (output to ``log``); wall seconds and stdout. A failure stops the benchmark."""
    started = time.monotonic()
    with open(log, "ab") as err:
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, timeout=3600)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed (exit {done.returncode}); see {log}")
    return wall, done.stdout.decode()


def run_envcache(engine: Engine, work: Path, rnd: int) -> list[dict[str, Any]]:
    data = work / f"envcache-{rnd}" / "data"
    config = data.parent / "envcache.toml"
    data.parent.mkdir(parents=True)
    config.write_text(f'[build]\n{engine.build_config}compression = "zstd"\n')
    daemon: DaemonProcess = start_daemon_process(data, 0, "--config", str(config))
    env = dict(os.environ, ENVCACHE_URL=daemon.url)
    rows = []
    try:
        for scenario in PINS:
            path = data.parent / f"{scenario.replace(' ', '-')}.yml"
            path.write_text(definition_yaml(engine.base, scenario))
            load_before = load()
            wall, out = timed([sys.executable, "-m", "envcache.cli", "ensure", str(path), "--variant", "cpu", "--json"],
                              env, work / "envcache.log")
            answer = json.loads(out)
            rows.append({"variant": "envcache", "scenario": scenario, "round": rnd, "wall_s": round(wall, 2),
                         "load_before": load_before, "load_after": load(), "status": answer.get("status"),
                         "stored_bytes": answer["image"]["size"],
                         # the final stage is the largest image the engine holds
                         "engine_image_bytes": max(engine.image_sizes().values())})
    finally:
        daemon.stop(timeout=60)
        shutil.rmtree(data.parent, ignore_errors=True)
    return rows


def run_peer(engine: Engine, context: Path, work: Path, rnd: int) -> list[dict[str, Any]]:
    rows = []
    for scenario in PINS:
        (context / "Dockerfile").write_text(dockerfile(engine.base, scenario))
        tag = f"bench-real-peer:{rnd}-{'a' if scenario == 'cold' else 'b'}"
        load_before = load()
        wall, out = timed(engine.peer_command(scenario, tag, context), engine.env, work / "peer.log")
        size = next(b for i, b in engine.image_sizes().items() if same_id(i, out.split()[-1]))
        rows.append({"variant": engine.peer, "scenario": scenario, "round": rnd, "wall_s": round(wall, 2),
                     "load_before": load_before, "load_after": load(), "engine_image_bytes": size})
    return rows


def summarise(runs: list[dict[str, Any]], peer: str) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for scenario in PINS:
        row: dict[str, Any] = {}
        for variant in ("envcache", peer):
            walls = [r["wall_s"] for r in runs if r["variant"] == variant and r["scenario"] == scenario]
            if walls:
                row[variant] = {"n": len(walls), "min_s": min(walls), "median_s": round(statistics.median(walls), 2),
                                "all_s": walls}
        if len(row) == 2:
            for stat in ("min", "median"):
                row[f"ratio_envcache_over_peer_{stat}"] = round(row["envcache"][f"{stat}_s"] / row[peer][f"{stat}_s"], 2)
            # the two sides of one round ran minutes apart, under about the same background load
            row["ratio_per_round"] = [round(e / p, 2) for e, p in zip(row["envcache"]["all_s"], row[peer]["all_s"])]
        table[scenario] = row
    return table


def results_name(engine: str) -> str:
    return "build_real" if engine == "docker" else f"build_real_{engine}"


def write_results(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name, peer = results_name(results["engine"]), results["peer"]
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    m, table, runs = results["machine"], results["summary"], results["runs"]
    loads = [r["load_before"] for r in runs]
    peer_cold, peer_change = {"docker build": ("`docker build --no-cache`", "`docker build`, cached rebuild"),
                              "buildah bud": ("`buildah bud --layers=false`", "`buildah bud --layers=false`")}[peer]
    lines = [
        f"# Realistic build benchmark (real PyPI wheels), {results['engine']} engine",
        "",
        f"Command: `{results['command']}` (one run, {results['rounds_done']} of {results['rounds_planned']} "
        f"interleaved rounds completed; one private {results['engine']} engine for both sides, storage driver "
        f"`{m['storage_driver']}`; {m['cpus']} CPUs shared with other engineers' test suites: load average "
        f"{min(loads, default=0):.1f}–{max(loads, default=0):.1f} before the runs, so absolute times are noisy; "
        "the interleaving spreads the load over both sides).",
        "",
        f"Environment: debootstrap'ed python base + pip `{' '.join(pip_set('cold'))}` from PyPI + "
        f"{len(ENV_VARS)} env vars. One pin changed: `{PINS['cold']}` → `{PINS['one pin changed']}`. "
        f"CA bundle handed to pip on both sides: `{m['ca_bundle']}`.",
        "",
        "envcache = the whole `envcache ensure` CLI process against a fresh `envcache serve` (empty data dir), so "
        "it includes storing the image in envcache's registry; one pin changed runs on the same daemon after "
        "the cold build. Peer = the equivalent one-Dockerfile built by the same engine, which stores nothing.",
        "",
        "| scenario | envcache min / median | peer min / median | envcache / peer time (min, median) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for scenario, row in table.items():
        cell = lambda s: f"{s['min_s']} / {s['median_s']} s (n={s['n']})" if s else "not measured"  # noqa: E731
        ratio = (f"{row['ratio_envcache_over_peer_min']}× / {row['ratio_envcache_over_peer_median']}×"
                 if "ratio_envcache_over_peer_min" in row else "—")
        label = peer_cold if scenario == "cold" else peer_change
        lines.append(f"| {scenario} | {cell(row.get('envcache'))} | {label}: {cell(row.get(peer))} | {ratio} |")
    per_round = "; ".join(f"{scenario}: {', '.join(f'{r}×' for r in row['ratio_per_round'])}"
                          for scenario, row in table.items() if "ratio_per_round" in row)
    sizes = results["image_sizes"]
    lines += [
        "",
        f"Ratio above 1× = envcache takes longer. Per round (envcache / peer of the same round): {per_round}.",
        "",
        f"Image size: envcache's final image {sizes.get('envcache_engine_mb', '?')} MB in the engine, "
        f"{sizes.get('envcache_stored_mb', '?')} MB stored (zstd) in its registry; the peer's image "
        f"{sizes.get('peer_engine_mb', '?')} MB in the engine.",
        "",
        "Every run (seconds; load average before):",
        "",
        "| round | variant | scenario | wall s | load |",
        "| ---: | --- | --- | ---: | ---: |",
    ]
    lines += [f"| {r['round']} | {r['variant']} | {r['scenario']} | {r['wall_s']} | {r['load_before']} |" for r in runs]
    if results.get("not_measured"):
        lines += ["", f"Not measured here: {results['not_measured']}"]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("docker", "buildah"), default="docker")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="envcache-bench-real-"))
    engine = start_engine(args.engine)
    try:
        context = work / "peer"
        context.mkdir()
        ca = host_ca_bundle()
        shutil.copyfile(ca, context / "ca.pem") if ca else (context / "ca.pem").write_text("")
        results: dict[str, Any] = {
            "command": f"{COMMAND} --engine {args.engine} --rounds {args.rounds}", "engine": args.engine,
            "peer": engine.peer, "rounds_planned": args.rounds, "rounds_done": 0,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "storage_driver": engine.storage_driver, "ca_bundle": str(ca) if ca else None},
            "pip": pip_set("cold"), "pin_change": PINS, "env": ENV_VARS, "runs": [], "summary": {}, "image_sizes": {},
            "not_measured": "a second environment sharing all but one package; the hit path (see service.md)."}
        for rnd in range(args.rounds):
            for variant in ("envcache", engine.peer)[:: 1 if rnd % 2 == 0 else -1]:
                engine.clean()
                rows = (run_envcache(engine, work, rnd) if variant == "envcache" else run_peer(engine, context, work, rnd))
                results["runs"] += rows
                cold = rows[0]
                results["image_sizes"]["envcache_engine_mb" if variant == "envcache" else "peer_engine_mb"] = \
                    round(cold["engine_image_bytes"] / 1e6)
                if "stored_bytes" in cold:
                    results["image_sizes"]["envcache_stored_mb"] = round(cold["stored_bytes"] / 1e6)
                for row in rows:
                    print(f"{time.strftime('%H:%M:%S')} round {rnd} {variant} {row['scenario']}: {row['wall_s']} s "
                          f"(load {row['load_before']})", flush=True)
                results["summary"] = summarise(results["runs"], engine.peer)
                write_results(results, args.out)
            results["rounds_done"] = rnd + 1
            write_results(results, args.out)
    finally:
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
