"""Property tests for the canonical form: what must never change the hash, what always must.

Definitions are generated from small pools of real package names so that hypothesis explores
orderings, duplicates and spellings rather than random strings pip would reject anyway.
"""

from __future__ import annotations

import copy
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envcache.definition import (
    CondaDependencies, Definition, DockerSection, PythonSection, SparkPackage, SparkSection, spec_hash,
)

PIP_NAMES = ["numpy", "scikit-learn", "requests", "zope.interface", "typing-extensions", "pyyaml", "torch"]
CONDA_NAMES = ["python", "numpy", "pandas", "libgcc-ng", "openssl", "cudatoolkit"]
CHANNELS = ["conda-forge", "defaults", "pytorch", "nvidia", "bioconda"]
VERSIONS = ["1.0", "1.26.4", "2.31.0", "0.15.1", "3.11"]
IMAGES = ["ubuntu:22.04", "ubuntu:20.04", "debian:bookworm-slim", "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04"]
STEPS = ["RUN apt-get update", "RUN echo hello", "ENV A=1", "WORKDIR /app", "RUN pip install -U pip"]

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

pip_entries = st.lists(st.tuples(st.sampled_from(PIP_NAMES), st.sampled_from(VERSIONS)), min_size=1, max_size=6,
                       unique_by=lambda t: t[0])
conda_entries = st.lists(st.tuples(st.sampled_from(CONDA_NAMES), st.sampled_from(VERSIONS)), min_size=1, max_size=5,
                         unique_by=lambda t: t[0])
channel_lists = st.lists(st.sampled_from(CHANNELS), min_size=2, max_size=4, unique=True)
env_vars = st.dictionaries(st.sampled_from(["A", "B", "OMP_NUM_THREADS", "PATH_X", "Z"]), st.sampled_from(["1", "x", "y z"]),
                           max_size=4)
spark_packages = st.lists(st.tuples(st.sampled_from(["com.a", "org.b"]), st.sampled_from(["core", "sql", "ml"]),
                                    st.sampled_from(VERSIONS)), max_size=4, unique_by=lambda t: t[:2])
steps = st.lists(st.sampled_from(STEPS), min_size=2, max_size=4, unique=True)


@st.composite
def definitions(draw: st.DrawFn) -> Definition:
    use_dockerfile = draw(st.booleans())
    dockerfile = None
    image = draw(st.sampled_from(IMAGES))
    if use_dockerfile:
        dockerfile = "\n".join([f"FROM {image}", *draw(steps)]) + "\n"
        image = None
    return Definition(
        name=draw(st.sampled_from(["a", "b", None])),
        version=draw(st.sampled_from(["1", "2", None])),
        python=PythonSection(conda_dependencies=CondaDependencies(
            channels=draw(channel_lists),
            conda_packages=[f"{n}={v}" for n, v in draw(conda_entries)],
            pip_packages=[f"{n}=={v}" for n, v in draw(pip_entries)],
            pip_options=["--index-url https://pypi.example.com/simple"],
        )),
        docker=DockerSection(base_image=image, base_dockerfile=dockerfile),
        spark=SparkSection(packages=[SparkPackage(g, a, v) for g, a, v in draw(spark_packages)]),
        environment_variables=draw(env_vars),
    )


def _shuffled(items: list, seed: int) -> list:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


# ----------------------------------------------------------------------- never changes the hash


@FAST
@given(definitions(), st.integers(0, 10_000))
def test_reordering_packages_env_vars_and_spark_keeps_hash(defn: Definition, seed: int) -> None:
    other = copy.deepcopy(defn)
    deps = other.python.conda_dependencies
    deps.pip_packages = _shuffled(deps.pip_packages, seed)
    deps.conda_packages = _shuffled(deps.conda_packages, seed + 1)
    other.environment_variables = dict(_shuffled(list(other.environment_variables.items()), seed + 2))
    other.spark.packages = _shuffled(other.spark.packages, seed + 3)
    assert spec_hash(other) == spec_hash(defn)


@FAST
@given(definitions(), st.text(max_size=10), st.text(max_size=5), st.text(max_size=20))
def test_labels_do_not_change_hash(defn: Definition, name: str, version: str, description: str) -> None:
    other = copy.deepcopy(defn)
    other.name, other.version, other.description = name, version, description
    assert spec_hash(other) == spec_hash(defn)


def _respell(name: str, seed: int) -> str:
    """Another PEP 503-equal spelling: random case, and '-', '_', '.' swapped for each other."""
    rng = random.Random(seed)
    out = []
    for ch in name:
        if ch in "-_.":
            out.append(rng.choice(["-", "_", ".", "--", "_."]))
        else:
            out.append(ch.upper() if rng.random() < 0.5 else ch)
    return "".join(out)


@FAST
@given(definitions(), st.integers(0, 10_000))
def test_pip_name_case_separators_and_whitespace_keep_hash(defn: Definition, seed: int) -> None:
    other = copy.deepcopy(defn)
    deps = other.python.conda_dependencies
    respelled = []
    for i, entry in enumerate(deps.pip_packages):
        name, version = entry.split("==")
        respelled.append(f"  {_respell(name, seed + i)} ==  {version}  ")
    deps.pip_packages = respelled
    deps.conda_packages = [f" {entry.upper() if i % 2 else entry} " for i, entry in enumerate(deps.conda_packages)]
    assert spec_hash(other) == spec_hash(defn)


@FAST
@given(definitions(), st.integers(0, 10_000))
def test_duplicates_keep_hash(defn: Definition, seed: int) -> None:
    other = copy.deepcopy(defn)
    deps = other.python.conda_dependencies
    rng = random.Random(seed)
    deps.pip_packages = deps.pip_packages + [rng.choice(deps.pip_packages)]
    deps.conda_packages = deps.conda_packages + [rng.choice(deps.conda_packages)]
    deps.channels = deps.channels + [rng.choice(deps.channels)]
    other.spark.packages = other.spark.packages + other.spark.packages[:1]
    assert spec_hash(other) == spec_hash(defn)


@FAST
@given(definitions(), st.integers(0, 10_000))
def test_dockerfile_layout_keeps_hash(defn: Definition, seed: int) -> None:
    if defn.docker.base_dockerfile is None:
        defn.docker.base_dockerfile = "FROM ubuntu:22.04\nRUN apt-get update && apt-get install -y curl\n"
        defn.docker.base_image = None
    rng = random.Random(seed)
    lines = []
    for line in defn.docker.base_dockerfile.splitlines():
        keyword, _, rest = line.partition(" ")
        words = rest.split(" ")
        joined = "".join(w + rng.choice([" ", "  ", "\t", " \\\n    "]) for w in words[:-1]) + words[-1]
        lines.append(rng.choice(["", "# a comment", "   "]))
        lines.append(f"{keyword.lower() if rng.random() < 0.5 else keyword}  {joined}   ")
    other = copy.deepcopy(defn)
    other.docker.base_dockerfile = rng.choice(["\n", "\r\n"]).join(lines) + "\n\n"
    assert spec_hash(other) == spec_hash(defn)


# ---------------------------------------------------------------------- always changes the hash


@FAST
@given(definitions())
def test_channel_order_changes_hash(defn: Definition) -> None:
    other = copy.deepcopy(defn)
    other.python.conda_dependencies.channels.reverse()
    assert spec_hash(other) != spec_hash(defn)


@FAST
@given(definitions(), st.data())
def test_pip_version_extra_marker_change_hash(defn: Definition, data: st.DataObject) -> None:
    deps = defn.python.conda_dependencies
    index = data.draw(st.integers(0, len(deps.pip_packages) - 1))
    name, version = deps.pip_packages[index].split("==")
    variants = [
        f"{name}=={version}.1",
        f"{name}[extra]=={version}",
        f'{name}=={version}; python_version < "3.12"',
        f"{name}>={version}",
    ]
    before = spec_hash(defn)
    for changed in variants:
        other = copy.deepcopy(defn)
        other.python.conda_dependencies.pip_packages[index] = changed
        assert spec_hash(other) != before, changed


@FAST
@given(definitions(), st.data())
def test_conda_version_changes_hash(defn: Definition, data: st.DataObject) -> None:
    deps = defn.python.conda_dependencies
    index = data.draw(st.integers(0, len(deps.conda_packages) - 1))
    name, version = deps.conda_packages[index].split("=")
    before = spec_hash(defn)
    for changed in (f"{name}={version}.9", f"{name}=={version}"):  # other version; fuzzy → exact
        other = copy.deepcopy(defn)
        other.python.conda_dependencies.conda_packages[index] = changed
        assert spec_hash(other) != before, changed


@FAST
@given(definitions(), st.sampled_from(["--index-url https://other.example.com/simple",
                                       "--extra-index-url https://pypi.example.com/simple"]))
def test_index_url_changes_hash(defn: Definition, option: str) -> None:
    other = copy.deepcopy(defn)
    other.python.conda_dependencies.pip_options = [option]
    assert spec_hash(other) != spec_hash(defn)


@FAST
@given(definitions(), st.sampled_from(STEPS))
def test_dockerfile_step_and_order_change_hash(defn: Definition, step: str) -> None:
    defn.docker.base_image = None
    defn.docker.base_dockerfile = "FROM ubuntu:22.04\nRUN echo one\nRUN echo two\n"
    before = spec_hash(defn)
    swapped = copy.deepcopy(defn)
    swapped.docker.base_dockerfile = "FROM ubuntu:22.04\nRUN echo two\nRUN echo one\n"
    added = copy.deepcopy(defn)
    added.docker.base_dockerfile += step + "\n"
    edited = copy.deepcopy(defn)
    edited.docker.base_dockerfile = edited.docker.base_dockerfile.replace("echo two", "echo  'two  '")
    assert len({before, spec_hash(swapped), spec_hash(added), spec_hash(edited)}) == 4


@FAST
@given(definitions(), st.sampled_from(IMAGES))
def test_base_image_changes_hash(defn: Definition, image: str) -> None:
    defn.docker.base_dockerfile = None
    defn.docker.base_image = "ubuntu:24.04"
    other = copy.deepcopy(defn)
    other.docker.base_image = image
    assert spec_hash(other) != spec_hash(defn)


@FAST
@given(definitions())
def test_user_managed_flag_changes_hash(defn: Definition) -> None:
    other = copy.deepcopy(defn)
    other.python.user_managed_dependencies = True
    assert spec_hash(other) != spec_hash(defn)


@FAST
@given(definitions())
def test_user_managed_ignores_package_lists_but_not_interpreter(defn: Definition) -> None:
    defn.python.user_managed_dependencies = True
    other = copy.deepcopy(defn)
    other.python.conda_dependencies = CondaDependencies(pip_packages=["anything==9"])
    assert spec_hash(other) == spec_hash(defn)
    other.python.interpreter_path = "/opt/conda/bin/python"
    assert spec_hash(other) != spec_hash(defn)


# ------------------------------------------------------------------- bad input is always clean

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
FIELD_NAMES = ["python", "docker", "spark", "environment_variables", "variants", "conda_dependencies", "pip_packages",
               "conda_packages", "channels", "pip_options", "base_image", "base_dockerfile", "packages", "gpu"]
near_valid = st.recursive(
    st.none() | st.booleans() | st.text(max_size=20) | st.sampled_from(["numpy==1", "ubuntu", "=>", "-i", "a:b:c"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(FIELD_NAMES), children, max_size=3),
    max_leaves=15,
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(json_values, near_valid))
def test_any_mapping_either_loads_or_raises_definition_error(data: object) -> None:
    from envcache.errors import DefinitionError
    from envcache.definition import definition_from_dict

    try:
        defn = definition_from_dict(data)
    except DefinitionError as exc:
        assert str(exc).startswith("<api>") and "\n" not in exc.detail
    else:
        assert len(spec_hash(defn)) == 32
