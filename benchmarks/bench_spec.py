"""Canonicalise + hash throughput, envcache vs the naive approach, in the same run.

The naive approach is what Azure ML's v2 SDK does to an environment: dump the definition as
YAML with sorted keys and take an MD5. It is fast because it does nothing: it parses no
requirement, so ``numpy==1.26.4`` and ``NumPy == 1.26.4`` (or a reordered list) hash
differently. envcache parses every entry (PEP 508/440, MatchSpec) to get hashes that are equal
exactly when environments are; this measures what that costs. Entry parsing is memoised (a
daemon sees the same entries all day), so envcache is measured cold (memo cleared before every
call: a never-seen definition) and warm (the same definition again).

Run: ``python benchmarks/bench_spec.py`` (writes benchmarks/results/spec.md and spec.json).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import yaml

from envcache.definition import CondaDependencies, Definition, DockerSection, PythonSection, definition_to_dict, spec_hash
from envcache.definition.canonical import clear_caches

SIZES = (10, 100, 1000)
RESULTS = Path(__file__).parent / "results"
COMMAND = "python benchmarks/bench_spec.py"


def make_definition(packages: int) -> Definition:
    """``packages`` entries, 3/4 pip (with extras/markers sprinkled in) and 1/4 conda."""
    pip, conda = [], []
    for i in range(packages):
        if i % 4 == 3:
            conda.append(f"pkg-conda-{i}=={1 + i % 7}.{i % 13}.{i % 5}")
        elif i % 10 == 1:
            pip.append(f'Pkg_Pip.{i}[extra]>={i % 9}.{i % 11} ; python_version >= "3.9"')
        else:
            pip.append(f"pkg-pip-{i}=={i % 9}.{i % 11}.{i % 3}")
    return Definition(
        name=f"bench-{packages}",
        python=PythonSection(conda_dependencies=CondaDependencies(
            channels=["conda-forge", "defaults"], conda_packages=conda, pip_packages=pip,
            pip_options=["--index-url https://pypi.org/simple"])),
        docker=DockerSection(base_image="ubuntu:22.04"),
        environment_variables={"OMP_NUM_THREADS": "4"},
    )


def cold_hash(defn: Definition) -> str:
    clear_caches()
    return spec_hash(defn)


def naive_hash(defn: Definition) -> str:
    return hashlib.md5(yaml.safe_dump(definition_to_dict(defn), sort_keys=True).encode()).hexdigest()


def per_second(fn, defn: Definition, budget: float = 1.0, rounds: int = 7) -> float:  # type: ignore[no-untyped-def]
    """Best calls/second over ``rounds`` rounds of about ``budget / rounds`` seconds each.

    The best round, not the median: on a shared machine other jobs only ever slow a round down,
    so the fastest one is the closest to the code's own cost (the ``timeit`` convention)."""
    fn(defn)  # warm imports
    start = time.perf_counter()
    fn(defn)
    once = max(time.perf_counter() - start, 1e-6)
    calls = max(1, int(budget / rounds / once))
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn(defn)
        rates.append(calls / (time.perf_counter() - start))
    return max(rates)


def main() -> int:
    rows = []
    for size in SIZES:
        defn = make_definition(size)
        cold = per_second(cold_hash, defn)
        warm = per_second(spec_hash, defn)
        naive = per_second(naive_hash, defn)
        rows.append({"packages": size, "envcache_cold_per_s": round(cold, 1), "envcache_warm_per_s": round(warm, 1),
                     "naive_per_s": round(naive, 1), "envcache_cold_ms": round(1000 / cold, 3),
                     "envcache_warm_ms": round(1000 / warm, 3), "naive_ms": round(1000 / naive, 3),
                     "cold_time_over_naive": round(naive / cold, 2), "warm_time_over_naive": round(naive / warm, 2)})
    meta = {"command": COMMAND, "python": sys.version.split()[0], "machine": platform.machine(),
            "when": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
            "load_average_1m": round(os.getloadavg()[0], 2)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "spec.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Spec benchmark: canonicalise + hash",
        "",
        f"Produced by `{COMMAND}` on {meta['when']} (Python {meta['python']}, {meta['machine']}, 2 cores shared "
        f"with other jobs, 1-minute load average {meta['load_average_1m']}: best of 7 rounds per cell; the "
        "envcache and naive columns were measured side by side in the same run).",
        "envcache = `spec_hash(defn)` (parse every entry, canonical JSON, xxh3-128); cold = entry memo cleared "
        "before each call, warm = memo filled; naive = "
        "`md5(yaml.safe_dump(definition, sort_keys=True))` as Azure ML's v2 SDK does.",
        "",
        "Ratios are envcache time / naive time (below 1× means envcache is faster).",
        "",
        "| packages | envcache cold ms | envcache warm ms | naive ms | cold / naive | warm / naive |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['packages']} | {r['envcache_cold_ms']} | {r['envcache_warm_ms']} | {r['naive_ms']} | "
                     f"{r['cold_time_over_naive']}× | {r['warm_time_over_naive']}× |")
    (RESULTS / "spec.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
