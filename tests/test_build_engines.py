"""Builds through real engines (a private dockerd and buildah), ingested into a real envcache
registry, pulled back out with real clients.

WHY the shape: vfs storage copies the rootfs for every container, so each engine builds the
full definition once (module-scoped fixture) and the tests inspect that one result; the
second definition (one pip package changed) shows prefix reuse. Base images come from the
envcache registry itself (pushed there with skopeo), as a fresh machine would have them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from envcache.builder import (
    BuildahEngine, BuildFailed, DockerEngine, Engine, build_image, lock_from_store, stage_keys_for,
)
from envcache.builder.build import BuiltImage
from envcache.builder.plan import BuildPlan
from envcache.service.config import Config
from envcache.definition import Definition, definition_from_dict
from envcache.store import Store
from tests.fixtures.bases import PythonBase
from tests.fixtures.daemon import DaemonURL, running_daemon
from tests.fixtures.engines import Buildah, Dockerd, skopeo
from tests.fixtures.testdata import MAVEN_GROUP, CondaChannel, MavenRepo

pytestmark = pytest.mark.engine

CORE = f"{MAVEN_GROUP}:envcache-core:1.0.0"


def registry_daemon(data_dir: Path) -> contextlib.AbstractAsyncContextManager[DaemonURL]:
    """A daemon used only as a registry (no engine of its own: the tests drive the engines)."""
    config = Config()
    config.server.data_dir = data_dir
    config.build.engine = "none"
    return running_daemon(config)


@pytest.fixture(scope="module")
async def registry(tmp_path_factory: pytest.TempPathFactory, python_base: PythonBase) -> AsyncIterator[DaemonURL]:
    """A real envcache daemon on loopback holding the cpu and gpu python bases (and the
    images of the docker-only tests)."""
    async with registry_daemon(tmp_path_factory.mktemp("build-registry")) as daemon:
        for variant in ("cpu", "gpu"):
            await asyncio.to_thread(skopeo, "copy", "--quiet", "--dest-tls-verify=false",
                                    python_base.image(variant).ref, f"docker://{daemon.host}/base/python:{variant}")
        yield daemon


@pytest.fixture(scope="module")
async def target(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DaemonURL]:
    """A fresh envcache daemon per engine for the built images: stages stored by one engine's
    build must not turn the other engine's build into a load."""
    async with registry_daemon(tmp_path_factory.mktemp(f"build-target-{engine.name}")) as daemon:
        yield daemon


def make_engine(kind: str, request: pytest.FixtureRequest) -> Engine:
    if kind == "docker":
        dockerd: Dockerd = request.getfixturevalue("dockerd")
        return DockerEngine(dockerd.host)
    buildah: Buildah = request.getfixturevalue("buildah")
    return BuildahEngine(root=buildah.storage_root, runroot=buildah.run_root, storage_driver=buildah.storage_driver)


@pytest.fixture(scope="module", params=["docker", "buildah"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    eng = make_engine(request.param, request)
    yield eng
    await eng.close()


@pytest.fixture(scope="module")
async def docker_engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    eng = make_engine("docker", request)
    yield eng
    await eng.close()


def build_config(compression: str = "zstd", stage_timeout: int = 900) -> Config:
    config = Config()
    config.build.compression = compression
    config.build.stage_timeout = stage_timeout
    return config


def full_definition(host: str, channel: CondaChannel, maven: MavenRepo, pip: str) -> Definition:
    return definition_from_dict({
        "docker": {"base_dockerfile": f"FROM {host}/base/python:cpu\nRUN echo dockerfile-step > /etc/envcache-step\n"},
        "python": {"conda_dependencies": {"channels": [channel.url], "conda_packages": ["envcache-tool"],
                                          "pip_packages": [pip]}},
        "spark": {"repositories": [maven.url],
                  "packages": [{"group": MAVEN_GROUP, "artifact": "envcache-core", "version": "1.0.0"}]},
        "environment_variables": {"ENVCACHE_TEST": "yes $HOME"},
    })


@dataclass
class Built:
    defn: Definition
    image: BuiltImage
    log: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sources: tuple = ()     # (registry host, conda channel, maven repo) the definition was made from


async def run_build(defn: Definition, variant: str, *, engine: Engine, registry: DaemonURL, key: str,
                    config: Config) -> Built:
    lines: list[str] = []
    started = time.monotonic()
    image = await build_image(BuildPlan.of(defn, variant, key=key), store=registry.store, engine=engine,
                              settings=config.build, log=lines.append)
    return Built(defn, image, lines, time.monotonic() - started)


def compression_for(engine: Engine) -> str:
    # Docker 20.10 cannot pull zstd layers: the docker build is stored gzip (the default) so the
    # docker CLI can pull it; the buildah one opts into zstd, pulled with skopeo/buildah.
    return "gzip" if engine.name == "docker" else "zstd"


@pytest.fixture(scope="module")
async def built(engine: Engine, registry: DaemonURL, target: DaemonURL, conda_channel: CondaChannel,
                maven_repo: MavenRepo) -> Built:
    defn = full_definition(registry.host, conda_channel, maven_repo, "six==1.16.0")
    result = await run_build(defn, "cpu", engine=engine, registry=target, key=f"full-{engine.name}",
                             config=build_config(compression_for(engine)))
    result.sources = (registry.host, conda_channel, maven_repo)
    return result


CHECK_SCRIPT = (
    "cat /etc/envcache-step; envcache-tool; "
    "python3 -c 'import six; print(\"six\", six.__version__)'; "
    "sha256sum /opt/spark/jars/*.jar; echo \"env=$ENVCACHE_TEST\"; ls /opt/envcache/lock"
)


async def run_in_image(engine: Engine, request: pytest.FixtureRequest, registry: DaemonURL, tag: str,
                       script: str) -> str:
    """Pull ``envcache/env:<tag>`` from the envcache registry into the engine and run ``script``."""
    ref = f"{registry.host}/envcache/env:{tag}"
    if engine.name == "docker":
        dockerd: Dockerd = request.getfixturevalue("dockerd")
        await asyncio.to_thread(dockerd.docker, "pull", "-q", ref)
        result = await asyncio.to_thread(dockerd.docker, "run", "--rm", "--network", "none", ref, "sh", "-c", script)
        return result.stdout
    buildah: Buildah = request.getfixturevalue("buildah")
    await asyncio.to_thread(buildah.buildah, "pull", "-q", "--tls-verify=false", ref)
    container = (await asyncio.to_thread(buildah.buildah, "from", "--pull=false", ref)).stdout.strip()
    try:
        result = await asyncio.to_thread(buildah.buildah, "run", "--isolation", "chroot", container, "--",
                                         "sh", "-c", script)
        return result.stdout
    finally:
        await asyncio.to_thread(buildah.buildah, "rm", container)


async def test_full_build_runs_with_every_stage(engine: Engine, built: Built, target: DaemonURL,
                                                maven_repo: MavenRepo, request: pytest.FixtureRequest) -> None:
    image = built.image
    assert image.repository == "envcache/env" and image.tag == f"full-{engine.name}-cpu"
    assert image.stages_built == ["base", "conda", "pip", "spark"]   # the config stage is written, not built
    assert image.resolved == ["conda", "pip", "spark"]
    out = await run_in_image(engine, request, target, image.tag, CHECK_SCRIPT)
    jar = maven_repo.file(maven_repo.artifact(CORE), "jar")
    assert "dockerfile-step" in out
    assert "envcache-tool 2.0.0" in out and "hello from a conda package" in out
    assert "six 1.16.0" in out
    assert f"{hashlib.sha256(jar.read_bytes()).hexdigest()}  /opt/spark/jars/{MAVEN_GROUP}_envcache-core-1.0.0.jar" in out
    assert "env=yes $HOME" in out  # `$` kept literally, not expanded at build time
    # The lock stored with the image says what was resolved: per package, artifact and sha256.
    [six] = image.lock["pip"]
    assert (six["name"], six["version"], six["filename"]) == ("six", "1.16.0", "six-1.16.0-py2.py3-none-any.whl")
    assert len(six["sha256"]) == 64 and six["requested"]
    conda = {record["name"]: record["version"] for record in image.lock["conda"]}
    assert conda == {"envcache-tool": "2.0.0", "envcache-hello": "1.0.0", "envcache-data": "0.2.0"}
    assert all(len(record["sha256"]) == 64 for record in image.lock["conda"])
    assert image.lock["spark"][0]["coordinate"] == CORE
    # Transitive packages count: the definition pins none of envcache-tool's dependencies.
    assert image.lock["unpinned"] == ["conda:envcache-data", "conda:envcache-hello", "conda:envcache-tool"]
    # The CA bundle reached pip only through the helper: not in any layer, and the log never
    # shows certificate text.
    assert not any("BEGIN CERTIFICATE" in line for line in built.log)
    assert "pip.json" in out and "conda.json" in out and "spark.json" in out
    # The base Dockerfile's RUN step may fetch anything: the image says it is not reproducible.
    manifest = json.loads((await target.store.get_manifest("envcache/env", image.tag)).body)
    assert manifest["annotations"]["envcache.reproducible"] == \
        "no: the base Dockerfile's RUN steps may download unpinned content"


def _engine_diff_ids(engine: Engine, request: pytest.FixtureRequest, ref: str) -> list[str]:
    if engine.name == "docker":
        dockerd: Dockerd = request.getfixturevalue("dockerd")
        return json.loads(dockerd.docker("image", "inspect", ref).stdout)[0]["RootFS"]["Layers"]
    buildah: Buildah = request.getfixturevalue("buildah")
    return json.loads(buildah.buildah("inspect", "--type", "image", ref).stdout)["OCIv1"]["rootfs"]["diff_ids"]


async def test_ingested_image_pulls_back_with_skopeo_and_matches_engine(
        engine: Engine, built: Built, target: DaemonURL, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    layout = tmp_path / "pulled"
    await asyncio.to_thread(skopeo, "copy", "--quiet", "--src-tls-verify=false",
                            f"docker://{target.host}/envcache/env:{built.image.tag}", f"oci:{layout}:x")
    index = json.loads((layout / "index.json").read_text())

    def blob(digest: str) -> bytes:
        return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    final_stage = f"envcache-stage:{built.image.stage_keys[-2]}"     # the last engine stage
    engine_ids = await asyncio.to_thread(_engine_diff_ids, engine, request, final_stage)
    assert config["rootfs"]["diff_ids"] == engine_ids
    media = {layer["mediaType"] for layer in manifest["layers"]}
    assert media == {f"application/vnd.oci.image.layer.v1.tar+{compression_for(engine)}"}
    # Every pulled layer decompresses to exactly its diff_id.
    for layer, diff_id in zip(manifest["layers"], engine_ids):
        data = blob(layer["digest"])
        raw = gzip.decompress(data) if layer["mediaType"].endswith("gzip") else \
            zstandard.ZstdDecompressor().stream_reader(data).read()
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == diff_id


async def test_rebuilding_the_same_definition_builds_nothing(engine: Engine, built: Built, target: DaemonURL) -> None:
    again = await run_build(built.defn, "cpu", engine=engine, registry=target, key=f"full-{engine.name}",
                            config=build_config(compression_for(engine)))
    assert again.image.stages_built == [] and again.image.resolved == []   # the key's lock, installed as is
    assert sum("cached in" in line for line in again.log) == 4
    assert again.image.manifest_digest == built.image.manifest_digest
    assert all(layer["reused"] for layer in again.image.layers)


async def test_prefix_reuse_when_one_pip_package_changes(engine: Engine, built: Built, registry: DaemonURL,
                                                        target: DaemonURL, conda_channel: CondaChannel,
                                                        maven_repo: MavenRepo) -> None:
    other = full_definition(registry.host, conda_channel, maven_repo, "six==1.15.0")
    result = await run_build(other, "cpu", engine=engine, registry=target, key=f"pipchange-{engine.name}",
                             config=build_config(compression_for(engine)))
    first, second = built.image, result.image
    assert second.stages_built == ["pip", "spark"]
    assert second.stage_keys[:2] == first.stage_keys[:2] and second.stage_keys[2] != first.stage_keys[2]
    assert any(f"stage conda {first.stage_keys[1]}: cached" in line for line in result.log)
    assert [(e["name"], e["version"]) for e in second.lock["pip"]] == [("six", "1.15.0")]
    # Everything below the pip layer is the same layers, reused without re-compressing.
    pip_index = next(i for i, (a, b) in enumerate(zip(first.layers, second.layers)) if a["diff_id"] != b["diff_id"])
    assert pip_index >= 2
    assert [l["digest"] for l in second.layers[:pip_index]] == [l["digest"] for l in first.layers[:pip_index]]
    assert all(layer["reused"] for layer in second.layers[:pip_index])


async def test_stages_are_stored_and_load_back_into_an_engine_that_lost_them(
        engine: Engine, built: Built, target: DaemonURL) -> None:
    store = target.store
    *keys, _config_key = built.image.stage_keys
    # With the key's lock in the store, every stage key is known before building anything.
    plan = BuildPlan.of(built.defn, "cpu", key=f"full-{engine.name}")
    assert await stage_keys_for(plan, engine=engine, store=store) == keys
    assert await stage_keys_for(BuildPlan.of(built.defn, "cpu", key="never-built"), engine=engine,
                                store=store) == keys[:1]   # without a lock: up to the first stage that resolves
    for key in keys:
        assert await store.get_manifest("envcache/stage", key) is not None
    for key in keys:
        await engine.remove(f"envcache-stage:{key}")
    assert await engine.inspect(f"envcache-stage:{keys[-1]}") is None
    again = await run_build(built.defn, "cpu", engine=engine, registry=target, key=f"full-{engine.name}",
                            config=build_config(compression_for(engine)))
    # The image is written from the stored stages: nothing is built, nothing even loaded.
    assert again.image.stages_built == [] and not any("loaded into" in line for line in again.log)
    assert again.image.manifest_digest == built.image.manifest_digest
    # A stage built on a stored one gets its parent back in the engine (by id, or loaded).
    other = full_definition(*built.sources, "six==1.14.0")
    result = await run_build(other, "cpu", engine=engine, registry=target, key=f"reload-{engine.name}",
                             config=build_config(compression_for(engine)))
    assert result.image.stages_built == ["pip", "spark"], result.log
    assert any(f"stage {keys[1]}: loaded into {engine.name}" in line or f"stage {keys[1]}: found by id in" in line
               for line in result.log), result.log
    # The lock can be read back from the stored layers alone (an image pulled without its artifact).
    lock = await lock_from_store(store, "no-lock-artifact", "envcache/env", built.image.manifest_digest)
    assert {k: lock[k] for k in ("pip", "conda", "spark")} == {k: built.image.lock[k] for k in ("pip", "conda", "spark")}


# --- docker-only checks (variants, failures, cancellation) ---------------------------------------------


async def test_cpu_and_gpu_variants_differ_in_base(docker_engine: Engine, registry: DaemonURL,
                                                   python_base: PythonBase) -> None:
    defn = definition_from_dict({
        "docker": {"base_image": f"{registry.host}/base/python:cpu"},
        "environment_variables": {"WHICH": "variant-test"},
        "variants": {"gpu": {"base_image": f"{registry.host}/base/python:gpu"}},
    })
    cpu = await run_build(defn, "cpu", engine=docker_engine, registry=registry, key="variants", config=build_config())
    gpu = await run_build(defn, "gpu", engine=docker_engine, registry=registry, key="variants", config=build_config())
    assert cpu.image.tag == "variants-cpu" and gpu.image.tag == "variants-gpu"
    assert cpu.image.base_digest != gpu.image.base_digest
    assert set(cpu.image.stage_keys).isdisjoint(gpu.image.stage_keys)
    cpu_diffs = [layer["diff_id"] for layer in cpu.image.layers]
    gpu_diffs = [layer["diff_id"] for layer in gpu.image.layers]
    assert cpu_diffs == list(python_base.cpu.diff_ids)
    assert gpu_diffs == list(python_base.gpu.diff_ids)  # the rootfs is shared, the CUDA marker is gpu-only
    store = registry.store
    configs = {}
    for built_variant in (cpu, gpu):
        manifest = json.loads((await store.get_manifest("envcache/env", built_variant.image.tag)).body)
        configs[built_variant.image.tag] = json.loads(store.files.path(manifest["config"]["digest"]).read_bytes())
    assert "CUDA_VERSION" in " ".join(configs["variants-gpu"]["config"]["Env"])
    assert "CUDA_VERSION" not in " ".join(configs["variants-cpu"]["config"]["Env"])
    assert "WHICH=variant-test" in configs["variants-cpu"]["config"]["Env"]
    # One image index over the built variants, tagged by spec hash.
    from envcache.definition import spec_hash

    index = await store.get_manifest("envcache/env", spec_hash(defn))
    assert index is not None and index.media_type == "application/vnd.oci.image.index.v1+json"
    entries = {e["annotations"]["envcache.variant"]: e["digest"] for e in json.loads(index.body)["manifests"]}
    assert entries == {"cpu": cpu.image.manifest_digest, "gpu": gpu.image.manifest_digest}


async def _store_tags(store: Store) -> set[str]:
    return set(await store.manifests.tags("envcache/env"))


async def _assert_fails(defn: Definition, step: str, needle: str, *, engine: Engine, registry: DaemonURL,
                        key: str, config: Config | None = None) -> BuildFailed:
    before = await _store_tags(registry.store)
    with pytest.raises(BuildFailed) as info:
        await run_build(defn, "cpu", engine=engine, registry=registry, key=key, config=config or build_config())
    assert info.value.step == step
    assert needle in str(info.value)
    assert await _store_tags(registry.store) == before
    assert not any(tag.startswith(key) for tag in await _store_tags(registry.store))
    return info.value


async def test_failing_run_step_reports_step_and_tail_and_tags_nothing(docker_engine: Engine,
                                                                      registry: DaemonURL) -> None:
    defn = definition_from_dict({"docker": {"base_dockerfile": (
        f"FROM {registry.host}/base/python:cpu\nRUN echo about-to-fail && exit 7\n")}})
    error = await _assert_fails(defn, "base", "non-zero code: 7", engine=docker_engine, registry=registry,
                                key="failing-run")
    assert "about-to-fail" in error.log_tail
    from envcache.builder.keys import root_key
    from envcache.builder.stages import stage_chain

    base = await docker_engine.inspect(f"{registry.host}/base/python:cpu")
    assert base is not None
    failed_stage = stage_chain(defn, "cpu", root_key(base.id))[0]
    assert await docker_engine.inspect(f"envcache-stage:{failed_stage.key}") is None


async def test_missing_base_image_is_a_clear_error(docker_engine: Engine, registry: DaemonURL) -> None:
    defn = definition_from_dict({"docker": {"base_image": f"{registry.host}/base/nope:1"}})
    await _assert_fails(defn, "base", f"cannot pull base image {registry.host}/base/nope:1", engine=docker_engine,
                        registry=registry, key="missing-base")


async def test_bad_maven_coordinate_is_a_clear_error(docker_engine: Engine, registry: DaemonURL,
                                                     maven_repo: MavenRepo) -> None:
    defn = definition_from_dict({
        "docker": {"base_image": f"{registry.host}/base/python:cpu"},
        "spark": {"repositories": [maven_repo.url],
                  "packages": [{"group": MAVEN_GROUP, "artifact": "no-such-artifact", "version": "9.9"}]},
    })
    await _assert_fails(defn, "spark", f"{MAVEN_GROUP}:no-such-artifact:9.9 not found", engine=docker_engine,
                        registry=registry, key="bad-maven")


async def test_cancelling_a_build_stops_the_engine_build(docker_engine: Engine, registry: DaemonURL,
                                                         request: pytest.FixtureRequest) -> None:
    dockerd: Dockerd = request.getfixturevalue("dockerd")
    defn = definition_from_dict({"docker": {"base_dockerfile": (
        f"FROM {registry.host}/base/python:cpu\nRUN echo sleeping && sleep 300\n")}})
    lines: list[str] = []
    task = asyncio.create_task(build_image(BuildPlan.of(defn, "cpu", key="cancelled"), store=registry.store,
                                           engine=docker_engine, settings=build_config().build, log=lines.append))
    for _ in range(600):  # the RUN step's own output, not the "Step 2/2 : RUN …" echo
        if "sleeping" in lines:
            break
        await asyncio.sleep(0.2)
    assert "sleeping" in lines
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The build request is closed and the engine removes the RUN container it started.
    for _ in range(150):
        if not (await asyncio.to_thread(dockerd.docker, "ps", "-aq")).stdout.strip():
            break
        await asyncio.sleep(0.2)
    assert (await asyncio.to_thread(dockerd.docker, "ps", "-aq")).stdout.strip() == ""
    assert not any(tag.startswith("cancelled") for tag in await _store_tags(registry.store))


def _leftover_containers(engine: Engine, request: pytest.FixtureRequest) -> str:
    if engine.name == "docker":
        return request.getfixturevalue("dockerd").docker("ps", "-aq").stdout.strip()
    return request.getfixturevalue("buildah").buildah("containers", "-q").stdout.strip()


async def test_stage_time_limit_stops_the_stage(engine: Engine, registry: DaemonURL,
                                                request: pytest.FixtureRequest) -> None:
    defn = definition_from_dict({"docker": {"base_dockerfile": (
        f"FROM {registry.host}/base/python:cpu\nRUN echo slow-step && sleep 120\n")}})
    started = time.monotonic()
    await _assert_fails(defn, "base", "exceeded its time limit of 5s", engine=engine, registry=registry,
                        key=f"timeout-{engine.name}", config=build_config(stage_timeout=5))
    assert time.monotonic() - started < 60
    # The stopped stage leaves no container behind in the engine.
    for _ in range(50):
        if not await asyncio.to_thread(_leftover_containers, engine, request):
            break
        await asyncio.sleep(0.2)
    assert await asyncio.to_thread(_leftover_containers, engine, request) == ""
