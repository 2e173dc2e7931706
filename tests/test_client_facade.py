"""The Azure-style facade and the sync client, offline and against a real daemon + engine.

Azure's documented examples themselves run in ``test_client_facade_docs.py``; this file covers
the rest of the surface: Azure's semantics the pages do not show, the features envcache does not
provide (each must fail with a sentence naming it), and where curated environments ship.

The facade is blocking (like Azure's SDK); the daemon runs on this test's event loop, so each
facade call runs in a thread.
"""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

import envcache
from envcache import definition as spec
from envcache.client.aio import AsyncClient
from envcache.client.base import DaemonUnavailable
from envcache.client.conda_dependencies import CondaDependencies
from envcache.client.facade import Environment, EnvironmentReference
from envcache.client.sections import ContainerRegistry, SparkPackage
from envcache.client.sync import Client
from envcache.client.workspace import Workspace
from envcache.errors import InvalidInput, NotFound, UnsupportedFeature
from envcache.service.config import Config

ROOT = Path(__file__).resolve().parents[1]


def test_conda_dependencies_behave_like_azures(tmp_path: Path) -> None:
    deps = CondaDependencies.create(pip_packages=["requests==2.31"], conda_packages=["numpy"], python_version="3.11")
    deps.add_conda_package("numpy=1.26")          # same name: replaced, not duplicated
    deps.add_pip_package("Requests>=2.32")        # names compare as pip does
    deps.add_channel("conda-forge")
    deps.add_channel("conda-forge")
    deps.set_pip_index_url("https://example.invalid/simple")
    deps.set_pip_option("--index-url https://mirror.invalid/simple")   # same flag: replaces
    assert deps.conda_packages == ["python=3.11", "numpy=1.26"] and deps.get_python_version() == "3.11"
    assert deps.pip_packages == ["Requests>=2.32"] and deps.conda_channels == ["conda-forge"]
    assert deps.pip_options == ["--index-url https://mirror.invalid/simple"]
    deps.remove_pip_package("requests")
    deps.remove_pip_option("--index-url")
    assert deps.pip_packages == [] and deps.pip_options == []
    with pytest.raises(InvalidInput, match="is an option"):
        deps.add_pip_package("--pre")
    with pytest.raises(InvalidInput, match="must start with '-'"):
        deps.set_pip_option("six")
    deps.set_pip_requirements(["--extra-index-url https://x.invalid/simple", "six==1.16.0"])
    assert deps.pip_options == ["--extra-index-url https://x.invalid/simple"] and deps.pip_packages == ["six==1.16.0"]

    # The conda file it writes is one envcache reads back (and hashes) the same way.
    saved = Path(deps.save(tmp_path / "environment.yml"))
    again = CondaDependencies(saved)
    assert again.to_dict() == deps.to_dict() and again.serialize_to_string() == deps.serialize_to_string()
    assert spec.load_definition(saved).python.conda_dependencies.pip_packages == ["six==1.16.0"]
    assert Path(deps.save_to_file(tmp_path)).name == "conda_dependencies.yml"
    with_variables = tmp_path / "vars.yml"
    with_variables.write_text("dependencies: [python=3.11]\nvariables: {A: '1'}\n")
    with pytest.raises(InvalidInput, match="from_conda_specification"):
        CondaDependencies(with_variables)
    # Credentials inside index URLs never show in a repr.
    deps.set_pip_option("--extra-index-url https://user:secret@x.invalid/simple")
    assert "secret" not in repr(deps)


def test_environments_from_files_hash_like_the_files(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy>=1.26\nrequests==2.32.3\n")
    env = Environment.from_pip_requirements("reqs", requirements)
    assert sorted(env.python.conda_dependencies.pip_packages) == ["numpy>=1.26", "requests==2.32.3"]
    as_loaded = spec.spec_hash(spec.load_definition(requirements))
    assert spec.spec_hash(spec.definition_from_dict(env.to_definition_dict())) == as_loaded
    conda = tmp_path / "environment.yml"
    conda.write_text("channels: [conda-forge]\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n    - six==1.16.0\n")
    env = Environment.from_conda_specification("conda", conda)
    assert env.python.conda_dependencies.conda_channels == ["conda-forge"]
    assert env.python.conda_dependencies.pip_packages == ["six==1.16.0"]
    # An installed conda environment: conda-meta records plus pip-installed distributions.
    prefix = tmp_path / "prefix"
    (prefix / "conda-meta").mkdir(parents=True)
    (prefix / "conda-meta" / "python-3.11.9-h1.json").write_text(json.dumps(
        {"name": "python", "version": "3.11.9", "build": "h1_0", "channel": "https://conda.anaconda.org/conda-forge"}))
    dist = prefix / "lib" / "python3.11" / "site-packages" / "six-1.16.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "INSTALLER").write_text("pip\n")
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\n")
    env = Environment.from_existing_conda_environment("existing", str(prefix))
    assert env.python.conda_dependencies.conda_packages == ["python==3.11.9=h1_0"]
    assert env.python.conda_dependencies.conda_channels == ["conda-forge"]
    assert env.python.conda_dependencies.pip_packages == ["six==1.16.0"]
    out = tmp_path / "azure"
    env.save_to_directory(out)
    assert Environment.load_from_directory(out).python.conda_dependencies.pip_packages == ["six==1.16.0"]


def test_docker_section_follows_azures_setters(tmp_path: Path) -> None:
    env = Environment("docker")
    env.docker.base_image = "ubuntu:22.04"
    env.docker.base_dockerfile = "FROM busybox\nRUN true\n"      # exclusive: the image is dropped
    assert env.docker.base_image is None
    env.docker.base_image = "ubuntu:22.04"                         # and the other way round
    assert env.docker.base_dockerfile is None
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM busybox\nRUN echo from-file\n")
    env.docker.base_dockerfile = str(dockerfile)                   # a path is read
    assert "from-file" in env.docker.base_dockerfile
    env.docker.base_dockerfile = io.StringIO("FROM busybox\n")    # so is a file object
    assert env.docker.base_dockerfile == "FROM busybox\n"
    with pytest.raises(InvalidInput, match="neither an existing file nor Dockerfile text"):
        env.docker.base_dockerfile = str(tmp_path / "missing" / "Dockerfile")
    env.docker.base_image_registry = "registry.invalid"            # Azure's how-to assigns a string
    assert isinstance(env.docker.base_image_registry, ContainerRegistry)
    env.docker.base_image_registry.password = "hunter2"
    registry = env.docker.base_image_registry
    assert registry.address == "registry.invalid" and "hunter2" not in repr(registry)
    env.docker.gpu_support = False                                 # deprecated in Azure: always True
    assert env.docker.gpu_support is True
    env.spark.packages = [SparkPackage("com.example", "lib", "1.0"), "com.example:other:2.0"]
    packages = env.to_definition_dict()["spark"]["packages"]
    assert packages == [{"group": "com.example", "artifact": "lib", "version": "1.0"}, "com.example:other:2.0"]
    clone = env.clone("copy")
    clone.docker.base_image_registry.address = "elsewhere.invalid"
    assert (clone.name, clone.version) == ("copy", None) and registry.address == "registry.invalid"

    user_managed = Environment.from_dockerfile("df", dockerfile)
    assert user_managed.python.user_managed_dependencies and "from-file" in user_managed.docker.base_dockerfile
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    with_pip = Environment.from_docker_image("img", "ubuntu:22.04", ContainerRegistry(address="registry.invalid"),
                                             pip_requirements=str(requirements))
    assert with_pip.python.conda_dependencies.pip_packages == ["six==1.16.0"]
    assert not with_pip.python.user_managed_dependencies
    assert with_pip.docker.base_image_registry.address == "registry.invalid"
    with pytest.raises(InvalidInput, match="only one of"):
        Environment.from_dockerfile("both", dockerfile, conda_specification="a.yml", pip_requirements="b.txt")


def test_what_envcache_does_not_provide_is_named() -> None:
    env = Environment("azure-only")
    for attribute, value, feature in (("r", object(), "R section"), ("databricks", object(), "Databricks"),
                                      ("inferencing_stack_version", "latest", "inferencing stack")):
        setattr(env, attribute, value)
        with pytest.raises(UnsupportedFeature, match=feature):
            env.to_definition_dict()
        setattr(env, attribute, None)
    calls = {
        "build_context": lambda: setattr(env.docker, "build_context", object()),
        "from_docker_build_context": lambda: Environment.from_docker_build_context("x", object()),
        "label": lambda: Environment.label(None, "x", "1", ["prod"]),
        r"get\(label": lambda: Environment.get(None, "x", label="prod"),
        "image_build_compute": lambda: env.build(None, image_build_compute="gpu-cluster"),
        "platform='Windows'": lambda: env.build_local(None, platform="Windows"),
        r"useDocker=False": lambda: env.build_local(None, useDocker=False),
        "someOption": lambda: env.build_local(None, someOption=True),
        "auth=": lambda: Workspace.from_config(auth=object()),
    }
    for feature, call in calls.items():
        with pytest.raises(UnsupportedFeature, match=feature):
            call()
    with pytest.raises(InvalidInput, match="Environment name"):
        Environment(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="workspace: expected"):
        Environment.list(workspace=object())


def test_workspace_from_config_finds_the_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENVCACHE_URL", raising=False)
    project = tmp_path / "project" / "notebooks"
    project.mkdir(parents=True)
    monkeypatch.chdir(project)
    assert Workspace.from_config().url == "http://127.0.0.1:5050"           # no file: the default
    (tmp_path / "project" / ".azureml").mkdir()
    (tmp_path / "project" / ".azureml" / "config.json").write_text(json.dumps(
        {"subscription_id": "s", "resource_group": "g", "workspace_name": "w", "envcache_url": "http://10.0.0.7:5050/"}))
    assert Workspace.from_config().url == "http://10.0.0.7:5050"            # found in a parent, Azure's keys ignored
    own = tmp_path / "own.json"
    own.write_text("{not json")
    with pytest.raises(InvalidInput, match="not a readable JSON config"):
        Workspace.from_config(own)
    with pytest.raises(InvalidInput, match="neither a config file nor a directory"):
        Workspace.from_config(tmp_path / "absent.json")


def test_a_missing_daemon_is_a_clear_error() -> None:
    with pytest.raises(DaemonUnavailable, match="envcache serve"):
        Client("http://127.0.0.1:9").health()
    with pytest.raises(DaemonUnavailable):
        Environment.list(workspace="http://127.0.0.1:9")


async def test_environment_arguments_take_what_azure_takes(make_daemon) -> None:
    config = Config()
    config.build.engine = "none"    # ensure answers with its build (which then fails): no image is wanted
    url = await make_daemon(config)
    definition = {"docker": {"base_dockerfile": "FROM scratch\n"}}   # resolves offline
    async with AsyncClient(url) as client:
        await client.register_environment("referenced", definition)
        for reference in ("referenced", ("referenced", "1"), {"name": "referenced", "version": 1},
                          EnvironmentReference("referenced", "1"), EnvironmentReference("referenced")):
            answer = await client.ensure(environment=reference, variant="cpu")
            assert answer["build"]["environment"] == {"name": "referenced", "version": 1}, reference
        with pytest.raises(NotFound):
            await client.ensure(environment=EnvironmentReference("unknown"), variant="cpu")
        # A dict that is not a reference (a definition in the wrong argument) is a sentence, not a ValueError.
        with pytest.raises(InvalidInput, match=r"environment: expected .*got a dict with keys \['docker'\]"):
            await client.resolve(environment=definition, variant="cpu")
        with pytest.raises(InvalidInput, match="environment: expected"):
            await client.resolve(environment=42, variant="cpu")  # type: ignore[arg-type]

    def through_the_facade() -> tuple[dict, Environment]:
        # An Environment goes by its content, as Azure submits one; a reference fetches the stored one.
        env = Environment("adhoc")
        env.docker.base_dockerfile = "FROM scratch\nENV ADHOC=1\n"
        stored = EnvironmentReference("referenced").get_environment(url)
        return Client(url).ensure(environment=env, variant="cpu"), stored

    adhoc, stored = await asyncio.to_thread(through_the_facade)
    assert adhoc["build"]["environment"] is None
    assert stored.version == "1" and stored.docker.base_dockerfile == "FROM scratch\n"


@pytest.mark.engine
async def test_facade_register_get_build_and_image_details(make_daemon, dockerd, busybox_image, capsys) -> None:
    config = Config()
    config.build.engine, config.build.docker_host, config.build.compression = "docker", dockerd.host, "gzip"
    url = await make_daemon(config)
    marker = secrets.token_hex(4)

    def scenario() -> tuple:
        env = Environment("facade-demo")
        env.docker.base_dockerfile = f"FROM {busybox_image}\nRUN echo {marker} > /marker\n"
        env.environment_variables = {"MARKER": marker}
        # Every form of `workspace`: a URL, a Client, an object with the daemon's address, a Workspace.
        assert env.get_image_details(url, variant="cpu")["imageExistsInRegistry"] is False
        v1 = env.register(workspace=Client(url))
        env.environment_variables["EXTRA"] = "1"
        v2 = env.register(SimpleNamespace(url=url))
        assert (v1.version, v2.version) == ("1", "2") and env.register(Workspace(url)).version == "2"
        assert env.version is None                      # as in Azure: register returns the registered copy
        old = Environment.get(workspace=url, name="facade-demo", version="1")
        latest = Environment.get(url, "facade-demo")
        build = old.build(workspace=url, variant="cpu")
        assert build.wait_for_completion(show_output=True) is build
        details = old.get_image_details(workspace=url, variant="cpu")
        again = old.build(url, variant="cpu")           # a hit: Succeeded at once, nothing to log
        return build, build.get_log(), again, again.get_log(), details, old, latest

    build, log, again, again_log, details, old, latest = await asyncio.to_thread(scenario)
    assert build.status == "Succeeded" and build.error is None and marker in log
    assert again.status == "Succeeded" and again.build_id is None and again_log == ""
    assert old.environment_variables == {"MARKER": marker} and latest.environment_variables["EXTRA"] == "1"
    assert details.image_exist and details["digest"] == build.image_details["digest"]
    assert details.registry == url.removeprefix("http://") and details.image == details["image"]
    assert details.interpreter_path == "python"
    printed = capsys.readouterr().out
    assert marker in printed and "Image Build Status: Succeeded" in printed
    listed = await asyncio.to_thread(Environment.list, url)
    assert listed["facade-demo"].version == "2" and "envcache-minimal" in listed
    with pytest.raises(NotFound):
        await asyncio.to_thread(Environment.get, url, "facade-demo", 7)

    def failing() -> object:
        broken = Environment("broken")
        broken.docker.base_dockerfile = f"FROM {busybox_image}\nRUN exit 3\n"
        failure = broken.build(url, variant="cpu").wait_for_completion(show_output=False)
        assert failure.status == "Failed"
        return failure

    failed = await asyncio.to_thread(failing)      # Azure returns the build whatever happened: check status
    assert failed.error and failed.image_details is None

    def no_upstream() -> None:
        Environment("pushless").build_local(url, useDocker=True, pushImageToWorkspaceAcr=True)

    with pytest.raises(InvalidInput, match=r"no upstream registry to push to.*\[\[upstreams\]\]"):
        await asyncio.to_thread(no_upstream)


def test_curated_environments_ship_in_the_wheel(tmp_path: Path) -> None:
    # Built from a copy, so setuptools' build/ and egg-info never land in the checkout under test.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "envcache", source / "envcache", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(source)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("envcache-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (Path(envcache.__file__).parent / "curated").glob("*.yml")}
    assert shipped >= {"envcache-minimal.yml", "envcache-datascience.yml"}
    assert {f"envcache/curated/{name}" for name in shipped} <= names
