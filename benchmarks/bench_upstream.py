"""Shared upstream: daemon B satisfying an ensure by pulling vs by building.

Real parts only, end to end through ``POST /api/v1/ensure`` (``"wait": true``):

- a private dockerd (vfs) is daemon A's engine; daemon B has no engine (``engine = "none"``),
  so B can only answer by pulling;
- the base (busybox) is served by a plain origin registry, the shared tier is a CNCF
  distribution 2.8 (``docker-registry``) on loopback; A pushes there after building.

Measured per round (a fresh definition each round, so nothing is cached by accident):

1. cold: A's ensure (a real build: engine has only the base) vs B's ensure (cold store, pull).
2. a new version whose only change is the top layer: A's ensure (engine build cache warm for the
   big dependency layer) vs B's ensure (store holds the previous version), and the bytes B's
   pull moved.

Run: ``python benchmarks/bench_upstream.py`` (writes benchmarks/results/upstream.md and
upstream.json). About a minute on the 2-core CI machine.
"""

from __future__ import annotations

import asyncio
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from envcache.service.app import create_app  # noqa: E402
from envcache.service.config import Config  # noqa: E402
from envcache.upstream.config import parse_upstream  # noqa: E402
from envcache.service.daemon import DAEMON  # noqa: E402
from tests.fixtures.bases import build_busybox_rootfs  # noqa: E402
from tests.fixtures.engines import skopeo, start_dockerd  # noqa: E402
from tests.fixtures.oci_images import write_oci_layout  # noqa: E402
from tests.fixtures.registry import start_reference_registry  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
COMMAND = "python benchmarks/bench_upstream.py"
ROUNDS = 3
DEPS_BYTES = 8_000_000      # the incompressible "dependencies" layer every version shares


def definition(base: str, round_no: int, app_version: str) -> dict[str, Any]:
    return {"docker": {"base_dockerfile": "\n".join([
        f"FROM {base}",
        f"RUN head -c {DEPS_BYTES} /dev/urandom > /deps.bin && echo round {round_no} > /deps.round",
        f"RUN echo {app_version} > /app.version",
    ])}}


async def start_daemon(data_dir: Path, config: Config) -> tuple[str, web.Application, web.AppRunner]:
    config.server.data_dir = data_dir
    app = await create_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}", app, runner


async def ensure(http: aiohttp.ClientSession, url: str, defn: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    began = time.monotonic()
    async with http.post(f"{url}/api/v1/ensure", json={"definition": defn, "variant": "cpu", "wait": True}) as resp:
        body = await resp.json()
    elapsed = time.monotonic() - began
    if resp.status != 200:
        raise RuntimeError(f"ensure on {url} answered {resp.status}: {body}")
    return elapsed, body


async def build_log(http: aiohttp.ClientSession, url: str, answer: dict[str, Any]) -> list[str]:
    async with http.get(f"{url}/api/v1/builds/{answer['build']['id']}/log", params={"follow": "false"}) as resp:
        return (await resp.text()).splitlines()


async def run(work: Path) -> dict[str, Any]:
    dockerd = start_dockerd()
    origin = start_reference_registry()
    shared = start_reference_registry()
    runners: list[web.AppRunner] = []
    try:
        layout = write_oci_layout(work / "busybox", [build_busybox_rootfs().tar], config={"Cmd": ["/bin/sh"]})
        base = f"{origin.host}/base/busybox:bench"
        skopeo("copy", "--dest-tls-verify=false", f"oci:{layout.layout}:{layout.tag}", f"docker://{base}")
        rows: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as http:
            for round_no in range(ROUNDS):
                config_a = Config()
                config_a.build.engine, config_a.build.docker_host = "docker", dockerd.host
                config_a.upstreams = [parse_upstream({"url": shared.url, "prefix": "bench"})]
                config_b = Config()
                config_b.build.engine = "none"
                config_b.upstreams = [parse_upstream({"url": shared.url, "prefix": "bench", "mode": "pull"})]
                url_a, app_a, runner = await start_daemon(work / f"a{round_no}", config_a)
                runners.append(runner)
                url_b, app_b, runner = await start_daemon(work / f"b{round_no}", config_b)
                runners.append(runner)
                row: dict[str, Any] = {"round": round_no}
                sent_before = 0
                for version in ("v1", "v2"):
                    defn = definition(base, round_no, version)
                    row[f"build_{version}_s"], built = await ensure(http, url_a, defn)
                    assert built["status"] == "built", built
                    row[f"image_{version}_bytes"] = built["image"]["size"]
                    row[f"stages_built_{version}"] = [line for line in await build_log(http, url_a, built)
                                                      if ": built in " in line]
                    began = time.monotonic()
                    await app_a[DAEMON].upstream.pushes.drain(timeout=300)
                    row[f"push_{version}_s"] = time.monotonic() - began
                    # Everything this build pushed: its stage images, then the image itself.
                    sent = app_a["store"].metadata.db.execute("select coalesce(sum(bytes), 0) from upstream_pushes").fetchone()[0]
                    row[f"push_{version}_bytes"] = sent - sent_before
                    sent_before = sent
                    client = app_b[DAEMON].upstream.client(config_b.upstreams[0])
                    before = client.bytes_in
                    row[f"pull_{version}_s"], pulled = await ensure(http, url_b, defn)
                    assert pulled["status"] == "pulled", pulled
                    assert pulled["image"]["digest"] == built["image"]["digest"]
                    row[f"pull_{version}_bytes"] = client.bytes_in - before
                    row[f"hit_{version}_s"], hit = await ensure(http, url_b, defn)
                    assert hit["status"] == "hit"
                rows.append(row)
        return {"rounds": rows}
    finally:
        for runner in runners:
            await runner.cleanup()
        shared.stop()
        origin.stop()
        dockerd.stop()


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    rows = data["rounds"]

    def med(name: str) -> float:
        return statistics.median(r[name] for r in rows)

    return {version: {"build_s": med(f"build_{version}_s"), "pull_s": med(f"pull_{version}_s"),
                      "hit_s": med(f"hit_{version}_s"), "image_bytes": med(f"image_{version}_bytes"),
                      "pull_bytes": med(f"pull_{version}_bytes"), "push_bytes": med(f"push_{version}_bytes")}
            for version in ("v1", "v2")}


def write(data: dict[str, Any]) -> None:
    summary = summarise(data)
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    c, t = summary["v1"], summary["v2"]

    def line(case: str, s: dict[str, float]) -> str:
        return (f"| {case} | {s['build_s']:.2f} | {s['pull_s']:.3f} | {s['build_s'] / s['pull_s']:.0f}× | "
                f"{s['image_bytes']:,.0f} | {s['pull_bytes']:,.0f} | {s['push_bytes']:,.0f} |")

    md = [
        "# Upstream benchmark: ensure by pulling vs by building",
        "",
        f"Produced by `{COMMAND}` on {stamp} (Python {platform.python_version()}, {platform.machine()}, "
        "shared 2-core machine; dockerd with the vfs driver; CNCF distribution 2.8 on loopback).",
        "Each time is one `POST /api/v1/ensure` with `\"wait\": true` answered by a real daemon. Daemon A "
        "builds (dockerd) and pushes; daemon B has no engine and answers by pulling. Image: busybox + an "
        f"8 MB incompressible dependency layer + a one-line application layer; medians of {len(data['rounds'])} rounds.",
        "",
        "| case | A builds (s) | B pulls (s) | build / pull | image bytes | bytes B pulled | bytes A pushed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        line("cold (nothing cached anywhere)", c),
        line("new version, only the top layer changed", t),
        "",
        f"After the pull, the same ensure on B is a hit in {1000 * t['hit_s']:.1f} ms. When only the top "
        f"layer changed, B moved {t['pull_bytes']:,.0f} bytes ({100 * t['pull_bytes'] / t['image_bytes']:.2f}% "
        f"of the image) and A sent {t['push_bytes']:,.0f}: shared layers are found by digest and never re-sent.",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "upstream.md").write_text("\n".join(md))
    (RESULTS / "upstream.json").write_text(json.dumps({"produced": stamp, "command": COMMAND, "summary": summary,
                                                       **data}, indent=2, sort_keys=True))
    print("\n".join(md))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-upstream-"))
    try:
        write(asyncio.run(run(work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
