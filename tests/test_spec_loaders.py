"""Every input format loads onto the same model; the Azure directory round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envcache.definition import (
    Definition, canonical_bytes, definition_from_dict, definition_to_dict, load_definition, spec_hash, write_azure_dir,
)

ENV_YAML = """\
name: demo
version: 3
python:
  conda_dependencies:
    channels: [conda-forge, defaults]
    conda_packages: [python=3.11, numpy==1.26.4]
    pip_packages: [requests>=2.31, scikit-learn==1.4.0]
    pip_options: ["--index-url https://user:s3cret@pypi.example.com/simple"]
docker:
  base_image: ubuntu:22.04
  base_image_registry: {address: registry.example.com, username: bot, password: hunter2}
  shm_size: 2g
spark:
  repositories: ["https://maven.example.com/repo"]
  packages:
    - {group: com.microsoft.ml.spark, artifact: mmlspark_2.11, version: "0.15"}
environment_variables: {OMP_NUM_THREADS: "4"}
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_azure_dir_round_trip_is_identical(tmp_path: Path) -> None:
    original = load_definition(_write(tmp_path / "env.yaml", ENV_YAML))
    write_azure_dir(original, tmp_path / "az1")
    first = load_definition(tmp_path / "az1")
    write_azure_dir(first, tmp_path / "az2")
    second = load_definition(tmp_path / "az2")
    assert first == second == original
    for name in ("azureml_environment.json", "conda_dependencies.yml"):
        assert (tmp_path / "az1" / name).read_bytes() == (tmp_path / "az2" / name).read_bytes()
    data = json.loads((tmp_path / "az1" / "azureml_environment.json").read_text())
    assert data["docker"]["baseImage"] == "ubuntu:22.04"
    assert data["python"]["userManagedDependencies"] is False
    assert data["spark"]["packages"] == [{"group": "com.microsoft.ml.spark", "artifact": "mmlspark_2.11", "version": "0.15"}]


def test_azure_dir_with_dockerfile_round_trips(tmp_path: Path) -> None:
    dockerfile = "FROM ubuntu:22.04\nRUN apt-get update && \\\n    apt-get install -y curl\n"
    defn = Definition(name="df")
    defn.docker.base_dockerfile = dockerfile
    write_azure_dir(defn, tmp_path / "az")
    assert (tmp_path / "az" / "BaseDockerfile").read_text() == dockerfile
    assert load_definition(tmp_path / "az") == defn


def test_azure_scaffold_as_azure_writes_it_hashes_like_envcache_yaml(tmp_path: Path) -> None:
    """A directory written the way ``Environment.save_to_directory`` does (not by us)."""
    az = tmp_path / "scaffold"
    _write(az / "azureml_environment.json", json.dumps({
        "name": "demo", "version": None,
        "environmentVariables": {"OMP_NUM_THREADS": "4"},
        "python": {"userManagedDependencies": False, "interpreterPath": "python",
                   "condaDependenciesFile": None, "baseCondaEnvironment": None},
        "docker": {"enabled": False, "baseImage": "ubuntu:22.04", "baseDockerfile": None, "sharedVolumes": True,
                   "shmSize": None, "arguments": [],
                   "baseImageRegistry": {"address": None, "username": None, "password": None, "registryIdentity": None},
                   "platform": {"os": "Linux", "architecture": "amd64"}},
        "spark": {"repositories": [], "packages": [], "precachePackages": True},
        "databricks": {"mavenLibraries": [], "pypiLibraries": [], "rcranLibraries": [], "jarLibraries": [],
                       "eggLibraries": []},
        "r": None, "inferencingStackVersion": None}, indent=4))
    _write(az / "conda_dependencies.yml", """\
# Conda environment specification.
name: project_environment
dependencies:
  # The python interpreter version.
- python=3.11
- pip:
  - --extra-index-url https://download.pytorch.org/whl/cpu
  - azureml-defaults
  - Torch==2.2.0
channels:
- conda-forge
""")
    yaml_env = _write(tmp_path / "same.yaml", """\
python:
  conda_dependencies:
    channels: [conda-forge]
    conda_packages: ["python 3.11.*"]
    pip_packages: [torch==2.2.0, azureml_defaults]
    pip_options: ["--extra-index-url=https://download.pytorch.org/whl/cpu"]
docker: {base_image: "docker.io/library/ubuntu:22.04"}
environment_variables: {OMP_NUM_THREADS: "4"}
""")
    assert spec_hash(load_definition(az)) == spec_hash(load_definition(yaml_env))
    assert spec_hash(load_definition(az / "azureml_environment.json")) == spec_hash(load_definition(yaml_env))


def test_reference_dict_round_trip_and_redaction(tmp_path: Path) -> None:
    defn = load_definition(_write(tmp_path / "env.yaml", ENV_YAML))
    assert definition_from_dict(definition_to_dict(defn)) == defn
    assert json.loads(json.dumps(definition_to_dict(defn))) == definition_to_dict(defn)
    redacted = json.dumps(definition_to_dict(defn, redact=True))
    assert "hunter2" not in redacted and "s3cret" not in redacted
    assert spec_hash(definition_from_dict(json.loads(redacted))) == spec_hash(defn)


def test_secrets_never_in_repr_or_canonical_bytes(tmp_path: Path) -> None:
    defn = load_definition(_write(tmp_path / "env.yaml", ENV_YAML))
    for text in (repr(defn), canonical_bytes(defn).decode()):
        assert "hunter2" not in text and "s3cret" not in text
    assert "https://pypi.example.com/simple/" in canonical_bytes(defn).decode()
    # The registry address is where the base comes from (content); who logs in there is not.
    assert '"base_image":"registry.example.com/ubuntu:22.04"' in canonical_bytes(defn).decode()
    assert '"bot"' not in canonical_bytes(defn).decode()
    assert defn.python.conda_dependencies.pip_options == ["--index-url https://user:s3cret@pypi.example.com/simple"]


def test_json_and_yaml_reference_formats_agree(tmp_path: Path) -> None:
    defn = load_definition(_write(tmp_path / "env.yaml", ENV_YAML))
    as_json = _write(tmp_path / "env.json", json.dumps(definition_to_dict(defn)))
    assert load_definition(as_json) == defn


def test_conda_environment_yml(tmp_path: Path) -> None:
    _write(tmp_path / "extra.txt", "six==1.16.0\n")
    env = _write(tmp_path / "environment.yml", """\
name: myenv
channels: [conda-forge]
dependencies:
  - python=3.11
  - numpy==1.26.4
  - pip
  - pip:
    - --extra-index-url https://download.pytorch.org/whl/cpu
    - torch==2.2.0
    - -r extra.txt
variables:
  FOO: bar
""")
    defn = load_definition(env)
    deps = defn.python.conda_dependencies
    assert defn.name == "myenv"
    assert deps.channels == ["conda-forge"]
    assert deps.conda_packages == ["python=3.11", "numpy==1.26.4", "pip"]
    assert deps.pip_packages == ["torch==2.2.0", "six==1.16.0"]
    assert deps.pip_options == ["--extra-index-url https://download.pytorch.org/whl/cpu"]
    assert defn.environment_variables == {"FOO": "bar"}


def test_conda_env_export(tmp_path: Path) -> None:
    env = _write(tmp_path / "exported.yml", """\
name: base
channels:
  - conda-forge
dependencies:
  - _libgcc_mutex=0.1=conda_forge
  - numpy=1.26.4=py311h64a7726_0
  - python=3.11.7=hab00c5b_1_cpython
  - pip:
      - requests==2.31.0
prefix: /opt/conda
""")
    defn = load_definition(env)
    from envcache.definition import canonical_form

    conda = canonical_form(defn)["python"]["conda_dependencies"]
    assert conda["conda_packages"] == ["_libgcc_mutex ==0.1 conda_forge", "numpy ==1.26.4 py311h64a7726_0",
                                       "python ==3.11.7 hab00c5b_1_cpython"]
    assert conda["pip_packages"] == ["requests==2.31"]


def test_requirements_txt_full_grammar(tmp_path: Path) -> None:
    _write(tmp_path / "base.txt", "six==1.16\n")
    _write(tmp_path / "constraints.txt", "requests<3\n")
    req = _write(tmp_path / "requirements.txt", """\
# comment line
--index-url https://user:tok@pypi.example.com/simple
--extra-index-url=https://extra.example.com/simple
--find-links ./wheels
--pre
-r base.txt
-c constraints.txt
Requests[socks,security] >= 2.0 ; python_version < "3.12"  # inline comment
numpy==1.26.4 --hash=sha256:bbbb --hash=sha256:aaaa
git+https://github.com/pallets/flask.git@2.3.0#egg=flask
mypkg @ https://example.com/mypkg-1.0.tar.gz
""")
    defn = load_definition(req)
    from envcache.definition import canonical_form

    conda = canonical_form(defn)["python"]["conda_dependencies"]
    assert conda["pip_options"] == ["--index-url https://pypi.example.com/simple/",
                                    "--extra-index-url https://extra.example.com/simple/",
                                    "--find-links ./wheels", "--pre"]
    assert conda["pip_packages"] == [
        "git+https://github.com/pallets/flask.git@2.3.0#egg=flask",
        "mypkg @ https://example.com/mypkg-1.0.tar.gz",
        "numpy==1.26.4 --hash=sha256:aaaa --hash=sha256:bbbb",
        'requests[security,socks]<3,>=2; python_version < "3.12"',
        "six==1.16",
    ]
    assert conda["channels"] == [] and conda["conda_packages"] == []


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_format_flag_overrides_detection(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path / "definition.txt", '{"docker": {"base_image": "ubuntu:22.04"}}')
    assert load_definition(path, fmt).docker.base_image == "ubuntu:22.04"


VECTOR_PATHS = ["minimal.yaml", "full.yaml", "dockerfile.yaml", "user_managed.json", "azure_dir", "environment.yml",
                "conda_export.yml", "requirements/requirements.txt", "identity.yaml", "azure_registry"]


@pytest.mark.parametrize("path", VECTOR_PATHS)
def test_every_format_converts_losslessly(tmp_path: Path, path: str) -> None:
    """Any input → envcache YAML / JSON / Azure dir → back: the same model, so the same hash."""
    from envcache.cli.definition import _yaml_dump

    defn = load_definition(Path(__file__).parent / "vectors" / path)
    as_yaml = _write(tmp_path / "out.yaml", _yaml_dump(definition_to_dict(defn)))
    as_json = _write(tmp_path / "out.json", json.dumps(definition_to_dict(defn)))
    assert load_definition(as_yaml) == defn
    assert load_definition(as_json) == defn
    if not defn.variants:
        write_azure_dir(defn, tmp_path / "az")
        assert load_definition(tmp_path / "az") == defn
