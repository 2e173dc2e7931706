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


# ------------------------------------------------- equivalence classes: same install, same hash

PADDED_OPERATORS = ["==", "!=", "<=", ">=", "<", ">"]
PRE_SPELLINGS = {"a": ["a", "alpha", ".a", "-alpha"], "b": ["b", "beta", "_b"], "rc": ["rc", "c", "-rc", "pre", "preview"]}
POST_SPELLINGS = [".post{}", "post{}", "-post{}", ".rev{}", "_r{}"]
releases = st.lists(st.integers(0, 12), min_size=1, max_size=3)
pep440_versions = st.builds(
    lambda release, suffix: ".".join(map(str, release)) + suffix, releases,
    st.sampled_from(["", "a1", "b2", "rc1", ".post1", ".dev0", "+cu121", "+cpu.1", "a1.post2.dev3"]))


@st.composite
def pep440_respellings(draw: st.DrawFn) -> tuple[str, str]:
    """(specifier, another spelling of it) for an operator PEP 440 compares with zero padding:
    trailing ``.0``s, an explicit ``0!`` epoch, other pre-/post-release words, local label case."""
    operator = draw(st.sampled_from(PADDED_OPERATORS))
    release = draw(releases)
    pre = draw(st.sampled_from([None, ("a", 1), ("b", 2), ("rc", 1)]))
    post = draw(st.sampled_from([None, 1, 4]))
    dev = draw(st.sampled_from([None, 0, 3]))
    local = draw(st.sampled_from([None, "cu121", "cpu.1"])) if operator in ("==", "!=") else None

    def spell(parts: list[int], epoch: str, pre_word: str, post_form: str, local_text: str | None) -> str:
        text = epoch + ".".join(map(str, parts))
        text += f"{pre_word}{pre[1]}" if pre else ""
        text += post_form.format(post) if post is not None else ""
        text += f".dev{dev}" if dev is not None else ""
        return text + (f"+{local_text}" if local_text else "")

    plain = spell(release, "", pre[0] if pre else "", ".post{}", local)
    respelled = spell(release + [0] * draw(st.integers(0, 3)), draw(st.sampled_from(["", "0!"])),
                      draw(st.sampled_from(PRE_SPELLINGS[pre[0]])) if pre else "", draw(st.sampled_from(POST_SPELLINGS)),
                      local.upper() if local else None)
    return operator + plain, operator + respelled


def _pip_only(*packages: str, options: tuple[str, ...] = ()) -> Definition:
    return Definition(python=PythonSection(conda_dependencies=CondaDependencies(
        pip_packages=list(packages), pip_options=list(options))))


@FAST
@given(pep440_respellings(), st.lists(pep440_versions, min_size=10, max_size=30))
def test_pep440_respellings_pip_treats_alike_keep_hash(pair: tuple[str, str], candidates: list[str]) -> None:
    from pip._vendor.packaging.specifiers import Specifier as PipSpecifier

    a, b = pair
    for prereleases in (True, None):
        assert [PipSpecifier(a).contains(v, prereleases=prereleases) for v in candidates] == \
            [PipSpecifier(b).contains(v, prereleases=prereleases) for v in candidates]
    assert spec_hash(_pip_only(f"pkg{a}", "other>=1")) == spec_hash(_pip_only(f"Other >= 1.0", f"pkg {b}"))


@FAST
@given(releases, st.sampled_from(PADDED_OPERATORS + ["~=", "==="]), st.data())
def test_pep440_operator_or_version_change_changes_hash(release: list[int], operator: str, data: st.DataObject) -> None:
    parts = release + [0] * (len(release) == 1)  # ~= needs two components
    version = ".".join(map(str, parts))
    other_operator = data.draw(st.sampled_from([o for o in PADDED_OPERATORS + ["~=", "==="] if o != operator]))
    bumped = ".".join(map(str, parts[:-1] + [parts[-1] + 1]))
    before = spec_hash(_pip_only(f"pkg{operator}{version}"))
    changed = [f"pkg{other_operator}{version}", f"pkg{operator}{bumped}"]
    if operator in ("==", "!="):
        changed.append(f"pkg{operator}{version}.*")
    if operator == "~=":
        changed.append(f"pkg~={version}.0")  # ~= takes its prefix from the length: never padded
    for spelling in changed:
        assert spec_hash(_pip_only(spelling)) != before, spelling


@FAST
@given(st.sampled_from(["https://pypi.example.com", "http://10.0.0.1:8080", "https://u:tok@host.example"]),
       st.lists(st.sampled_from(["simple", "pypi", "whl", "cu121"]), min_size=0, max_size=3),
       st.sampled_from(["--index-url", "--extra-index-url"]))
def test_index_url_trailing_slash_keeps_hash_and_find_links_slash_does_not(host: str, path: list[str], option: str) -> None:
    url = "/".join([host, *path])
    plain = spec_hash(_pip_only("numpy", options=(f"{option} {url}",)))
    assert spec_hash(_pip_only("numpy", options=(f"{option}={url}/",))) == plain
    assert spec_hash(_pip_only("numpy", options=(f"{option} {url}//",))) != plain
    assert spec_hash(_pip_only("numpy", options=(f"--find-links {url}/",))) != \
        spec_hash(_pip_only("numpy", options=(f"--find-links {url}",)))


CONDA_OPERATORS = [">=", "<", "<=", ">", "!=", "=="]
conda_clauses = st.lists(st.tuples(st.sampled_from(CONDA_OPERATORS), st.sampled_from(VERSIONS)), min_size=2, max_size=4,
                         unique=True)


def _conda_only(*packages: str) -> Definition:
    return Definition(python=PythonSection(conda_dependencies=CondaDependencies(conda_packages=list(packages))))


@FAST
@given(st.lists(conda_clauses, min_size=1, max_size=3), st.integers(0, 10_000),
       st.lists(st.sampled_from(VERSIONS + ["0.1", "2", "4.0.1"]), min_size=5, max_size=12))
def test_conda_version_clause_order_keeps_hash(groups: list[list[tuple[str, str]]], seed: int, versions: list[str]) -> None:
    """``,`` (and) binds tighter than ``|`` (or); the operands of either are a set."""
    from rattler import Version, VersionSpec

    def spelled(order_seed: int | None) -> str:
        alternatives = [",".join(op + v for op, v in (group if order_seed is None else _shuffled(group, order_seed + i)))
                        for i, group in enumerate(groups)]
        return "|".join(alternatives if order_seed is None else _shuffled(alternatives, order_seed))

    written, reordered = spelled(None), spelled(seed)
    assert [VersionSpec(written).matches(Version(v)) for v in versions] == \
        [VersionSpec(reordered).matches(Version(v)) for v in versions]
    assert spec_hash(_conda_only(f"numpy {written}")) == spec_hash(_conda_only(f"numpy {reordered}"))
    clauses = {op + v for group in groups for op, v in group}
    replacement = next(f">={v}" for v in ("0.0.1", "0.0.2", "0.0.3", "0.0.4") if f">={v}" not in clauses)
    changed = written.replace(groups[0][0][0] + groups[0][0][1], replacement, 1)
    assert spec_hash(_conda_only(f"numpy {changed}")) != spec_hash(_conda_only(f"numpy {written}"))


BRACKET_KEYS = [("version", "'>=1.2,<2'"), ("build", "py*"), ("build_number", "3"), ("subdir", "linux-64"),
                ("channel", "conda-forge"), ("md5", "d41d8cd98f00b204e9800998ecf8427e")]


@FAST
@given(st.lists(st.sampled_from(BRACKET_KEYS), min_size=2, max_size=len(BRACKET_KEYS), unique=True), st.integers(0, 10_000))
def test_conda_bracket_key_order_keeps_hash_and_a_changed_key_does_not(keys: list[tuple[str, str]], seed: int) -> None:
    def spec(items: list[tuple[str, str]]) -> str:
        return "numpy[" + ", ".join(f"{k}={v}" for k, v in items) + "]"

    before = spec_hash(_conda_only(spec(keys)))
    assert spec_hash(_conda_only(spec(_shuffled(keys, seed)))) == before
    for key, _ in keys:
        other = {"version": "'>=1.3,<2'", "build": "py3*", "build_number": "4", "subdir": "linux-aarch64",
                 "channel": "defaults", "md5": "0" * 32}[key]
        assert spec_hash(_conda_only(spec([(k, other if k == key else v) for k, v in keys]))) != before, key


@FAST
@given(st.sampled_from(["myregistry.azurecr.io", "MyRegistry.AzureCR.io", "localhost:5000", "10.1.2.3:443"]),
       st.sampled_from(["team/base:1.0", "base", "team/sub/base:2@sha256:" + "a" * 64]),
       st.text(max_size=8), st.text(max_size=8))
def test_registry_address_qualifies_the_base_and_credentials_never_count(address: str, image: str, user: str,
                                                                         password: str) -> None:
    from envcache.definition import RegistryCredentials

    def defn(ref: str, registry: RegistryCredentials) -> Definition:
        return Definition(docker=DockerSection(base_image=ref, base_image_registry=registry))

    qualified = spec_hash(defn(f"{address.lower()}/{image}", RegistryCredentials()))
    assert spec_hash(defn(image, RegistryCredentials(address, user, password))) == qualified
    assert spec_hash(defn(image, RegistryCredentials("otherregistry.azurecr.io", user, password))) != qualified
    assert spec_hash(defn(image, RegistryCredentials())) != qualified


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
