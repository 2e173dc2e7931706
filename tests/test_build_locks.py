"""The lock, end to end: recorded per package, fed back on every rebuild, re-resolved on refresh.

Real parts only: daemons building with the session's dockerd and buildah on the Debian python
base, a local package index of real wheels (``tests.fixtures.wheel_index``) that gains a release
while the test runs, a CNCF distribution as the shared upstream, and the ``envcache`` CLI as a
user runs it. ``envcache-app`` depends on ``envcache-dep``, which the definitions never name:
the transitive package is where unpinned drift hides.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from envcache.service.config import Config
from envcache.service.daemon import DAEMON
from envcache.upstream.config import parse_upstream
from tests.fixtures.daemon import DaemonURL
from tests.fixtures.engines import Buildah, Dockerd
from tests.fixtures.wheel_index import WheelIndex

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parent.parent
BASE = "envcache-test/python-base:cpu"   # as loaded into both engines (buildah files it under localhost/)


def docker_config(dockerd: Dockerd, upstreams: list[dict[str, Any]] | None = None) -> Config:
    config = Config()
    config.build.engine, config.build.docker_host, config.build.compression = "docker", dockerd.host, "gzip"
    config.upstreams = [parse_upstream(u) for u in upstreams or []]
    return config


def buildah_config(buildah: Buildah, upstreams: list[dict[str, Any]] | None = None) -> Config:
    config = Config()
    config.build.engine, config.build.compression = "buildah", "gzip"
    config.build.buildah_root, config.build.buildah_runroot = str(buildah.storage_root), str(buildah.run_root)
    config.build.buildah_storage_driver = buildah.storage_driver
    config.upstreams = [parse_upstream(u) for u in upstreams or []]
    return config


def definition(index: WheelIndex, *packages: str) -> dict[str, Any]:
    return {"docker": {"base_image": BASE},
            "python": {"conda_dependencies": {"pip_packages": list(packages or ["envcache-app>=1"]),
                                              "pip_options": index.options}}}


@pytest.fixture
def index(wheel_index: WheelIndex) -> WheelIndex:
    """The index as the first build sees it: envcache-app 1.0 (needs envcache-dep>=1), envcache-dep 1.0."""
    wheel_index.add("envcache-dep", "1.0")
    wheel_index.add("envcache-app", "1.0", ["envcache-dep>=1.0"])
    return wheel_index


def versions(lock: dict[str, Any]) -> dict[str, str]:
    return {entry["name"]: entry["version"] for entry in lock["pip"]}


async def cli(url: str, *args: str) -> tuple[int, str, str]:
    """``envcache ARGS --url URL`` as a user runs it (the daemon runs in this event loop, so the
    process is awaited, never waited for)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "envcache.cli", *args, "--url", url, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 900)
    return proc.returncode or 0, out.decode(), err.decode()


async def ensure(url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/v1/ensure", json={"variant": "cpu", "wait": True, **body}) as resp:
            answer = await resp.json()
        if "build" in answer:
            async with http.get(f"{url}/api/v1/builds/{answer['build']['id']}/log", params={"follow": "false"}) as log:
                answer["log"] = await log.text()
    return answer


async def test_refresh_re_resolves_reports_the_change_and_keeps_the_old_image(
        make_daemon, dockerd: Dockerd, python_base_docker: dict[str, str], index: WheelIndex, tmp_path: Path) -> None:
    daemon: DaemonURL = await make_daemon(docker_config(dockerd))
    env = tmp_path / "env.yml"
    env.write_text(yaml.safe_dump(definition(index)))

    status, image_ref, err = await cli(daemon, "ensure", str(env), "--variant", "cpu")
    assert status == 0, err
    image_ref = image_ref.strip()
    key = image_ref.rsplit(":", 1)[1].rsplit("-", 1)[0]
    first = json.loads((await cli(daemon, "images", key, "--json"))[1])
    # Complete and checkable: the transitive dependency is locked (artifact, sha256) and unpinned.
    assert versions(first["lock"]) == {"envcache-app": "1.0", "envcache-dep": "1.0"}
    wheels = {path.name: path for path in index.wheels}
    for entry in first["lock"]["pip"]:
        assert entry["url"].startswith(index.url) and entry["filename"] in wheels
        assert entry["sha256"] == hashlib.sha256(wheels[entry["filename"]].read_bytes()).hexdigest()
    assert first["lock"]["unpinned"] == ["pip:envcache-app", "pip:envcache-dep"]
    status, shown, _ = await cli(daemon, "lock", "show", str(env), "--variant", "cpu")
    assert status == 0 and "envcache-dep 1.0" in shown and "(dependency)" in shown
    status, exported, _ = await cli(daemon, "lock", "export", key, "--format", "requirements")
    assert status == 0 and f"envcache-dep==1.0 --hash=sha256:" in exported

    # The index has nothing new: a refresh resolves, finds the same set, and changes nothing.
    status, again, err = await cli(daemon, "ensure", str(env), "--variant", "cpu", "--refresh")
    assert status == 0 and again.strip() == image_ref, err
    assert "nothing changed" in err

    index.add("envcache-dep", "1.1")
    # A plain ensure is a hit: the key names the image it names, whatever the index offers now.
    hit = await ensure(daemon, {"definition": definition(index)})
    assert hit["status"] == "hit" and hit["image"]["digest"] == first["digest"]

    status, out, err = await cli(daemon, "ensure", str(env), "--variant", "cpu", "--refresh", "--json")
    refreshed = json.loads(out)
    print("refresh:", refreshed["build"]["changes"], refreshed["image"]["digest"])
    assert refreshed["status"] == "built" and refreshed["build"]["changes"] == ["envcache-dep 1.0 → 1.1"]
    assert refreshed["image"]["key"] == key and refreshed["image"]["digest"] != first["digest"]
    assert versions(refreshed["image"]["lock"]) == {"envcache-app": "1.0", "envcache-dep": "1.1"}
    now = await ensure(daemon, {"definition": definition(index)})     # a hit on the new image
    assert now["status"] == "hit" and now["image"]["digest"] == refreshed["image"]["digest"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon}/api/v1/builds/{refreshed['build']['id']}/log",
                            params={"follow": "false"}) as resp:
            assert "refresh: 1 change(s): envcache-dep 1.0 → 1.1" in await resp.text()

    # The refreshed image runs with the new release.
    pulled = await asyncio.to_thread(dockerd.docker, "pull", "-q", f"{daemon.host}/envcache/env:{refreshed['image']['tag']}")
    ran = await asyncio.to_thread(dockerd.docker, "run", "--rm", "--network", "none", pulled.stdout.strip(),
                                  "python3", "-c", "import envcache_dep; print(envcache_dep.__version__)")
    assert ran.stdout.strip() == "1.1"

    # The old image stays in the key's history, pullable by digest, across a gc…
    history = json.loads((await cli(daemon, "images", key, "--history", "--json"))[1])
    assert history["current"]["digest"] == refreshed["image"]["digest"]
    assert [old["digest"] for old in history["replaced"]] == [first["digest"]]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{daemon}/api/v1/gc", json={"grace_seconds": 0}) as resp:
            assert resp.status == 200
        async with http.get(f"{daemon}/v2/envcache/env/manifests/{first['digest']}") as resp:
            assert resp.status == 200
        # … until gc expires it.
        async with http.post(f"{daemon}/api/v1/gc", json={"grace_seconds": 0, "keep_days": 0}) as resp:
            assert resp.status == 200
        async with http.get(f"{daemon}/v2/envcache/env/manifests/{first['digest']}") as resp:
            assert resp.status == 404


async def test_a_fully_pinned_definition_refreshes_as_a_hit(make_daemon, dockerd: Dockerd,
                                                           python_base_docker: dict[str, str], index: WheelIndex) -> None:
    daemon = await make_daemon(docker_config(dockerd))
    pinned = definition(index, "envcache-app==1.0", "envcache-dep==1.0")
    built = await ensure(daemon, {"definition": pinned})
    assert built["status"] == "built" and built["image"]["lock"]["unpinned"] == []
    index.add("envcache-dep", "1.1")
    again = await ensure(daemon, {"definition": pinned, "refresh": True})
    assert again["status"] == "hit" and again["image"]["digest"] == built["image"]["digest"]


async def test_two_daemons_and_a_gc_install_the_lock_not_the_newest_release(
        make_daemon, dockerd: Dockerd, buildah: Buildah, python_base_docker: dict[str, str],
        python_base_buildah: dict[str, str], index: WheelIndex, reference_registry_factory) -> None:
    shared = reference_registry_factory()
    daemon_a = await make_daemon(docker_config(dockerd, [{"url": shared.url, "mode": "both"}]))
    daemon_b = await make_daemon(buildah_config(buildah, [{"url": shared.url, "mode": "pull"}]))
    body = {"definition": definition(index)}
    built = await ensure(daemon_a, body)
    assert built["status"] == "built", built.get("log", built)
    await daemon_a.app[DAEMON].upstream.pushes.drain(timeout=300)
    tag = built["image"]["tag"]
    async with aiohttp.ClientSession() as http:
        # The lock travelled with the image: an OCI artifact whose subject is the image.
        async with http.get(f"{shared.url}/v2/envcache/lock/manifests/{tag}",
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}) as resp:
            artifact = await resp.json(content_type=None)
        assert artifact["artifactType"] == "application/vnd.envcache.lock.v1+json"
        assert artifact["subject"]["digest"] == built["image"]["digest"]
        # The image itself leaves the shared registry (gc'd there, or never pushed): only the lock is left.
        async with http.delete(f"{shared.url}/v2/envcache/env/manifests/{built['image']['digest']}") as resp:
            assert resp.status == 202

    index.add("envcache-dep", "1.1")     # the index moves on between the two builds
    on_b = await ensure(daemon_b, body)
    assert on_b["status"] == "built", on_b.get("log", on_b)
    assert on_b["image"]["key"] == built["image"]["key"]
    assert f"upstream: pulled {shared.url}/envcache/lock:{tag}" in on_b["log"]
    assert f"lock: installing exactly the lock of {tag} (2 pip)" in on_b["log"]
    assert on_b["image"]["lock"]["pip"] == built["image"]["lock"]["pip"]
    assert versions(on_b["image"]["lock"]) == {"envcache-app": "1.0", "envcache-dep": "1.0"}

    # On A, after gc forgot the image: the lock survived it, and the rebuild installs it again.
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{daemon_a}/api/v1/gc", json={"grace_seconds": 0, "keep_days": 0}) as resp:
            assert built["image"]["key"] in (await resp.json())["images_expired"]
    rebuilt = await ensure(daemon_a, body)
    assert rebuilt["status"] == "built", rebuilt.get("log", rebuilt)
    assert f"lock: installing exactly the lock of {tag} (2 pip)" in rebuilt["log"]
    assert versions(rebuilt["image"]["lock"]) == {"envcache-app": "1.0", "envcache-dep": "1.0"}
    assert rebuilt["image"]["digest"] == built["image"]["digest"]      # same key, same lock, same image
