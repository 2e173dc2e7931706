"""Azure's own examples, with only their imports changed, against a real daemon (and engine).

The snippets below are quoted from Azure ML's documentation of the v1 SDK (``azureml-core``):

- HOWTO: "Create & use software environments in Azure Machine Learning"
  (learn.microsoft.com/azure/machine-learning/how-to-use-environments; MicrosoftDocs/azure-docs,
  ``articles/machine-learning/how-to-use-environments.md``, the 2022 revision, plus the snippets
  only the 2020 revision has);
- NOTEBOOK: Azure/MachineLearningNotebooks, ``how-to-use-azureml/training/using-environments/
  using-environments.ipynb``;
- CUSTOM_IMAGE: "Train a model by using a custom Docker image" (``how-to-train-with-custom-image.md``);
- REFERENCE: the azureml-core API reference (``Environment.build_local``, ``DockerSection``).

Each page's snippets run in page order in one namespace, as a reader runs them in a notebook.
The one edit is :func:`port`: ``from azureml.core… import X`` becomes ``from envcache import X``
(``Image``, which the build snippet imports and never uses, is dropped from its import). What a
page assumes exists is set up around the snippets, never in them: a ``config.json`` naming the
daemon, the files the page names (a file literally called ``path-to-conda-specification-file``),
Azure's curated environments (registered under Azure's names), a local conda environment, and
the base images the pages' Dockerfiles start ``FROM`` (the test busybox, under Azure's names:
nothing can be pulled here, see shared/ENGINES.md).

Left out, because they are not about environments and envcache has no counterpart: runs and
experiments (``ScriptRunConfig``, ``Experiment.submit``, ``Run.get_environment``), model
deployment (``InferenceConfig``, ``Model.deploy``). ``add_private_pip_wheel``'s snippet runs in
tests/test_wheels_service.py, with a wheel file name for the page's ``my-custom.whl`` (pip installs
no other).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from envcache import Workspace
from envcache.errors import InvalidInput
from envcache.client.aio import AsyncClient
from envcache.service.config import Config
from envcache.upstream.config import parse_upstream
from envcache.upstream.source import ENV_REPO

HOWTO = "how-to-use-environments.md"
NOTEBOOK = "using-environments.ipynb"
CUSTOM_IMAGE = "how-to-train-with-custom-image.md"
REFERENCE = "azureml-core API reference"

# The bases the pages build FROM: Azure's default CPU image (also envcache's default `cpu` base)
# and the one the how-to's Dockerfiles name.
AZURE_BASES = ("mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04",
               "mcr.microsoft.com/azureml/openmpi3.1.2-ubuntu18.04")

_AZURE_IMPORT = re.compile(r"^from azureml\.core(?:\.\w+)* import (?P<names>.+)$", re.MULTILINE)
_UNUSED_AZURE_NAMES = {"Image"}


def port(snippet: str) -> str:
    """The snippet with its ``azureml.core`` imports turned into ``envcache`` ones, and nothing else changed."""
    def swap(match: re.Match[str]) -> str:
        names = [n.strip() for n in match["names"].split(",") if n.strip() not in _UNUSED_AZURE_NAMES]
        return f"from envcache import {', '.join(names)}" if names else ""

    return _AZURE_IMPORT.sub(swap, textwrap.dedent(snippet))


def run(source: str, snippet: str, namespace: dict[str, Any]) -> str:
    """Run one snippet, ported, in the page's namespace; what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(port(snippet), f"<{source}>", "exec"), namespace)  # noqa: S102 - the documentation is the test
    return printed.getvalue()


def run_all(source: str, snippets: list[str], namespace: dict[str, Any]) -> list[str]:
    return [run(source, snippet, namespace) for snippet in snippets]


@pytest.fixture
def page_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory as the pages assume one: their snippets open relative paths."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENVCACHE_URL", raising=False)
    return tmp_path


def point_config_at(directory: Path, url: str) -> None:
    """``Workspace.from_config()`` reads ``config.json``; envcache's key beside Azure's."""
    (directory / "config.json").write_text(json.dumps(
        {"subscription_id": "00000000", "resource_group": "rg", "workspace_name": "ws", "envcache_url": url}))


async def register_curated_stand_ins(url: str) -> None:
    """Azure's curated environments the pages name, registered under their names."""
    async with AsyncClient(url) as client:
        await client.register_environment("AzureML-sklearn-0.24-ubuntu18.04-py37-cpu", {"python": {
            "conda_dependencies": {"conda_packages": ["python=3.7", "scikit-learn=0.24"]}}})
        await client.register_environment("AzureML-Minimal", {"python": {
            "conda_dependencies": {"conda_packages": ["python=3.7"], "pip_packages": ["azureml-defaults"]}}})


@pytest.fixture
def azure_bases(dockerd, busybox_image: str) -> None:
    for name in AZURE_BASES:
        dockerd.docker("tag", busybox_image, name)


# ---- HOWTO, in page order -----------------------------------------------------------------

HOWTO_CREATE = [
    # Instantiate an environment object
    '''
    from azureml.core.environment import Environment
    Environment(name="myenv")
    ''',
    # Use a curated environment
    '''
    from azureml.core import Workspace, Environment

    ws = Workspace.from_config()
    env = Environment.get(workspace=ws, name="AzureML-sklearn-0.24-ubuntu18.04-py37-cpu")
    ''',
    '''
    envs = Environment.list(workspace=ws)

    for env in envs:
        if env.startswith("AzureML"):
            print("Name",env)
            print("packages", envs[env].python.conda_dependencies.serialize_to_string())
    ''',
    '''
    env = Environment.get(workspace=ws, name="AzureML-sklearn-0.24-ubuntu18.04-py37-cpu")
    curated_clone = env.clone("customize_curated")
    ''',
    # Use Conda dependencies or pip requirements files
    '''
    # From a Conda specification file
    myenv = Environment.from_conda_specification(name = "myenv",
                                                 file_path = "path-to-conda-specification-file")

    # From a pip requirements file
    myenv = Environment.from_pip_requirements(name = "myenv",
                                              file_path = "path-to-pip-requirements-file")
    ''',
    # Use a prebuilt Docker image
    '''
    # Specify custom Docker base image and registry, if you don't want to use the defaults
    myenv.docker.base_image="your_base-image"
    myenv.docker.base_image_registry="your_registry_location"
    ''',
]

HOWTO_DOCKERFILE = '''
# Specify docker steps as a string.
dockerfile = r"""
FROM mcr.microsoft.com/azureml/openmpi3.1.2-ubuntu18.04
RUN echo "Hello from custom container!"
"""

# Set base image to None, because the image is defined by dockerfile.
myenv.docker.base_image = None
myenv.docker.base_dockerfile = dockerfile

# Alternatively, load the string from a file.
myenv.docker.base_image = None
myenv.docker.base_dockerfile = "./Dockerfile"
'''

HOWTO_INTERPRETER = '''
dockerfile = """
FROM mcr.microsoft.com/azureml/openmpi3.1.2-ubuntu18.04:20210615.v1
RUN conda install numpy
"""

myenv.docker.base_image = None
myenv.docker.base_dockerfile = dockerfile
myenv.python.user_managed_dependencies=True
myenv.python.interpreter_path = "/opt/miniconda/bin/python"
'''

HOWTO_EXISTING = [
    # Use existing environments
    '''
    myenv = Environment.from_existing_conda_environment(name="myenv",
                                                        conda_environment_name="mycondaenv")
    ''',
    '''
    # save the enviroment
    myenv.save_to_directory(path="path-to-destination-directory", overwrite=False)
    # modify the environment definition
    newenv = Environment.load_from_directory(path="path-to-source-directory")
    ''',
]

HOWTO_PACKAGES = '''
from azureml.core.environment import Environment
from azureml.core.conda_dependencies import CondaDependencies

myenv = Environment(name="myenv")
conda_dep = CondaDependencies()

# Installs numpy version 1.17.0 conda package
conda_dep.add_conda_package("numpy==1.17.0")

# Installs pillow package
conda_dep.add_pip_package("pillow")

# Adds dependencies to PythonSection of myenv
myenv.python.conda_dependencies=conda_dep
'''

HOWTO_2020_VARIABLES = '''
myenv.environment_variables = {"MESSAGE":"Hello from Azure Machine Learning"}
'''

HOWTO_REGISTER = '''
myenv.register(workspace=ws)
'''

HOWTO_GET = '''
restored_environment = Environment.get(workspace=ws,name="myenv",version="1")
'''

HOWTO_2020_DOCKER = '''
# Creates the environment inside a Docker container.
myenv.docker.enabled = True
'''

HOWTO_2020_DOCKERFILE_FROM_FILE = '''
# Specify custom Docker base image and registry, if you don't want to use the defaults
myenv.docker.base_image="your_base-image"
myenv.docker.base_image_registry="your_registry_location"
# Alternatively, you can specify the contents of dockerfile of your base image
with open("docker_file_of_your_base_image", "r") as f:
    dockerfile_contents_of_your_base_image=f.read()
myenv.docker.base_dockerfile=dockerfile_contents_of_your_base_image
'''

HOWTO_IMAGE_DETAILS = '''
details = environment.get_image_details(workspace=ws)
'''

HOWTO_BUILD = '''
from azureml.core import Image
build = env.build(workspace=ws)
build.wait_for_completion(show_output=True)
'''

HOWTO_BUILD_LOCAL = '''
build = env.build_local(workspace=ws, useDocker=True, pushImageToWorkspaceAcr=True)
'''


async def test_how_to_create_and_manage_environments(daemon, page_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    point_config_at(page_dir, daemon)
    await register_curated_stand_ins(daemon)
    (page_dir / "path-to-conda-specification-file").write_text(
        "channels: [conda-forge]\ndependencies:\n  - python=3.11\n  - pip:\n    - requests==2.32.3\n")
    (page_dir / "path-to-pip-requirements-file").write_text("numpy>=1.26\nrequests==2.32.3\n")
    (page_dir / "Dockerfile").write_text(f"FROM {AZURE_BASES[1]}\nRUN echo from-a-file\n")
    (page_dir / "docker_file_of_your_base_image").write_text("FROM ubuntu:22.04\nRUN echo from-2020\n")
    conda_root = page_dir / "conda"          # `conda create -n mycondaenv`, as the page assumes
    meta = conda_root / "envs" / "mycondaenv" / "conda-meta"
    meta.mkdir(parents=True)
    (meta / "python-3.11.9-h1.json").write_text(json.dumps(
        {"name": "python", "version": "3.11.9", "build": "h1_0", "channel": "https://conda.anaconda.org/conda-forge"}))
    monkeypatch.setenv("MAMBA_ROOT_PREFIX", str(conda_root))
    (page_dir / "path-to-source-directory").symlink_to("path-to-destination-directory")
    ns: dict[str, Any] = {}

    def page() -> list[str]:
        out = run_all(HOWTO, HOWTO_CREATE, ns)
        assert ns["env"].name == "AzureML-sklearn-0.24-ubuntu18.04-py37-cpu" and ns["env"].version == "1"
        assert ns["curated_clone"].name == "customize_curated" and ns["curated_clone"].version is None
        assert ns["curated_clone"].python.conda_dependencies.conda_packages == ["python=3.7", "scikit-learn=0.24"]
        assert ns["myenv"].python.conda_dependencies.pip_packages == ["numpy>=1.26", "requests==2.32.3"]
        assert (ns["myenv"].docker.base_image, ns["myenv"].docker.base_image_registry.address) == (
            "your_base-image", "your_registry_location")
        # Azure takes the page's placeholder address as any string; envcache refuses an address that
        # is no registry host once it reaches the daemon (README, "Coming from Azure ML").
        with pytest.raises(InvalidInput, match="docker.base_image_registry.address"):
            ns["myenv"].clone("placeholder").register(ns["ws"])
        ns["myenv"].docker.base_image_registry.address = "myregistry.azurecr.io"
        run(HOWTO, HOWTO_DOCKERFILE, ns)
        assert ns["myenv"].docker.base_image is None and "from-a-file" in ns["myenv"].docker.base_dockerfile
        run(HOWTO, HOWTO_INTERPRETER, ns)
        assert ns["myenv"].python.user_managed_dependencies
        assert "conda install numpy" in ns["myenv"].docker.base_dockerfile
        user_managed = ns["myenv"].clone("user-managed").register(ns["ws"])   # the daemon takes it as it is
        run_all(HOWTO, HOWTO_EXISTING, ns)
        assert ns["myenv"].python.conda_dependencies.conda_packages == ["python==3.11.9=h1_0"]
        assert ns["newenv"].to_definition_dict() == ns["myenv"].to_definition_dict()
        run_all(HOWTO, [HOWTO_PACKAGES, HOWTO_2020_VARIABLES, HOWTO_REGISTER, HOWTO_GET], ns)
        again = run(HOWTO, HOWTO_REGISTER, ns)                   # the same content: still version 1
        out.append(again)
        run_all(HOWTO, [HOWTO_2020_DOCKER, HOWTO_2020_DOCKERFILE_FROM_FILE], ns)
        with pytest.raises(InvalidInput, match="docker.base_image_registry.address"):
            ns["myenv"].register(workspace=ns["ws"])
        ns["myenv"].docker.base_image_registry.address = "myregistry.azurecr.io"
        changed = ns["myenv"].register(workspace=ns["ws"])       # changed content: version 2
        return [*out, user_managed.version, changed.version]

    *printed, user_managed_version, changed_version = await asyncio.to_thread(page)
    listing = printed[2]
    assert "Name AzureML-sklearn-0.24-ubuntu18.04-py37-cpu" in listing and "Name AzureML-Minimal" in listing
    assert "- scikit-learn=0.24" in listing and "envcache-minimal" not in listing
    restored = ns["restored_environment"]
    assert restored.version == "1"
    assert restored.environment_variables == {"MESSAGE": "Hello from Azure Machine Learning"}
    assert restored.python.conda_dependencies.conda_packages == ["numpy==1.17.0"]
    assert restored.python.conda_dependencies.pip_packages == ["pillow"]
    assert (user_managed_version, changed_version) == ("1", "2")
    async with AsyncClient(daemon) as client:
        latest = (await client.environment("myenv"))["definition"]
    assert latest["docker"]["enabled"] and "from-2020" in latest["docker"]["base_dockerfile"]


# ---- NOTEBOOK, in order -------------------------------------------------------------------

NOTEBOOK_CELLS = [
    '''
    from azureml.core.workspace import Workspace
    ws = Workspace.from_config()
    ws.get_details()
    ''',
    '''
    from azureml.core import Environment

    curated_env = Environment.get(workspace=ws, name="AzureML-Minimal")
    ''',
    '''
    envs = Environment.list(workspace=ws)

    for env in envs:
        if env.startswith("AzureML"):
            print("Name",env)
            if envs[env].python.conda_dependencies is not None:
                print("packages", envs[env].python.conda_dependencies.serialize_to_string())
    ''',
    '''
    from azureml.core.environment import CondaDependencies

    myenv = Environment(name="myenv")
    conda_dep = CondaDependencies()
    conda_dep.add_conda_package("scikit-learn==0.22.1")
    ''',
    '''
    conda_dep.add_pip_package("pillow==6.2.1")
    myenv.python.conda_dependencies=conda_dep
    ''',
    '''
    myenv.register(workspace=ws)
    ''',
    '''
    for name,env in ws.environments.items():
        print("Name {} \\t version {}".format(name,env.version))

    restored_environment = Environment.get(workspace=ws,name="myenv",version="1")

    print("Attributes of restored environment")
    restored_environment
    ''',
    '''
    myenv.docker.enabled = True
    ''',
    '''
    myenv.docker.base_image
    myenv.docker.base_image_registry
    ''',
    '''
    myenv.docker.gpu_support
    myenv.docker.shared_volumes
    myenv.docker.shm_size
    ''',
]


async def test_using_environments_notebook(daemon, page_dir: Path) -> None:
    point_config_at(page_dir, daemon)
    await register_curated_stand_ins(daemon)
    ns: dict[str, Any] = {}
    printed = await asyncio.to_thread(run_all, NOTEBOOK, NOTEBOOK_CELLS, ns)
    assert ns["ws"].url == daemon and ns["curated_env"].python.conda_dependencies.pip_packages == ["azureml-defaults"]
    assert "Name AzureML-Minimal" in printed[2] and "- azureml-defaults" in printed[2]
    assert "Name myenv \t version 1" in printed[6] and "Name envcache-minimal \t version 1" in printed[6]
    restored = ns["restored_environment"]
    assert restored.python.conda_dependencies.conda_packages == ["scikit-learn==0.22.1"]
    assert restored.python.conda_dependencies.pip_packages == ["pillow==6.2.1"]


# ---- CUSTOM_IMAGE: a private registry ------------------------------------------------------

CUSTOM_IMAGE_SNIPPETS = [
    '''
    from azureml.core import Environment

    fastai_env = Environment("fastai2")
    ''',
    '''
    fastai_env.docker.base_image = "fastdotai/fastai2:latest"
    fastai_env.python.user_managed_dependencies = True
    ''',
    '''
    # Set the container registry information.
    fastai_env.docker.base_image_registry.address = "myregistry.azurecr.io"
    fastai_env.docker.base_image_registry.username = "username"
    fastai_env.docker.base_image_registry.password = "password"
    ''',
]


async def test_custom_image_from_a_private_registry(daemon, page_dir: Path) -> None:
    ns: dict[str, Any] = {}

    def page() -> Any:
        run_all(CUSTOM_IMAGE, CUSTOM_IMAGE_SNIPPETS, ns)
        return ns["fastai_env"].register(workspace=daemon)   # the page goes on to submit a run with it

    registered = await asyncio.to_thread(page)
    sent = ns["fastai_env"].to_definition_dict()["docker"]["base_image_registry"]
    assert sent == {"address": "myregistry.azurecr.io", "username": "username", "password": "password"}
    # The daemon keeps where the base comes from, never the password.
    assert registered.docker.base_image_registry.address == "myregistry.azurecr.io"
    assert registered.docker.base_image_registry.password is None
    async with AsyncClient(daemon) as client:
        stored = (await client.environment("fastai2"))["definition"]
    assert stored["docker"]["base_image_registry"]["address"] == "myregistry.azurecr.io"
    assert ": \"password\"" not in json.dumps(stored)


# ---- building: HOWTO and REFERENCE, with a real engine -------------------------------------

REFERENCE_DOCKERSECTION = """
from azureml.core import Environment
myenv = Environment(name="myenv")
# Specify docker steps as a string.
dockerfile = r'''
FROM mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04
RUN echo "Hello from custom container!"
'''

# Alternatively, load from a file.
#with open("dockerfiles/Dockerfile", "r") as f:
#    dockerfile=f.read()

myenv.docker.base_dockerfile = dockerfile
"""

REFERENCE_BUILD_LOCAL_PUSH = '''
from azureml.core import Environment
myenv = Environment(name="myenv")
registered_env = myenv.register(workspace)
registered_env.build_local(workspace, useDocker=True, pushImageToWorkspaceAcr=True)
'''

REFERENCE_BUILD_LOCAL = '''
from azureml.core import Environment
myenv = Environment(name="myenv")
registered_env = myenv.register(workspace)
registered_env.build_local(workspace)
'''


def building_config(dockerd, upstream: str | None = None) -> Config:
    config = Config()
    config.build.engine, config.build.docker_host, config.build.compression = "docker", dockerd.host, "gzip"
    if upstream is not None:
        config.upstreams = [parse_upstream({"url": upstream, "prefix": "team", "mode": "push"})]
    return config


@pytest.mark.engine
async def test_how_to_build_and_get_image_details(make_daemon, dockerd, azure_bases, page_dir: Path) -> None:
    url = await make_daemon(building_config(dockerd))
    point_config_at(page_dir, url)
    (page_dir / "Dockerfile").write_text(f'FROM {AZURE_BASES[1]}\nRUN echo "Hello from a Dockerfile file"\n')
    ns: dict[str, Any] = {}

    def page() -> list[str]:
        run(NOTEBOOK, NOTEBOOK_CELLS[0], ns)
        built_inline = [run(REFERENCE, REFERENCE_DOCKERSECTION, ns)]
        ns["env"] = ns["environment"] = ns["myenv"]     # the pages leave which environment to the reader
        built_inline.append(run(HOWTO, HOWTO_BUILD, ns))
        run(HOWTO, HOWTO_DOCKERFILE, ns)                 # now the Dockerfile from ./Dockerfile
        first = run(HOWTO, HOWTO_BUILD, ns)
        run(HOWTO, HOWTO_IMAGE_DETAILS, ns)
        return [*built_inline, first, run(HOWTO, HOWTO_BUILD, ns)]

    _, inline, first, second = await asyncio.to_thread(page)
    assert "Hello from custom container!" in inline and "Image Build Status: Succeeded" in inline
    assert "Hello from a Dockerfile file" in first and "Image Build Status: Succeeded" in first
    assert "Hello from a Dockerfile file" not in second and "Image Build Status: Succeeded" in second
    build, details = ns["build"], ns["details"]
    assert build.status == "Succeeded" and details.image_exist
    assert details["digest"] == build.image_details["digest"] and details.registry == url.host
    assert (await url.store.get_manifest(details["repository"], details["tag"])).digest == details["digest"]


@pytest.mark.engine
async def test_build_local_builds_on_the_daemon_and_pushes_upstream(make_daemon, dockerd, azure_bases,
                                                                      page_dir: Path) -> None:
    hub_config = Config()
    hub_config.build.engine = "none"
    hub = await make_daemon(hub_config)                      # the team registry: another envcache daemon
    url = await make_daemon(building_config(dockerd, upstream=hub))
    point_config_at(page_dir, url)

    # "Please make sure `workspace` is instantiated as a valid … Workspace object", says the reference.
    ns: dict[str, Any] = {"workspace": Workspace.from_config()}

    def pages() -> list[str]:
        pushed = run(REFERENCE, REFERENCE_BUILD_LOCAL_PUSH, ns)
        ns["env"], ns["ws"] = ns["registered_env"], ns["workspace"]
        return [pushed, run(HOWTO, HOWTO_BUILD_LOCAL, ns), run(REFERENCE, REFERENCE_BUILD_LOCAL, ns)]

    pushed, again, plain = await asyncio.to_thread(pages)
    assert "envcache: built" in pushed and "already cached" in again and "already cached" not in plain
    details = ns["build"]
    assert details.image_exist and details.registry == url.host and details["repository"] == ENV_REPO
    shared = await hub.store.get_manifest("team/env", details["tag"])   # the upstream's prefix + /env
    assert shared is not None and shared.digest == details["digest"]
