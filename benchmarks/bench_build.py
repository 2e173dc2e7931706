"""Build benchmark: envcache's staged builds vs one plain ``docker build``, same dockerd, one run.

    python3 benchmarks/bench_build.py [--out benchmarks/results]

Set-up (not timed): a private dockerd (overlay when the sandbox allows it, else vfs — the
same helper the tests use), the debootstrap'ed python base loaded into it, a local conda
channel and a local ``file://`` Maven repository. The definition: base + one Dockerfile RUN
step + conda (``envcache-tool`` from the local channel) + pip (``numpy`` and ``six`` from PyPI)
+ Spark (one jar) + environment variables.

Timed, in this order:

1. envcache cold build (no stage in the engine, empty store), including ingest;
2. envcache rebuild after one pip change (``six`` 1.16.0 → 1.15.0);
3. envcache rebuild with nothing changed (every stage found in the engine, the image re-tagged
   from the stored final stage: no export);
4. ingest alone of the final image into a fresh store (zstd), and again into the same store;
5. ``docker build`` (classic builder) of the equivalent single Dockerfile — cold
   (``--no-cache``), cached (same Dockerfile again) and after the same pip change. Its context
   carries the same conda prefix and jars, prepared outside the timing (envcache's cold time
   includes solving and installing the conda prefix and fetching the jars);
6. ingest's zstd (level 3) and gzip (ISA-L level 2, the default) vs zlib's gzip level 6 on the
   pip stage's layer (a real site-packages with numpy): compression time, size, decompression time.

Results go to ``<out>/build.md`` and ``<out>/build.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zstandard
from isal import igzip

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envcache.builder import BuildPlan, BuildSettings, DockerEngine, build_image  # noqa: E402
from envcache.builder import conda as conda_stage  # noqa: E402
from envcache.builder import ingest  # noqa: E402
from envcache.builder.ingest import ingest_image  # noqa: E402
from envcache.builder.helper import host_ca_bundle  # noqa: E402
from envcache.builder.maven import fetch_jars  # noqa: E402
from envcache.definition import definition_from_dict  # noqa: E402
from envcache.store import open_store  # noqa: E402
from tests.fixtures.bases import build_python_base, load_into_dockerd  # noqa: E402
from tests.fixtures.engines import start_dockerd  # noqa: E402
from tests.fixtures.testdata import MAVEN_GROUP, make_conda_channel, make_maven_repo  # noqa: E402

BASE = "envcache-bench/python-base:cpu"
PIP_BEFORE = ["numpy==1.26.4", "six==1.16.0"]
PIP_AFTER = ["numpy==1.26.4", "six==1.15.0"]
STEP = "RUN echo dockerfile-step > /etc/envcache-step"


def definition(channel: str, maven: str, pip: list[str]) -> Any:
    return definition_from_dict({
        "docker": {"base_dockerfile": f"FROM {BASE}\n{STEP}\n"},
        "python": {"conda_dependencies": {"channels": [channel], "conda_packages": ["envcache-tool"],
                                          "pip_packages": pip}},
        "spark": {"repositories": [maven],
                  "packages": [{"group": MAVEN_GROUP, "artifact": "envcache-core", "version": "1.0.0"}]},
        "environment_variables": {"BENCH": "1"},
    })


def plain_dockerfile(pip: list[str]) -> str:
    """What a user would write by hand for the same environment."""
    return "\n".join([
        f"FROM {BASE}",
        STEP,
        "COPY conda/ /",
        "COPY ca.pem /tmp/ca.pem",
        f"RUN PIP_CERT=/tmp/ca.pem PIP_NO_CACHE_DIR=1 python3 -m pip install --progress-bar off {' '.join(pip)}"
        " && rm /tmp/ca.pem",
        "COPY spark/ /",
        'ENV CONDA_PREFIX=/opt/envcache/env PATH=/opt/envcache/env/bin:$PATH BENCH="1"',
        "",
    ])


async def timed(coro: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = await coro
    return result, time.monotonic() - started


def docker_build(dockerd: Any, context: Path, tag: str, *extra: str) -> float:
    started = time.monotonic()
    subprocess.run(["docker", "build", "-q", "--network", "host", "-t", tag, *extra, str(context)],
                   env={**dockerd.env, "DOCKER_BUILDKIT": "0"}, check=True, capture_output=True, timeout=3600)
    return time.monotonic() - started


def compression_rows(layer: bytes, tmp_dir: Path) -> list[dict[str, Any]]:
    """ingest's own compressors (``compress_layer``: hashing, temp file, fsync included) side by
    side with zlib's gzip level 6 (envcache's gzip before ISA-L), on the same layer."""
    rows = []
    for name in ("zstd", "gzip", "gzip-zlib"):
        started = time.monotonic()
        if name == "gzip-zlib":
            out = io.BytesIO()
            with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=6, mtime=0) as w:
                w.write(layer)
            data = out.getvalue()
        else:
            _diff_id, _digest, path = ingest.compress_layer(io.BytesIO(layer), name, tmp_dir)
            data = path.read_bytes()
            path.unlink()
        compress_s = time.monotonic() - started
        started = time.monotonic()
        raw = zstandard.ZstdDecompressor().stream_reader(data).read() if name == "zstd" else igzip.decompress(data)
        decompress_s = time.monotonic() - started
        assert raw == layer
        level = {"zstd": ingest.ZSTD_LEVEL, "gzip": f"{ingest.GZIP_LEVEL} (ISA-L, {ingest.GZIP_THREADS} threads)",
                 "gzip-zlib": "6 (zlib)"}[name]
        rows.append({"compression": name.split("-")[0], "level": level,
                     "input_bytes": len(layer), "output_bytes": len(data), "ratio": round(len(layer) / len(data), 2),
                     "compress_s": round(compress_s, 3), "compress_MBps": round(len(layer) / 2**20 / compress_s, 1),
                     "decompress_s": round(decompress_s, 3)})
    return rows


async def main(out_dir: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="envcache-bench-build-"))
    dockerd = await asyncio.to_thread(start_dockerd)
    results: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                            "storage_driver": dockerd.env.get("ENVCACHE_STORAGE_DRIVER") or
                                            json.loads(dockerd.docker("info", "--format", "{{json .Driver}}").stdout)},
                               "pip_before": PIP_BEFORE, "pip_after": PIP_AFTER}
    engine = DockerEngine(dockerd.host)
    try:
        base = await asyncio.to_thread(build_python_base)
        await asyncio.to_thread(load_into_dockerd, dockerd, base.cpu, BASE)
        channel = make_conda_channel(work / "channel")
        maven = make_maven_repo(work / "maven")
        settings = BuildSettings()
        store = await open_store(work / "store")
        log: list[str] = []

        # 1-3: envcache
        first = definition(channel.url, maven.url, PIP_BEFORE)
        changed = definition(channel.url, maven.url, PIP_AFTER)
        cold, cold_s = await timed(build_image(BuildPlan.of(first, "cpu", key="bench-a"), store=store, engine=engine,
                                               settings=settings, log=log.append))
        change, change_s = await timed(build_image(BuildPlan.of(changed, "cpu", key="bench-b"), store=store,
                                                   engine=engine, settings=settings, log=log.append))
        same, same_s = await timed(build_image(BuildPlan.of(changed, "cpu", key="bench-b"), store=store, engine=engine,
                                               settings=settings, log=log.append))
        results["envcache"] = {
            "cold_s": round(cold_s, 2), "after_pip_change_s": round(change_s, 2), "unchanged_s": round(same_s, 2),
            "stages_built": {"cold": cold.stages_built, "after_pip_change": change.stages_built,
                             "unchanged": same.stages_built},
            "image_bytes": cold.size,
        }

        # 4: ingest alone
        final = f"envcache-stage:{change.stage_keys[-2]}"   # the last engine stage (the config stage is JSON)
        fresh = await open_store(work / "store-fresh")
        _, ingest_cold_s = await timed(ingest_image(fresh, engine, final, "x", "zstd", lambda line: None))
        _, ingest_known_s = await timed(ingest_image(fresh, engine, final, "y", "zstd", lambda line: None))
        _, ingest_gzip_s = await timed(ingest_image(fresh, engine, final, "z", "gzip", lambda line: None))
        await fresh.close()
        results["ingest"] = {"fresh_store_zstd_s": round(ingest_cold_s, 2), "known_layers_s": round(ingest_known_s, 2),
                             "fresh_store_gzip_s": round(ingest_gzip_s, 2)}

        # 5: plain docker build of the equivalent Dockerfile
        context = work / "plain"
        await conda_stage.install(await conda_stage.solve([channel.url], ["envcache-tool"]),
                                  context / "conda" / conda_stage.PREFIX.lstrip("/"))
        spark = next(s for s in [definition(channel.url, maven.url, PIP_BEFORE).spark])
        await fetch_jars(spark.packages, spark.repositories, context / "spark" / "opt" / "spark" / "jars")
        ca = host_ca_bundle()
        shutil.copyfile(ca, context / "ca.pem") if ca else (context / "ca.pem").write_text("")
        (context / "Dockerfile").write_text(plain_dockerfile(PIP_BEFORE))
        plain_cold = await asyncio.to_thread(docker_build, dockerd, context, "bench-plain:a", "--no-cache")
        plain_cached = await asyncio.to_thread(docker_build, dockerd, context, "bench-plain:a")
        (context / "Dockerfile").write_text(plain_dockerfile(PIP_AFTER))
        plain_change = await asyncio.to_thread(docker_build, dockerd, context, "bench-plain:b")
        results["docker_build"] = {"cold_s": round(plain_cold, 2), "cached_s": round(plain_cached, 2),
                                   "after_pip_change_s": round(plain_change, 2)}

        # 6: zstd vs gzip on the pip layer (site-packages with numpy)
        pip_index = next(i for i, (a, b) in enumerate(zip(cold.layers, change.layers)) if a["diff_id"] != b["diff_id"])
        pip_diff_id = change.layers[pip_index]["diff_id"]
        with tempfile.TemporaryDirectory(dir=work) as tmp, contextlib.ExitStack() as stack:
            exported = await engine.export(final, Path(tmp))
            source = ingest.open_export(exported, stack)
            opener = source.layers[source.diff_ids.index(pip_diff_id)]
            with opener() as stream:
                layer = stream.read()
        assert "sha256:" + hashlib.sha256(layer).hexdigest() == pip_diff_id
        results["compression"] = compression_rows(layer, work / "compress")
        await store.close()
    finally:
        await engine.close()
        await asyncio.to_thread(dockerd.stop)
        shutil.rmtree(work, ignore_errors=True)
    write_results(results, out_dir)
    return results


def write_results(results: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "build.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    env, plain, ing = results["envcache"], results["docker_build"], results["ingest"]
    lines = [
        "# Build benchmark",
        "",
        "Command: `python3 benchmarks/bench_build.py` (one run; same private dockerd for both sides; "
        f"storage driver `{results['machine']['storage_driver']}`, {results['machine']['cpus']} CPUs shared "
        "with other work).",
        "",
        f"Definition: python base + one Dockerfile RUN + conda (local channel) + pip {' '.join(results['pip_before'])}"
        " (PyPI) + one Spark jar (local Maven) + env vars. Change: six 1.16.0 → 1.15.0.",
        "",
        "| scenario | envcache (stages + ingest into its registry) | `docker build`, one Dockerfile (no ingest) |",
        "| --- | --- | --- |",
        f"| cold | {env['cold_s']} s | {plain['cold_s']} s |",
        f"| after one pip change | {env['after_pip_change_s']} s (built: {', '.join(env['stages_built']['after_pip_change'])}) "
        f"| {plain['after_pip_change_s']} s |",
        f"| nothing changed | {env['unchanged_s']} s (built: none; stored final stage re-tagged, no export) | {plain['cached_s']} s |",
        "",
        "Ingest of the final image alone (`docker save` + compress new layers + store); envcache's cold "
        "build above also stores every stage (one shared export):",
        "",
        "| ingest | seconds |",
        "| --- | --- |",
        f"| fresh store, zstd | {ing['fresh_store_zstd_s']} |",
        f"| fresh store, gzip | {ing['fresh_store_gzip_s']} |",
        f"| every layer already known | {ing['known_layers_s']} |",
        "",
        "ingest's zstd and gzip (the default) vs zlib's gzip level 6 on the pip stage's layer (real site-packages "
        "with numpy):",
        "",
        "| compression | level | input MiB | output MiB | ratio | compress s | MiB/s | decompress s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["compression"]:
        lines.append(f"| {row['compression']} | {row['level']} | {row['input_bytes'] / 2**20:.1f} | "
                     f"{row['output_bytes'] / 2**20:.1f} | {row['ratio']} | {row['compress_s']} | "
                     f"{row['compress_MBps']} | {row['decompress_s']} |")
    (out_dir / "build.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.out)), indent=2))
