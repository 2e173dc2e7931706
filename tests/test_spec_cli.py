"""The real ``envcache`` command: hash / canonical / diff / convert, and every bad-input path
(exit status 2, one line naming file and line or field, no traceback)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed console command, exactly as a user would."""
    command = shutil.which("envcache")
    assert command, "the envcache console script is not installed (pip install -e .)"
    return subprocess.run([command, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = """\
python:
  conda_dependencies:
    channels: [conda-forge, defaults]
    conda_packages: [python=3.11]
    pip_packages: [requests==2.31.0, pandas>=2]
docker: {base_image: "ubuntu:22.04"}
"""


def test_hash_prints_one_line_per_path_in_every_format(tmp_path: Path) -> None:
    _write(tmp_path / "env.yaml", BASE)
    _write(tmp_path / "environment.yml", "channels: [conda-forge]\ndependencies: [python=3.11, {pip: [requests]}]\n")
    _write(tmp_path / "requirements.txt", "requests==2.31.0\n")
    _write(tmp_path / "export.yml", "name: b\nchannels: [conda-forge]\ndependencies: [python=3.11.7=h_0]\nprefix: /opt/c\n")
    assert run("convert", "env.yaml", "--to", "azure-dir", "azdir", cwd=tmp_path).returncode == 0
    assert run("convert", "env.yaml", "--to", "json", "env.json", cwd=tmp_path).returncode == 0
    paths = ["env.yaml", "env.json", "azdir", "environment.yml", "requirements.txt", "export.yml"]
    result = run("hash", *paths, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == paths
    hashes = [line.split("  ", 1)[0] for line in lines]
    assert all(re.fullmatch(r"[0-9a-f]{32}", h) for h in hashes)
    assert hashes[0] == hashes[1] == hashes[2]
    assert len(set(hashes[2:])) == 4
    as_json = json.loads(run("hash", "--json", "env.yaml", cwd=tmp_path).stdout)
    assert as_json == [{"path": "env.yaml", "spec_hash": hashes[0]}]


def test_canonical_prints_hashed_json(tmp_path: Path) -> None:
    _write(tmp_path / "env.yaml", BASE)
    pretty = run("canonical", "env.yaml", cwd=tmp_path)
    compact = run("canonical", "--compact", "env.yaml", cwd=tmp_path)
    assert pretty.returncode == compact.returncode == 0
    assert json.loads(pretty.stdout) == json.loads(compact.stdout)
    form = json.loads(compact.stdout)
    assert form["docker"]["base_image"] == "docker.io/library/ubuntu:22.04"
    assert form["python"]["conda_dependencies"]["pip_packages"] == ["pandas>=2", "requests==2.31"]
    import xxhash

    digest = run("hash", "env.yaml", cwd=tmp_path).stdout.split()[0]
    assert xxhash.xxh3_128_hexdigest(compact.stdout.rstrip("\n").encode()) == digest
    data = json.loads(run("canonical", "--json", "env.yaml", cwd=tmp_path).stdout)
    assert data["spec_hash"] == digest and data["canonical"] == form


def test_diff_same_and_explains_differences(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", BASE)
    _write(tmp_path / "reordered.yaml", BASE.replace("[requests==2.31.0, pandas>=2]", "[Pandas >= 2, requests==2.31.0]"))
    same = run("diff", "a.yaml", "reordered.yaml", cwd=tmp_path)
    assert same.returncode == 0 and same.stdout.startswith("same: ")
    changed = BASE.replace("[conda-forge, defaults]", "[defaults, conda-forge]") \
                  .replace("pandas>=2]", "pandas>=2, numpy==1.26.4]").replace("ubuntu:22.04", "ubuntu:24.04") \
                  .replace("requests==2.31.0", "requests==2.32.0")
    _write(tmp_path / "b.yaml", changed)
    result = run("diff", "a.yaml", "b.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("different: ")
    for expected in ("pip package added: numpy==1.26.4",
                     "conda channel order changed: conda-forge, defaults → defaults, conda-forge",
                     "base image: docker.io/library/ubuntu:22.04 → docker.io/library/ubuntu:24.04",
                     "pip package changed: requests==2.31 → requests==2.32"):
        assert expected in result.stdout
    data = json.loads(run("diff", "--json", "a.yaml", "b.yaml", cwd=tmp_path).stdout)
    assert data["same"] is False and "pip package added: numpy==1.26.4" in data["differences"]


def test_diff_names_a_changed_base_image_registry(tmp_path: Path) -> None:
    base = "docker:\n  base_image: team/base:1.0\n  base_image_registry: {address: %s, username: bot}\n"
    _write(tmp_path / "a.yaml", base % "myregistry.azurecr.io")
    _write(tmp_path / "b.yaml", base % "otherregistry.azurecr.io")
    _write(tmp_path / "c.yaml", "docker: {base_image: 'myregistry.azurecr.io/team/base:1.0'}\n")
    result = run("diff", "a.yaml", "b.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "base image registry: myregistry.azurecr.io → otherregistry.azurecr.io (for team/base:1.0)" in result.stdout
    assert run("diff", "a.yaml", "c.yaml", cwd=tmp_path).stdout.startswith("same: ")


def test_convert_yaml_round_trip(tmp_path: Path) -> None:
    _write(tmp_path / "Dockerfile.yaml", "docker:\n  base_dockerfile: |\n    FROM ubuntu:22.04\n    RUN echo hi\n")
    result = run("convert", "Dockerfile.yaml", "--to", "yaml", "out.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "base_dockerfile: |" in (tmp_path / "out.yaml").read_text()
    assert run("hash", "out.yaml", cwd=tmp_path).stdout.split()[0] == result.stdout.split()[0]
    az = run("convert", "out.yaml", "--to", "azure-dir", "az", cwd=tmp_path)
    assert az.returncode == 0 and (tmp_path / "az" / "BaseDockerfile").read_text().startswith("FROM ubuntu")


# (file name, content, expected message fragment). Each must exit 2 with one line, no traceback.
ERRORS = [
    ("unknown.yaml", "python:\n  conda_dependencies:\n    pip_pacakges: [x]\n",
     "unknown.yaml: line 3 (python.conda_dependencies.pip_pacakges): unknown field 'pip_pacakges'; "
     "valid fields here: channels, conda_packages, pip_packages, pip_options"),
    ("top.yaml", "pyhton: {}\n", "top.yaml: line 1 (pyhton): unknown field 'pyhton'; valid fields here: name, version"),
    ("badpip.yaml", "python:\n  conda_dependencies:\n    pip_packages:\n      - numpy\n      - 'numpy>>1'\n",
     "badpip.yaml: line 5 (python.conda_dependencies.pip_packages[1]): invalid pip requirement 'numpy>>1'"),
    ("badconda.yaml", "python:\n  conda_dependencies:\n    conda_packages: ['numpy===???']\n",
     "badconda.yaml: line 3 (python.conda_dependencies.conda_packages[0]): invalid conda package 'numpy===???'"),
    ("both.yaml", "docker:\n  base_image: ubuntu\n  base_dockerfile: 'FROM ubuntu'\n",
     "both.yaml: line 1 (docker): set either base_image or base_dockerfile, not both"),
    ("broken.yaml", "a: [1, 2\nb: 3\n", "broken.yaml: line 2, column 2: invalid YAML"),
    ("type.json", '{"python": {"user_managed_dependencies": "yes"}}',
     "type.json: python.user_managed_dependencies: expected true or false, got the string 'yes'"),
    ("broken.json", '{"python": ', "broken.json: line 1, column 12: invalid JSON"),
    ("requirements.txt", "numpy==1.0\nrequests>>2\n", "requirements.txt: line 2: invalid pip requirement 'requests>>2'"),
    ("badopt.txt", "--bogus x\n", "badopt.txt: line 1: no such option: --bogus"),
    ("inc.txt", "numpy\n-r missing.txt\n", "inc.txt: line 2: included file not found: missing.txt"),
    ("environment.yml", "name: x\ndependencies: [numpy]\nfoo: 1\n",
     "environment.yml: line 3 (foo): unknown field 'foo'; valid fields here: name, channels, dependencies"),
    ("condabad.yml", "dependencies:\n  - numpy\n  - 'pandas >>= 1'\n",
     "condabad.yml: line 3 (dependencies[1]): invalid conda package 'pandas >>= 1'"),
    ("variant.yaml", "variants:\n  tpu: {base_image: x}\n",
     "variant.yaml: line 2 (variants.tpu): unknown variant 'tpu'; valid variants: cpu, gpu"),
    ("image.yaml", "docker:\n  base_image: 'Ubuntu:22.04'\n",
     "image.yaml: line 2 (docker.base_image): invalid image reference 'Ubuntu:22.04'"),
    ("pipopt.yaml", "python:\n  conda_dependencies:\n    pip_options: ['--index-url']\n",
     "pipopt.yaml: line 3 (python.conda_dependencies.pip_options[0]): pip option '--index-url': "
     "--index-url option requires 1 argument"),
    ("envvar.yaml", "environment_variables:\n  DEBUG: yes\n",
     "envvar.yaml: line 2 (environment_variables.DEBUG): expected a string, got true (quote it)"),
    ("decimal.yaml", "spark:\n  packages:\n    - {group: a, artifact: b, version: 1.10}\n",
     "decimal.yaml: line 3 (spark.packages[0].version): expected a string, got float 1.1 (quote it)"),
    ("spark.yaml", "spark:\n  packages: ['com.a:core']\n",
     "spark.yaml: line 2 (spark.packages[0]): Spark package 'com.a:core' must be 'group:artifact:version'"),
    ("address.yaml", "docker:\n  base_image: team/base:1.0\n  base_image_registry:\n    address: https://r.example.com\n",
     "address.yaml: line 4 (docker.base_image_registry.address): invalid registry address 'https://r.example.com'"),
    ("missing.yaml", None, "missing.yaml: file not found"),
]


@pytest.mark.parametrize("name,content,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_input_exits_2_with_one_clear_line(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    if content is not None:
        _write(tmp_path / name, content)
    result = run("hash", name, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("envcache: error: ")
    assert message in result.stderr, result.stderr


def test_bad_azure_dirs_exit_2(tmp_path: Path) -> None:
    _write(tmp_path / "a1" / "azureml_environment.json", '{"name": "x", "docker": {"gpuSupport": true}}')
    _write(tmp_path / "a2" / "azureml_environment.json", '{"name": "x", "r": {"cranPackages": []}}')
    _write(tmp_path / "a3" / "azureml_environment.json", '{"docker": {"baseImage": "ubuntu"}}')
    _write(tmp_path / "a3" / "BaseDockerfile", "FROM ubuntu\n")
    (tmp_path / "a4").mkdir()
    cases = {
        "a1": "a1/azureml_environment.json: docker.gpuSupport: unknown field 'gpuSupport'; valid fields here: baseImage",
        "a2": "a2/azureml_environment.json: r: Azure field 'r' is not supported by envcache",
        "a3": "a3/azureml_environment.json: set either docker.baseImage or a BaseDockerfile, not both",
        "a4": "a4: not an Azure ML environment directory: azureml_environment.json is missing",
    }
    for path, message in cases.items():
        result = run("hash", path, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    _write(tmp_path / "env.yaml", "variants:\n  gpu: {base_image: 'nvidia/cuda:12.2.0-base-ubuntu22.04'}\n")
    result = run("hash", "--format", "toml", "env.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'toml'" in result.stderr
    _write(tmp_path / "env.cfg", "x")
    result = run("hash", "env.cfg", cwd=tmp_path)
    assert result.returncode == 2 and "cannot tell the format from the name; pass --format" in result.stderr


def test_cli_format_choices_are_the_loaders_and_load_no_parser() -> None:
    """``--format`` offers exactly what ``load_definition`` takes, without importing the parsers."""
    code = ("import sys; from envcache.cli import build_parser; parser = build_parser('hash'); "
            "action = next(a for a in parser._subparsers._group_actions[0].choices['hash']._actions "
            "if '--format' in a.option_strings); "
            "print(list(action.choices)); print(sorted(m for m in ('envcache.definition.loaders', 'yaml') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    from envcache.definition.loaders import FORMATS

    assert result.stdout.splitlines() == [str(list(FORMATS)), "[]"]
