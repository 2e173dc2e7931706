"""Build pieces that need no engine: variant detection, Maven fetching, the ingest of an OCI
layout into a real store, the generated Dockerfiles and the lock's unpinned list.

WHY: these are the parts whose mistakes would be silent in an end-to-end build (a GPU host
detected as CPU, an unverified jar, a layer whose blob does not match its diff_id).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
from pathlib import Path

import pytest
import zstandard
from aiohttp import web

from envcache.builder import BuildahEngine, BuildFailed, DockerEngine, EngineUnavailable, build_image, detect_engine
from envcache.definition.variants import resolve_variant
from envcache.builder.settings import BuildSettings
from envcache.service.config import Config
from envcache.builder.ingest import ingest_layers as _ingest_layers
from envcache.builder.engines.base import ExportedImage, ImageInfo, context_tar
from envcache.builder.ingest import open_export, read_lock_files
from envcache.oci import LAYER_MEDIA
from envcache.builder.maven import fetch_jars
from envcache.builder.keys import RECIPE_VERSION
from envcache.builder.plan import BuildPlan
from envcache.builder.lock import Lock, changes, pip_entries, pip_requirements, unpinned
from envcache.builder.stages import CREATED, RecipeContext
from envcache.builder.stages.conda import CondaStage
from envcache.builder.stages.config import ConfigStage
from envcache.builder.stages.pip import PipStage
from envcache.builder.stages.spark import SparkStage
from envcache.builder.helper import HelperServer
from envcache.errors import InvalidInput
from envcache.definition import definition_from_dict
from envcache.definition.model import SparkPackage
from envcache.store import open_store
from envcache.store.sqlite.schema import LAYER_BLOBS
from tests.fixtures.oci_images import make_tar, write_oci_layout
from tests.fixtures.testdata import MAVEN_GROUP, CondaPackage, MavenRepo, make_conda_channel, make_maven_repo

# --- variants -------------------------------------------------------------------------------


def fake_host(tmp_path: Path, *, driver: bool = False, devices: tuple[str, ...] = ()) -> tuple[Path, Path]:
    proc_root, dev_root = tmp_path / "root", tmp_path / "dev"
    (proc_root / "proc" / "driver").mkdir(parents=True)
    dev_root.mkdir()
    (dev_root / "null").write_text("")
    if driver:
        (proc_root / "proc" / "driver" / "nvidia").mkdir()
        (proc_root / "proc" / "driver" / "nvidia" / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module 535.104.05\n")
    for name in devices:
        (dev_root / name).write_text("")
    return proc_root, dev_root


def test_auto_is_cpu_without_a_gpu(tmp_path: Path) -> None:
    proc_root, dev_root = fake_host(tmp_path)
    assert resolve_variant("auto", proc_root=proc_root, dev_root=dev_root) == "cpu"


def test_auto_is_gpu_with_the_nvidia_driver(tmp_path: Path) -> None:
    proc_root, dev_root = fake_host(tmp_path, driver=True)
    assert resolve_variant("auto", proc_root=proc_root, dev_root=dev_root) == "gpu"


def test_auto_is_gpu_with_an_nvidia_device_node(tmp_path: Path) -> None:
    proc_root, dev_root = fake_host(tmp_path, devices=("nvidia0", "nvidiactl"))
    assert resolve_variant("AUTO", proc_root=proc_root, dev_root=dev_root) == "gpu"


def test_explicit_variants_ignore_the_host(tmp_path: Path) -> None:
    proc_root, dev_root = fake_host(tmp_path, driver=True)
    assert resolve_variant("cpu", proc_root=proc_root, dev_root=dev_root) == "cpu"
    assert resolve_variant("gpu") == "gpu"


def test_unknown_variant_names_the_choices() -> None:
    with pytest.raises(InvalidInput, match="'tpu' is not one of cpu, gpu, auto"):
        resolve_variant("tpu")


# --- engine choice ------------------------------------------------------------------------------


def engine_config(**build: object) -> BuildSettings:
    config = Config()
    for key, value in build.items():
        setattr(config.build, key, value)
    return config.build


def test_detect_engine_follows_the_config(tmp_path: Path) -> None:
    assert detect_engine(engine_config(engine="none")) is None
    docker = detect_engine(engine_config(engine="docker", docker_host=f"unix://{tmp_path}/docker.sock"))
    assert isinstance(docker, DockerEngine) and docker.docker_host == f"unix://{tmp_path}/docker.sock"
    buildah = detect_engine(engine_config(engine="buildah"))
    assert isinstance(buildah, BuildahEngine) and buildah.storage_driver == "vfs"


def test_auto_falls_back_to_buildah_without_a_docker_socket(tmp_path: Path) -> None:
    engine = detect_engine(engine_config(engine="auto", docker_host=f"unix://{tmp_path}/missing.sock"))
    assert isinstance(engine, BuildahEngine)


async def test_an_unreachable_docker_daemon_is_a_clear_error(tmp_path: Path) -> None:
    engine = DockerEngine(f"unix://{tmp_path}/missing.sock")
    try:
        for probe in (engine.version(), engine.inspect("busybox")):
            with pytest.raises(EngineUnavailable) as info:
                await probe
            # Not aiodocker's "DockerError: [900] Cannot connect…": what is wrong and what to do.
            assert str(info.value) == (f"Docker Engine at unix://{tmp_path}/missing.sock does not answer (no such "
                                       "socket): start dockerd, or point [build] docker_host (or DOCKER_HOST) at its socket")
    finally:
        await engine.close()


async def test_building_without_an_engine_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(BuildFailed, match="install Docker"):
        await build_image(BuildPlan.of(definition_from_dict({}), "cpu", key="k"), store=None, engine=None,
                          settings=None, log=lambda line: None)


# --- Maven ------------------------------------------------------------------------------------


def core(version: str = "1.0.0") -> SparkPackage:
    return SparkPackage(MAVEN_GROUP, "envcache-core", version)


async def test_fetches_verified_jars_from_a_file_repository(maven_repo: MavenRepo, tmp_path: Path) -> None:
    jars = await fetch_jars([core(), core("0.9.0")], ["file:///nonexistent/repo", maven_repo.url], tmp_path)
    expected = maven_repo.file(maven_repo.artifact(f"{MAVEN_GROUP}:envcache-core:1.0.0"), "jar").read_bytes()
    assert [jar.coordinate for jar in jars] == [f"{MAVEN_GROUP}:envcache-core:1.0.0", f"{MAVEN_GROUP}:envcache-core:0.9.0"]
    assert (tmp_path / jars[0].file_name).read_bytes() == expected
    assert jars[0].sha256 == hashlib.sha256(expected).hexdigest()
    assert jars[0].repository == maven_repo.url


async def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    repo = make_maven_repo(tmp_path / "repo")
    jar = repo.file(repo.artifact(f"{MAVEN_GROUP}:envcache-core:1.0.0"), "jar")
    jar.write_bytes(jar.read_bytes() + b"tampered")
    with pytest.raises(BuildFailed, match="checksum mismatch for com.example.envcache:envcache-core:1.0.0"):
        await fetch_jars([core()], [repo.url], tmp_path / "out")


async def test_a_jar_without_checksum_files_is_refused(tmp_path: Path) -> None:
    repo = make_maven_repo(tmp_path / "repo")
    jar = repo.file(repo.artifact(f"{MAVEN_GROUP}:envcache-core:1.0.0"), "jar")
    for suffix in ("sha1", "sha256", "md5"):
        Path(f"{jar}.{suffix}").unlink()
    with pytest.raises(BuildFailed, match="publishes no checksum"):
        await fetch_jars([core()], [repo.url], tmp_path / "out")


async def test_fetches_over_http_with_credentials_never_shown(maven_repo: MavenRepo, tmp_path: Path) -> None:
    seen: list[str | None] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization"))
        path = maven_repo.path / request.match_info["path"]
        return web.FileResponse(path) if path.is_file() else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/maven/{path:.+}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        jars = await fetch_jars([core()], [f"http://ci:s3cret@127.0.0.1:{port}/maven"], tmp_path)
        assert jars[0].repository == f"http://127.0.0.1:{port}/maven"
        assert all(header and header.startswith("Basic ") for header in seen)
        with pytest.raises(BuildFailed) as info:
            await fetch_jars([SparkPackage(MAVEN_GROUP, "missing", "1")], [f"http://ci:s3cret@127.0.0.1:{port}/maven"],
                             tmp_path)
        assert "s3cret" not in str(info.value) and "not found in any repository" in str(info.value)
    finally:
        await runner.cleanup()


# --- ingest -----------------------------------------------------------------------------------


def small_image(tmp_path: Path, compress: str | None) -> ExportedImage:
    layers = [
        make_tar({"etc/hello.txt": "hello\n", "bin/tool": "#!/bin/sh\necho tool\n"}),
        make_tar({"opt/envcache/lock/pip-freeze.txt": "six==1.16.0\n"}),
    ]
    write_oci_layout(tmp_path / "layout", layers, tag="latest", compress=compress)
    return ExportedImage("oci", tmp_path / "layout")


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
async def test_ingest_verifies_diff_ids_and_reuses_known_layers(tmp_path: Path, compression: str) -> None:
    store = await open_store(tmp_path / "data")
    try:
        exported = small_image(tmp_path, compress="gzip")
        with contextlib.ExitStack() as stack:
            source = open_export(exported, stack)
            first = await _ingest_layers(store, source, compression, tmp_path / "tmp", lambda line: None)
            again = await _ingest_layers(store, source, compression, tmp_path / "tmp", lambda line: None)
            locks = read_lock_files(source, {"pip-freeze.txt"})
        assert [layer.diff_id for layer in first] == source.diff_ids
        assert not any(layer.reused for layer in first) and all(layer.reused for layer in again)
        assert {layer.media_type for layer in first} == {LAYER_MEDIA[compression]}
        for layer in first:
            data = store.files.path(layer.digest).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest
            raw = gzip.decompress(data) if compression == "gzip" else zstandard.ZstdDecompressor().stream_reader(data).read()
            assert "sha256:" + hashlib.sha256(raw).hexdigest() == layer.diff_id
        rows = list(store.metadata.db[LAYER_BLOBS].rows_where("compression = ?", [compression]))
        assert {row["diff_id"] for row in rows} == set(source.diff_ids)
        assert locks == {"pip-freeze.txt": b"six==1.16.0\n"}
    finally:
        await store.close()


async def test_ingest_refuses_a_layer_that_does_not_match_its_diff_id(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "data")
    try:
        exported = small_image(tmp_path, compress=None)
        index = json.loads((exported.path / "index.json").read_text())
        manifest_path = exported.path / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]
        manifest = json.loads(manifest_path.read_text())
        victim = exported.path / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
        victim.write_bytes(make_tar({"etc/evil.txt": "not what the config says\n"}))
        with contextlib.ExitStack() as stack, pytest.raises(BuildFailed, match="the engine's config says"):
            source = open_export(exported, stack)
            await _ingest_layers(store, source, "zstd", tmp_path / "tmp", lambda line: None)
        assert list(store.metadata.db[LAYER_BLOBS].rows) == []
    finally:
        await store.close()


# --- generated Dockerfiles and locks ------------------------------------------------------------


def test_config_stage_writes_the_image_config_itself() -> None:
    defn = definition_from_dict({"environment_variables": {"B": "2", "A": "x y $HOME"}})
    # A base without history (valid OCI; engines refuse to add to it): one entry per layer is added.
    parent = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": ["a", "b"]},
                         "config": {"Env": ["PATH=/usr/bin:/bin", "A=old"], "Labels": {"base": "yes"}}}).encode()
    doc = json.loads(ConfigStage(defn).image_config(parent, has_conda=True, interpreter="python3"))
    assert doc["config"]["Env"] == ["PATH=/opt/envcache/env/bin:/usr/bin:/bin", "A=x y $HOME",
                                    "CONDA_PREFIX=/opt/envcache/env", "B=2"]
    assert doc["config"]["Labels"] == {"base": "yes", "envcache.interpreter_path": "python3",
                                       "envcache.recipe_version": str(RECIPE_VERSION)}
    assert doc["created"] == CREATED == "1980-01-01T00:00:00Z"
    assert [entry.get("empty_layer", False) for entry in doc["history"]] == [False, False, True]
    with pytest.raises(InvalidInput, match="not a valid variable name"):
        ConfigStage(definition_from_dict({"environment_variables": {"1BAD": "x"}})).image_config(
            parent, has_conda=False, interpreter="python")


async def test_pip_credentials_and_ca_stay_out_of_the_dockerfile(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nsecret-ish\n-----END CERTIFICATE-----\n")
    defn = definition_from_dict({"python": {"conda_dependencies": {
        "pip_packages": ["six>=1.15"], "pip_options": ["--extra-index-url https://u:tok@pypi.example/simple"]}}})
    helper = HelperServer()
    await helper.start()
    part = [{"name": "six", "version": "1.16.0", "url": "https://pypi.example/six-1.16.0-py2.py3-none-any.whl",
             "filename": "six-1.16.0-py2.py3-none-any.whl", "sha256": "ab" * 32, "requested": True}]
    try:
        recipe = await PipStage(defn).recipe(RecipeContext("envcache-stage:parent", None, tmp_path, "cpu",
                                                           helper=helper, ca_bundle=ca, part=part))
        assert "tok" not in recipe.dockerfile and "BEGIN CERTIFICATE" not in recipe.dockerfile
        # The stage installs exactly the lock: pinned by version and artifact hash, no resolution.
        assert helper.files["requirements.txt"].decode().splitlines() == [
            "--extra-index-url https://u:tok@pypi.example/simple", f"six==1.16.0 --hash=sha256:{'ab' * 32}"]
        assert helper.files["ca.pem"] == ca.read_bytes()
        assert helper.files["pip_step.py"].startswith(b'"""envcache\'s pip step')
        assert recipe.network and helper.url in recipe.dockerfile and " install " in recipe.dockerfile
        with pytest.raises(BuildFailed, match="without reporting"):
            recipe.after()                      # the step never reported what it installed
        helper.received["report"] = json.dumps({"interpreter": "python3", "install": []}).encode()
        with pytest.raises(BuildFailed, match="something other than the lock"):
            recipe.after()
    finally:
        await helper.stop()


def test_the_lock_lists_every_unpinned_package_transitive_ones_included() -> None:
    defn = definition_from_dict({"python": {"conda_dependencies": {
        "channels": ["conda-forge"],
        "conda_packages": ["numpy", "scipy==1.11.0", "pandas=2.0.3=py311_0", "zlib>=1.2"],
        "pip_packages": ["six==1.16.0", "requests>=2", "Rich", "attrs==23.*"],
    }}})
    report = {"install": [
        {"download_info": {"url": f"https://files.example/{name}-{version}-py3-none-any.whl",
                           "archive_info": {"hash": f"sha256={name[0] * 64}"}},
         "requested": name != "urllib3", "metadata": {"name": name, "version": version}}
        for name, version in [("six", "1.16.0"), ("requests", "2.32.3"), ("urllib3", "2.2.2"), ("rich", "13.7.1")]]}
    pip = pip_entries(report)
    assert [(e["name"], e["version"], e["sha256"][:2], e["filename"]) for e in pip][:2] == [
        ("requests", "2.32.3", "rr", "requests-2.32.3-py3-none-any.whl"), ("rich", "13.7.1", "rr",
                                                                            "rich-13.7.1-py3-none-any.whl")]
    conda = [{"name": n, "version": "1", "build": "0"} for n in ("numpy", "pandas", "scipy", "libzlib")]
    assert unpinned(pip, conda, defn) == ["pip:requests", "pip:rich", "pip:urllib3", "conda:numpy", "conda:libzlib"]
    assert pip_requirements(pip)[0] == f"requests==2.32.3 --hash=sha256:{'r' * 64}"
    newer = [dict(e, version="2.2.3") if e["name"] == "urllib3" else e for e in pip if e["name"] != "rich"]
    assert changes(Lock(pip=tuple(pip)), Lock(pip=tuple(newer))) == ["- rich 13.7.1", "urllib3 2.2.2 → 2.2.3"]


def test_context_tar_normalises_owner_and_time(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    (tmp_path / "root" / "opt").mkdir(parents=True)
    (tmp_path / "root" / "opt" / "f").write_text("data")
    first = context_tar(tmp_path)
    (tmp_path / "root" / "opt" / "f").touch()
    assert context_tar(tmp_path) == first


async def test_spark_without_precache_records_the_packages_but_fetches_nothing(tmp_path: Path) -> None:
    defn = definition_from_dict({"spark": {"repositories": ["file:///nonexistent"], "precache_packages": False,
                                           "packages": [{"group": MAVEN_GROUP, "artifact": "envcache-core",
                                                         "version": "1.0.0"}]}})
    stage, ctx = SparkStage(defn), RecipeContext("envcache-stage:parent", None, tmp_path, "cpu")
    ctx.part = await stage.resolve(ctx)
    recipe = await stage.recipe(ctx)
    assert recipe.dockerfile == "FROM envcache-stage:parent\nCOPY root/ /\n"
    assert not (tmp_path / "root" / "opt" / "spark").exists()
    lock = json.loads((tmp_path / "root" / "opt" / "envcache" / "lock" / "spark.json").read_text())
    assert lock == [{"coordinate": f"{MAVEN_GROUP}:envcache-core:1.0.0", "precached": False}]


async def test_spark_jars_go_to_spark_home_when_the_base_sets_it(maven_repo: MavenRepo, tmp_path: Path) -> None:
    defn = definition_from_dict({"spark": {"repositories": [maven_repo.url], "packages": [
        {"group": MAVEN_GROUP, "artifact": "envcache-core", "version": "1.0.0"}]}})
    parent = ImageInfo("sha256:" + "0" * 64, {"Env": ["SPARK_HOME=/usr/lib/spark/"]})
    ctx = RecipeContext("envcache-stage:parent", parent, tmp_path, "cpu")
    ctx.part = await SparkStage(defn).resolve(ctx)
    # A later build with this lock fetches again and checks the bytes against it.
    await SparkStage(defn).recipe(ctx)
    assert (tmp_path / "root" / "usr" / "lib" / "spark" / "jars" / f"{MAVEN_GROUP}_envcache-core-1.0.0.jar").is_file()
    ctx.part = [dict(ctx.part[0], sha256="0" * 64)]
    with pytest.raises(BuildFailed, match="different bytes for the locked jars"):
        await SparkStage(defn).recipe(ctx)


async def test_gpu_conda_packages_solve_on_a_host_without_a_gpu(tmp_path: Path) -> None:
    channel = make_conda_channel(tmp_path / "channel", [CondaPackage(
        "envcache-cuda-kernels", "1.0.0", "noarch", ".conda", depends=("__cuda >=11.0",),
        files={"share/envcache-cuda-kernels/ok.txt": ("ok\n", False)})])
    defn = definition_from_dict({"python": {"conda_dependencies": {
        "channels": [channel.url], "conda_packages": ["envcache-cuda-kernels"]}}})
    gpu_base = ImageInfo("sha256:" + "1" * 64, {"Env": ["CUDA_VERSION=11.3.1"]})
    ctx = RecipeContext("envcache-stage:parent", gpu_base, tmp_path / "gpu", "gpu")
    ctx.part = await CondaStage(defn).resolve(ctx)
    assert [(e["name"], e["version"]) for e in ctx.part] == [("envcache-cuda-kernels", "1.0.0")] and ctx.part[0]["sha256"]
    recipe = await CondaStage(defn).recipe(ctx)          # from the lock: explicit specs, checked by sha256
    assert recipe.dockerfile == "FROM envcache-stage:parent\nCOPY root/ /\n"
    installed = tmp_path / "gpu" / "root" / "opt" / "envcache" / "env" / "share" / "envcache-cuda-kernels" / "ok.txt"
    assert installed.read_text() == "ok\n"
    # The CPU image never offers CUDA, whatever the build host has.
    with pytest.raises(BuildFailed, match="build failed in step conda: cannot solve envcache-cuda-kernels"):
        await CondaStage(defn).resolve(RecipeContext("envcache-stage:parent", gpu_base, tmp_path / "cpu", "cpu"))
