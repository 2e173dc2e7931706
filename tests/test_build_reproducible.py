"""Reproducible images: the same key and lock, built cold on two fresh daemons with two fresh
engines, give byte-identical layers, config and manifest.

Each side is its own machine: a new envcache data directory and a new engine (a second dockerd
with its own data root, or a new buildah storage) with only the python base loaded. Both resolve
the same local wheel index and conda channel, so both record the same lock; everything else —
build times, container ids, the helper's random port and token, file mtimes, ``.pyc`` headers —
must not reach the bytes (README "Reproducible layers").
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from envcache.service.config import Config
from tests.fixtures.bases import PythonBase, load_into_buildah, load_into_dockerd
from tests.fixtures.engines import start_buildah
from tests.fixtures.testdata import CondaChannel
from tests.fixtures.upstream import ensure_and_log
from tests.fixtures.wheel_index import WheelIndex

pytestmark = pytest.mark.engine

BASE = "envcache-test/python-base:cpu"


async def _cold_build(engine: str, make_daemon, dockerd_factory, python_base: PythonBase,
                      definition: dict[str, Any], cleanup: list) -> dict[str, Any]:
    """A fresh engine holding only the base, a fresh daemon on it, one ensure: the stored result."""
    config = Config()
    config.build.engine = engine
    if engine == "docker":
        fresh = dockerd_factory()
        load_into_dockerd(fresh, python_base.cpu, BASE)
        config.build.docker_host = fresh.host
    else:
        fresh = start_buildah()
        cleanup.append(fresh.stop)
        load_into_buildah(fresh, python_base.cpu, BASE)
        config.build.buildah_root, config.build.buildah_runroot = str(fresh.storage_root), str(fresh.run_root)
        config.build.buildah_storage_driver = fresh.storage_driver
    daemon = await make_daemon(config)
    answer = await ensure_and_log(daemon, definition)
    assert answer.get("status") == "built", answer.get("log", answer)
    manifest = json.loads((await daemon.store.get_manifest("envcache/env", answer["image"]["digest"])).body)
    pip_stage = re.search(r"^stage pip ([0-9a-f]{32}): built", answer["log"], re.MULTILINE).group(1)
    stage = json.loads((await daemon.store.get_manifest("envcache/stage", pip_stage)).body)
    config = json.loads(daemon.store.files.path(manifest["config"]["digest"]).read_bytes())
    return {"manifest": answer["image"]["digest"], "config": manifest["config"]["digest"], "config json": config,
            "layers": [layer["digest"] for layer in manifest["layers"]], "pip stage": pip_stage,
            "pip layer": stage["layers"][-1]["digest"], "lock": answer["image"]["lock"],
            "annotations": manifest["annotations"]}


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON documents differ (for the failure message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(a.keys() | b.keys()) for d in _differences(a.get(key), b.get(key), f"{path}.{key}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {str(a)[:200]!r} != {str(b)[:200]!r}"]


@pytest.mark.parametrize("engine", ["docker", "buildah"])
async def test_two_cold_builds_on_fresh_daemons_are_byte_identical(
        engine: str, make_daemon, dockerd_factory, python_base: PythonBase, wheel_index: WheelIndex,
        conda_channel: CondaChannel) -> None:
    wheel_index.add("envcache-dep", "1.0")
    wheel_index.add("envcache-app", "1.0", ["envcache-dep>=1.0"])
    definition = {
        "docker": {"base_image": BASE},
        "python": {"conda_dependencies": {"channels": [conda_channel.url], "conda_packages": ["envcache-tool"],
                                          "pip_packages": ["envcache-app>=1"], "pip_options": wheel_index.options}},
        "environment_variables": {"REPRODUCIBLE": "yes"},
    }
    cleanup: list = []
    try:
        sides = [await _cold_build(engine, make_daemon, dockerd_factory, python_base, definition, cleanup)
                 for _ in range(2)]
    finally:
        for stop in cleanup:
            stop()
    for name in ("pip stage", "pip layer", "config", "manifest"):
        print(f"{engine} {name}: {sides[0][name]}  {sides[1][name]}")
    a, b = sides
    assert a["lock"] == b["lock"] and a["pip stage"] == b["pip stage"]
    assert a["pip layer"] == b["pip layer"]
    assert a["layers"] == b["layers"]
    assert a["config"] == b["config"], _differences(a["config json"], b["config json"])
    assert a["manifest"] == b["manifest"]
    assert "envcache.reproducible" not in a["annotations"]     # nothing here downloads unpinned content
