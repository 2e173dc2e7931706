"""The Azure-style facade and the sync client, offline and against a real daemon + engine.

The facade is blocking (like Azure's SDK); the daemon runs on this test's event loop, so each
facade call runs in a thread.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest

from envcache.client.base import DaemonUnavailable
from envcache.client.facade import CondaDependencies, Environment
from envcache.client.sync import Client
from envcache.errors import NotFound
from envcache.service.config import Config
from envcache import definition as spec


def test_conda_dependencies_behave_like_azures() -> None:
    deps = CondaDependencies.create(pip_packages=["requests==2.31"], conda_packages=["numpy"], python_version="3.11")
    deps.add_conda_package("numpy=1.26")          # same name: replaced, not duplicated
    deps.add_pip_package("Requests>=2.32")        # names compare as pip does
    deps.add_channel("conda-forge")
    deps.add_channel("conda-forge")
    deps.set_pip_option("--index-url https://example.invalid/simple")
    assert deps.conda_packages == ["python=3.11", "numpy=1.26"]
    assert deps.pip_packages == ["Requests>=2.32"] and deps.conda_channels == ["conda-forge"]
    deps.remove_pip_package("requests")
    assert deps.pip_packages == []


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


def test_a_missing_daemon_is_a_clear_error() -> None:
    with pytest.raises(DaemonUnavailable, match="envcache serve"):
        Client("http://127.0.0.1:9").health()


@pytest.mark.engine
async def test_facade_register_get_build_and_image_details(make_daemon, dockerd, busybox_image, capsys) -> None:
    config = Config()
    config.build.engine, config.build.docker_host, config.build.compression = "docker", dockerd.host, "gzip"
    url = await make_daemon(config)
    client = Client(url)
    marker = secrets.token_hex(4)

    def scenario() -> tuple[dict, dict, Environment, Environment]:
        env = Environment("facade-demo")
        env.docker.base_dockerfile = f"FROM {busybox_image}\nRUN echo {marker} > /marker\n"
        env.environment_variables = {"MARKER": marker}
        assert env.get_image_details(client, variant="cpu")["imageExistsInRegistry"] is False
        v1 = env.register(client)
        env.environment_variables["EXTRA"] = "1"
        v2 = env.register(client)
        assert (v1.version, v2.version) == (1, 2) and env.register(client).version == 2
        old = Environment.get(client, "facade-demo", version=1)
        latest = Environment.get(client, "facade-demo")
        build = old.build(client, variant="cpu")
        image = build.wait_for_completion(show_output=True)
        details = old.get_image_details(client, variant="cpu")
        return image, details, old, latest

    image, details, old, latest = await asyncio.to_thread(scenario)
    assert old.environment_variables == {"MARKER": marker} and latest.environment_variables["EXTRA"] == "1"
    assert details["imageExistsInRegistry"] and details["digest"] == image["digest"]
    assert details["dockerImage"]["registry"]["address"] == url.removeprefix("http://")
    printed = capsys.readouterr().out
    assert marker in printed
    listed = await asyncio.to_thread(Environment.list, client)
    assert listed["facade-demo"].version == 2 and "envcache-minimal" in listed
    with pytest.raises(NotFound):
        await asyncio.to_thread(Environment.get, client, "facade-demo", 7)
