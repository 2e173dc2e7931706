"""Private wheels in real builds: a definition that pins an uploaded wheel (and installs another
from the daemon's simple index) builds through dockerd and buildah and the image imports both;
registered environments are ensured and warmed by name from the CLI; an upstream registry
carries the wheels to a daemon that never saw the upload. Wheels are built by the test."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from envcache.builder import Engine
from envcache.oci import WHEEL_REPOSITORY
from envcache.service.config import Config
from envcache.upstream.config import parse_upstream
from tests.fixtures.daemon import DaemonURL
from tests.fixtures.engines import Buildah, Dockerd
from tests.fixtures.wheels import TinyWheel
from tests.test_build_engines import make_engine, run_in_image
from tests.test_service_cli import cli

pytestmark = pytest.mark.engine

MakeDaemon = Callable[..., Awaitable[DaemonURL]]


def check_script(*modules: str) -> str:
    """Print each module's MESSAGE, then where pip recorded the first one came from, then whether
    the wheels fetched for the build stayed in the image."""
    first = modules[0]
    code = (f"import json, pathlib, {', '.join(modules)}; "
            + "".join(f"print({m}.MESSAGE); " for m in modules)
            + f"print(json.loads(next(pathlib.Path({first}.__file__).parents[1].glob('{first}-*.dist-info'))"
            f".joinpath('direct_url.json').read_text())['url'])")
    return f"python3 -c \"{code}\"; ls /tmp/envcache-wheels 2>&1 || true"


def docker_config(dockerd: Dockerd, bases: dict[str, str], upstreams: list[dict[str, Any]] = ()) -> Config:
    config = Config()
    # gzip: Docker 20.10 pulls what the daemon built (it cannot pull zstd layers).
    config.build.engine, config.build.docker_host, config.build.compression = "docker", dockerd.host, "gzip"
    for variant, base in bases.items():
        config.variants[variant].base_image = base
    config.upstreams = [parse_upstream(u) for u in upstreams]
    return config


def buildah_config(buildah: Buildah, bases: dict[str, str]) -> Config:
    config = Config()
    config.build.engine, config.build.buildah_root = "buildah", str(buildah.storage_root)
    config.build.buildah_runroot, config.build.buildah_storage_driver = str(buildah.run_root), buildah.storage_driver
    for variant, base in bases.items():
        config.variants[variant].base_image = base
    return config


async def _add(daemon: str, wheel: TinyWheel) -> str:
    code, out, err = await cli(daemon, "wheels", "add", str(wheel.path))
    assert code == 0, err
    return out.strip()


def _write(path: Path, *pip: str, options: tuple[str, ...] = ()) -> Path:
    """A definition on the daemon's base for the variant: only pip packages (and options)."""
    path.write_text(yaml.safe_dump({"python": {"conda_dependencies": {"pip_packages": list(pip),
                                                                       "pip_options": list(options)}}}))
    return path


async def _ensure(daemon: str, target: str, variant: str = "cpu") -> tuple[str, str]:
    code, out, err = await cli(daemon, "ensure", target, "--variant", variant)
    assert code == 0, err
    return out.strip().splitlines()[-1], err


@pytest.fixture(params=["docker", "buildah"])
async def engine_daemon(request: pytest.FixtureRequest,
                        make_daemon: MakeDaemon) -> AsyncIterator[tuple[DaemonURL, Engine]]:
    if request.param == "docker":
        config = docker_config(request.getfixturevalue("dockerd"), request.getfixturevalue("python_base_docker"))
    else:
        config = buildah_config(request.getfixturevalue("buildah"), request.getfixturevalue("python_base_buildah"))
    engine = make_engine(request.param, request)  # the test's own handle, to run what was built
    yield await make_daemon(config), engine
    await engine.close()


async def test_a_definition_pinning_a_private_wheel_builds_and_imports_it(
        engine_daemon: tuple[DaemonURL, Engine], tiny_wheels: dict[str, TinyWheel], tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    daemon, engine = engine_daemon
    pkg, other = tiny_wheels["tinypkg"], tiny_wheels["tinyother"]
    requirement = await _add(daemon, pkg)
    await _add(daemon, other)
    # tinypkg pinned by its URL (served to the build from the store); tinyother found on the
    # daemon's own index, which the build's pip reaches over the host network.
    env = _write(tmp_path / "env.yml", requirement, "tinyother==1.0",
                 options=(f"--index-url {daemon}/api/v1/wheels/simple/",))
    image, log = await _ensure(daemon, str(env))
    assert "envcache: built" in log, log
    out = await run_in_image(engine, request, daemon, image.rsplit(":", 1)[1], check_script("tinypkg", "tinyother"))
    local = f"file:///tmp/envcache-wheels/{pkg.sha256}/{pkg.path.name}"
    assert out.splitlines()[:3] == [pkg.message, other.message, local], out
    assert "No such file or directory" in out  # the fetched wheels did not stay in the image
    key = image.rsplit(":", 1)[1].rsplit("-", 1)[0]
    lock = {entry["name"]: entry for entry in (await daemon.store.images.get(key)).lock["pip"]}
    # The lock names the served path (the same on every daemon) and each artifact's digest.
    assert lock["tinypkg"]["direct"] and lock["tinypkg"]["url"].split("#")[0] == local
    assert lock["tinypkg"]["sha256"] == pkg.sha256
    assert (lock["tinyother"]["version"], lock["tinyother"]["sha256"]) == ("1.0", other.sha256)
    code, out, _ = await cli(daemon, "wheels", "show", pkg.path.name, "--json")
    assert json.loads(out)["used_by"]["images"] == [key]


async def _pushed(registry: str, repository: str, tag: str, timeout: float = 120) -> dict[str, Any]:
    """The manifest of ``repository:tag`` on the registry, once a background push has put it there."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{registry}/v2/{repository}/manifests/{tag}",
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}) as resp:
                if resp.status == 200:
                    return json.loads(await resp.read())
            assert asyncio.get_running_loop().time() < deadline, f"{repository}:{tag} never reached {registry}"
            await asyncio.sleep(0.5)


async def test_registered_environments_by_name_and_wheels_carried_by_an_upstream(
        make_daemon: MakeDaemon, dockerd: Dockerd, python_base_docker: dict[str, str], reference_registry: str,
        tiny_wheels: dict[str, TinyWheel], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    prefix = f"team{os.urandom(4).hex()}"
    shared = {"url": reference_registry, "prefix": prefix}
    a = await make_daemon(docker_config(dockerd, python_base_docker, [{**shared, "mode": "push"}]))
    b = await make_daemon(docker_config(dockerd, python_base_docker, [{**shared, "mode": "pull"}]))
    pkg = tiny_wheels["tinypkg"]
    requirement = await _add(a, pkg)
    # An uploaded wheel is shared at once, as an OCI artifact.
    artifact = await _pushed(reference_registry, f"{prefix}/wheel", pkg.sha256)
    assert artifact["layers"][0]["digest"] == f"sha256:{pkg.sha256}"

    # On A: register, ensure by name, warm every registered environment in both variants.
    env = _write(tmp_path / "env.yml", requirement)
    assert (await cli(a, "env", "register", "trainer", str(env)))[0] == 0
    image, log = await _ensure(a, "trainer")
    assert "envcache: built" in log
    code, out, err = await cli(a, "warm", "--registered", "--json")
    assert code == 0, err
    outcomes = {(r["label"], r["variant"]): r["outcome"] for r in json.loads(out)["results"]}
    assert outcomes == {("trainer:1", "cpu"): "hit", ("trainer:1", "gpu"): "built"}
    assert (await cli(a, "resolve", "trainer:1", "--variant", "cpu"))[1].strip() == image
    # The same wheel named through another daemon's URL is the same environment: a hit.
    elsewhere = _write(tmp_path / "elsewhere.yml", requirement.replace(a.host, "envcache.team.example:5000"))
    assert (await cli(a, "resolve", str(elsewhere), "--variant", "cpu"))[1].strip() == image
    code, _, err = await cli(a, "wheels", "rm", pkg.sha256)
    assert code == 1 and "pinned by registered environment(s) trainer:1" in err
    key = image.rsplit(":", 1)[1].rsplit("-", 1)[0]
    await _pushed(reference_registry, f"{prefix}/env", f"{key}-cpu")

    # On B, which never saw the upload: a new definition pinning the wheel at a host nobody
    # answers on builds, with the wheel pulled from the upstream and served from B's store …
    dead = requirement.replace(a.host, "127.0.0.1:9")
    fresh = _write(tmp_path / "fresh.yml", dead, options=("--prefer-binary",))  # not built anywhere yet
    built, log = await _ensure(b, str(fresh))
    assert f"upstream: pulled {reference_registry}/{prefix}/wheel:{pkg.sha256}" in log and "envcache: built" in log
    docker = make_engine("docker", request)
    try:
        out = await run_in_image(docker, request, b, built.rsplit(":", 1)[1], check_script("tinypkg"))
    finally:
        await docker.close()
    assert out.splitlines()[:2] == [pkg.message, f"file:///tmp/envcache-wheels/{pkg.sha256}/{pkg.path.name}"]
    # … and A's image, asked for through B's own URL for the wheel, is pulled, not built.
    mine = _write(tmp_path / "mine.yml", requirement.replace(a.host, b.host))
    pulled, log = await _ensure(b, str(mine))
    assert pulled.rsplit(":", 1)[1] == image.rsplit(":", 1)[1] and "envcache: pulled" in log
    # B keeps the pulled wheel while its images pin it, though nobody uploaded it there.
    assert (await cli(b, "wheels", "list", "--json"))[1].strip() == "[]"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{b}/api/v1/gc", json={"grace_seconds": 0}) as resp:
            assert f"{WHEEL_REPOSITORY}:{pkg.sha256}" not in (await resp.json())["tags_deleted"]
        assert await b.store.has_blob(f"sha256:{pkg.sha256}")
        async with http.post(f"{b}/api/v1/gc", json={"grace_seconds": 0, "keep_days": 0}) as resp:
            report = await resp.json()  # every image expires: nothing pins the wheel any more
    assert f"{WHEEL_REPOSITORY}:{pkg.sha256}" in report["tags_deleted"], report
    assert not await b.store.has_blob(f"sha256:{pkg.sha256}")
