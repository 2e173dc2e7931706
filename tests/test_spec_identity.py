"""Identity: spellings that install alike hash alike; spellings that may install differently never do.

Every equivalence is checked against the installers' own code as well as against the hash: pip's
vendored ``packaging`` (what ``pip install`` evaluates: packaging 21.3 inside pip 23) and the
current ``packaging`` for PEP 440 specifiers, pip's ``SearchScope`` and link parser for index and
find-links URLs, rattler's ``VersionSpec`` for conda. README, "Canonical rules", has the tables.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.specifiers import Specifier
from pip._vendor.packaging.specifiers import Specifier as PipSpecifier

from envcache.definition import (
    CondaDependencies, Definition, DockerSection, PythonSection, VariantOverride, base_reference, canonical_form,
    definition_from_dict, for_variant, load_definition, spec_hash, write_azure_dir,
)
from envcache.builder.stages import stage_chain
from envcache.definition.canonical import canonical_conda_package
from envcache.definition.diff import explain
from envcache.definition.model import RegistryCredentials


def _pip(*packages: str, options: tuple[str, ...] = ()) -> Definition:
    return Definition(python=PythonSection(conda_dependencies=CondaDependencies(
        pip_packages=list(packages), pip_options=list(options))))


def _conda(*packages: str) -> Definition:
    return Definition(python=PythonSection(conda_dependencies=CondaDependencies(conda_packages=list(packages))))


def _dockerfile(text: str) -> Definition:
    return Definition(docker=DockerSection(base_dockerfile=text))


# ------------------------------------------------------------------------------- PEP 440 table

CANDIDATES = [
    release + suffix
    for release in ["0", "1", "1.0", "1.2", "1.2.5", "1.4", "1.4.0", "1.4.2", "1.9", "2", "2.0", "2.0.0", "2.0.0.0",
                    "2.1", "2.2", "2.2.0", "2.2.1", "2.10", "3", "1!2.0"]
    for suffix in ["", "a1", "rc1", ".post1", ".dev0", "+cu121", "+cpu"]
]


def _accepts(spec: str, cls: type) -> tuple[frozenset[str], frozenset[str]]:
    """The candidates a specifier accepts, with pre-releases allowed and with the default rule."""
    specifier = cls(spec)
    return (frozenset(v for v in CANDIDATES if specifier.contains(v, prereleases=True)),
            frozenset(v for v in CANDIDATES if specifier.contains(v)))


SAME = [  # (one spelling, another): pip accepts exactly the same versions
    ("==2.2", "==2.2.0"), ("==2.2.0.0", "==2.2"), ("!=2.0", "!=2"), (">=2.0", ">=2.0.0"), ("<=1.4", "<=1.4.0"),
    ("<2.0", "<2.0.0"), (">2", ">2.0.0"), ("==1.0+CU121", "==1.0.0+cu121"), ("==0!2.0", "==2"),
    ("==1.0alpha1", "==1.0a1"), ("<=1.0-1", "<=1.0.post1"), (">=1.0.0.dev0", ">=1.dev0"), ("== 2.2", "==2.2"),
]
APART = [  # (one spelling, another): some pip accepts different versions, so they never share a hash
    ("~=1.4", "~=1.4.0"),          # >=1.4,==1.* (allows 1.9) vs >=1.4.0,==1.4.*
    ("==2.2", "==2.2.*"),          # exact vs prefix
    ("==2.2.*", "==2.2.0.*"),      # the prefix is as long as written
    ("==2.2", "===2.2"),           # arbitrary equality compares strings: 2.2.0 is not "2.2"
    ("~=1.04.1", "~=1.4.1"),       # pip 23 builds the ~= prefix from the text: ==1.04.* matches no 1.4.x
    ("==2.02.*", "==2.2.*"),       # pip 23 compares a prefix as text
    ("==2.2", "==2.2+cu121"),      # a local label in the specifier must match
    ("==1!2.0", "==2.0"),          # epochs
    (">=2.0", ">2.0"),
    ("<2.0", "<2.0rc1"),           # <V excludes V's pre-releases unless V is one
    ("==2.0", "==2.0.post1"),
]


@pytest.mark.parametrize("a,b", SAME)
def test_pep440_spellings_pip_treats_alike_hash_alike(a: str, b: str) -> None:
    assert _accepts(a, PipSpecifier) == _accepts(b, PipSpecifier)
    assert _accepts(a, Specifier) == _accepts(b, Specifier)
    assert spec_hash(_pip(f"pkg{a}")) == spec_hash(_pip(f"pkg{b}"))


@pytest.mark.parametrize("a,b", APART)
def test_pep440_spellings_that_may_install_differently_hash_apart(a: str, b: str) -> None:
    assert _accepts(a, PipSpecifier) != _accepts(b, PipSpecifier) or _accepts(a, Specifier) != _accepts(b, Specifier)
    assert spec_hash(_pip(f"pkg{a}")) != spec_hash(_pip(f"pkg{b}"))


def test_padded_specifiers_are_written_without_trailing_zeros() -> None:
    form = canonical_form(_pip("numpy>=2.0.0,<3.0", "torch==2.2.0+CU121", "six~=1.16.0", "idna==3.0.*"))
    assert form["python"]["conda_dependencies"]["pip_packages"] == [
        "idna==3.0.*", "numpy<3,>=2", "six~=1.16.0", "torch==2.2+cu121"]


# ----------------------------------------------------------------------------- pip index URLs


def test_index_url_with_and_without_trailing_slash_is_one_index_for_pip() -> None:
    from pip._internal.models.search_scope import SearchScope

    def pages(url: str) -> list[str]:
        return SearchScope.create(find_links=[], index_urls=[url], no_index=False).get_index_urls_locations("NumPy")

    assert pages("https://pypi.example.com/simple") == pages("https://pypi.example.com/simple/")
    assert pages("https://pypi.example.com/simple//") != pages("https://pypi.example.com/simple/")
    for option in ("--index-url", "--extra-index-url", "-i"):
        if option == "-i":
            plain, slashed = "-i https://pypi.example.com/simple", "-i https://pypi.example.com/simple/"
        else:
            plain, slashed = f"{option} https://pypi.example.com/simple", f"{option}=https://pypi.example.com/simple/"
        assert spec_hash(_pip("numpy", options=(plain,))) == spec_hash(_pip("numpy", options=(slashed,)))
    doubled = _pip("numpy", options=("--index-url https://pypi.example.com/simple//",))
    assert spec_hash(doubled) != spec_hash(_pip("numpy", options=("--index-url https://pypi.example.com/simple/",)))


def test_find_links_keeps_its_trailing_slash() -> None:
    """A find-links page's relative links resolve against its own URL, so the slash matters."""
    from pip._internal.index.collector import IndexContent, parse_links

    def wheel_urls(page: str) -> list[str]:
        content = IndexContent(b'<a href="pkg-1.0-py3-none-any.whl">pkg</a>', "text/html", "utf-8", page)
        return [link.url for link in parse_links(content)]

    assert wheel_urls("https://example.com/wheels") != wheel_urls("https://example.com/wheels/")
    plain = _pip("pkg", options=("--find-links https://example.com/wheels",))
    slashed = _pip("pkg", options=("--find-links https://example.com/wheels/",))
    assert spec_hash(plain) != spec_hash(slashed)


# --------------------------------------------------------------------------------- conda MatchSpec

CONDA_VERSIONS = ["0.5", "1", "1.0", "1.2", "1.2.0", "1.2.3", "1.2.5", "1.5", "2", "2.5", "3", "3.10", "3.11", "3.12", "4"]
MD5 = "d41d8cd98f00b204e9800998ecf8427e"
CONDA_SAME = [
    ("python >=3.10,<3.12", "python <3.12,>=3.10"),
    ("python>=3.10 , <3.12", "python[version='<3.12,>=3.10']"),
    ("numpy[version='>=1.2',build=py*]", "numpy[build=py*,version='>=1.2']"),
    ("numpy >=1.2 py*", "numpy[build='py*', version='>=1.2']"),
    ("numpy >=1,<2|>=3", "numpy >=3|<2,>=1"),
    ("numpy >=1,(<2|>=3)", "numpy (>=3|<2),>=1"),
    ("numpy 1.2.*,!=1.2.3", "numpy !=1.2.3,1.2.*"),
    ("numpy >=1.2,>=1.2", "numpy >=1.2"),
    (f"numpy[md5={MD5}, build_number=3]", f"numpy[build_number=3,md5={MD5}]"),
    ("numpy[channel=conda-forge]", "conda-forge::numpy"),
    ("conda-forge::numpy <2,>=1 py*", "conda-forge::numpy[build=py*,version='>=1,<2']"),
]
CONDA_APART = [
    ("numpy", "defaults::numpy"), ("conda-forge::numpy", "defaults::numpy"),
    ("numpy 1.26 py311_0", "numpy 1.26 py312_0"), ("numpy >=1.2 py*", "numpy >=1.2"),
    ("numpy=1.2", "numpy==1.2"), ("numpy 1.2.*", "numpy 1.2.0.*"),
    ("numpy >=2,<3|<1", "numpy >=2,(<3|<1)"),
]


def _conda_accepts(entry: str) -> frozenset[str] | None:
    from rattler import MatchSpec, Version, VersionSpec

    version = MatchSpec(entry).version
    return None if version is None else frozenset(v for v in CONDA_VERSIONS if VersionSpec(version).matches(Version(v)))


@pytest.mark.parametrize("a,b", CONDA_SAME)
def test_conda_clause_and_key_order_does_not_change_the_hash(a: str, b: str) -> None:
    assert _conda_accepts(a) == _conda_accepts(b)
    assert canonical_conda_package(a) == canonical_conda_package(b)
    assert _conda_accepts(canonical_conda_package(a)) == _conda_accepts(a)  # the normal form matches alike
    assert spec_hash(_conda(a)) == spec_hash(_conda(b))


@pytest.mark.parametrize("a,b", CONDA_APART)
def test_conda_channel_build_and_grouping_stay_apart(a: str, b: str) -> None:
    assert spec_hash(_conda(a)) != spec_hash(_conda(b))


def test_conda_grouping_that_changes_meaning_is_kept() -> None:
    assert _conda_accepts("numpy >=2,<3|<1") != _conda_accepts("numpy >=2,(<3|<1)")
    assert canonical_conda_package("numpy >=1,(<2|>=3)") == "numpy (<2|>=3),>=1"


# ------------------------------------------------------------------ what must never be merged


@pytest.mark.parametrize("a,b", [
    ('pkg==1; python_version < "3.12"', 'pkg==1; python_version <= "3.12"'),
    ('pkg==1; python_version > "3.8"', 'pkg==1; python_version >= "3.8"'),
    ('pkg==1; sys_platform == "linux"', 'pkg==1; sys_platform != "linux"'),
    ("pkg @ https://example.com/pkg-1.0.tar.gz", "pkg @ https://example.com/pkg-1.1.tar.gz"),
    ("git+https://github.com/a/b.git@v1#egg=b", "git+https://github.com/a/b.git@v2#egg=b"),
    ("git+https://github.com/a/b.git@v1#egg=b", "git+https://github.com/a/b.git@v1#egg=b&subdirectory=x"),
    ("pkg==1 --hash=sha256:aaaa", "pkg==1 --hash=sha256:AAAA"),
])
def test_pip_requirements_that_install_differently_hash_apart(a: str, b: str) -> None:
    assert spec_hash(_pip(a)) != spec_hash(_pip(b))


@pytest.mark.parametrize("options", [("--pre",), ("--no-binary :all:",), ("--no-binary numpy",), ("--only-binary :all:",),
                                     ("--prefer-binary",)])
def test_pip_options_that_change_what_installs_change_the_hash(options: tuple[str, ...]) -> None:
    hashes = {spec_hash(_pip("numpy>=1", options=options)), spec_hash(_pip("numpy>=1"))}
    assert len(hashes) == 2
    assert spec_hash(_pip("numpy>=1", options=("--no-binary :all:",))) != \
        spec_hash(_pip("numpy>=1", options=("--no-binary numpy",)))


def test_constraint_file_contents_are_content(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("-c constraints.txt\nrequests\n")
    hashes = set()
    for constraint in ("requests<3\n", "requests<2.32\n", "requests<2.32.0\n"):
        (tmp_path / "constraints.txt").write_text(constraint)
        hashes.add(spec_hash(load_definition(tmp_path / "requirements.txt")))
    assert len(hashes) == 2  # <2.32 and <2.32.0 are one constraint; <3 is another


@pytest.mark.parametrize("a,b", [
    ('FROM ubuntu:22.04\nRUN echo "a  b"\n', 'FROM ubuntu:22.04\nRUN echo "a b"\n'),
    ("FROM ubuntu:22.04\nRUN echo 'a  b'\n", "FROM ubuntu:22.04\nRUN echo 'a b'\n"),
    ('FROM ubuntu:22.04\nENV X="a  b"\n', 'FROM ubuntu:22.04\nENV X="a b"\n'),
    ("ARG BASE=ubuntu:22.04\nFROM $BASE\n", "ARG BASE=ubuntu:24.04\nFROM $BASE\n"),
    ("ARG V=1\nFROM ubuntu:22.04\nARG V\n", "ARG V=2\nFROM ubuntu:22.04\nARG V\n"),
])
def test_dockerfile_text_inside_quotes_and_arg_defaults_are_content(a: str, b: str) -> None:
    assert spec_hash(_dockerfile(a)) != spec_hash(_dockerfile(b))


def test_base_reference_reads_arg_defaults_before_from() -> None:
    assert base_reference(_dockerfile("ARG BASE=ubuntu:22.04\nFROM $BASE\n")) == "docker.io/library/ubuntu:22.04"
    assert base_reference(_dockerfile('ARG REG=mcr.microsoft.com TAG="1.0"\nFROM --platform=linux/amd64 '
                                      '${REG}/azureml/base:${TAG} AS build\nFROM scratch\n')) == \
        "mcr.microsoft.com/azureml/base:1.0"
    assert base_reference(_dockerfile("ARG BASE\nFROM $BASE\n")) == "$BASE"  # unresolved: as written
    assert base_reference(_dockerfile("FROM scratch\nCOPY x /\n")) == "scratch"
    assert base_reference(Definition()) is None


# ------------------------------------------------------------------- base image registry address


def _registry_defn(image: str | None, address: str | None, **extra: str) -> Definition:
    return Definition(docker=DockerSection(base_image=image, base_image_registry=RegistryCredentials(address, **extra)))


def test_the_address_is_where_a_base_image_without_a_registry_comes_from() -> None:
    mine = _registry_defn("team/base:1.0", "MyRegistry.azurecr.io", username="bot", password="hunter2")
    assert base_reference(mine) == "myregistry.azurecr.io/team/base:1.0"
    written_out = _registry_defn("myregistry.azurecr.io/team/base:1.0", None)
    other = _registry_defn("team/base:1.0", "otherregistry.azurecr.io")
    hub = _registry_defn("team/base:1.0", None)
    assert spec_hash(mine) == spec_hash(written_out)  # the same image from the same place
    assert len({spec_hash(mine), spec_hash(other), spec_hash(hub)}) == 3
    assert spec_hash(mine) == spec_hash(_registry_defn("team/base:1.0", "myregistry.azurecr.io", username="x"))
    assert "hunter2" not in str(canonical_form(mine)) and "bot" not in str(canonical_form(mine))
    assert explain(canonical_form(mine), canonical_form(other)) == [
        "base image registry: myregistry.azurecr.io → otherregistry.azurecr.io (for team/base:1.0)"]
    assert stage_chain(mine, "cpu", "root")[0].key != stage_chain(other, "cpu", "root")[0].key


def test_a_base_image_that_names_its_registry_is_taken_as_written() -> None:
    same_host = _registry_defn("myregistry.azurecr.io/team/base:1.0", "myregistry.azurecr.io")
    assert spec_hash(same_host) == spec_hash(_registry_defn("myregistry.azurecr.io/team/base:1.0", None))
    elsewhere = _registry_defn("mcr.microsoft.com/azureml/base:1", "myregistry.azurecr.io")
    assert base_reference(elsewhere) == "mcr.microsoft.com/azureml/base:1"
    assert base_reference(_registry_defn("localhost:5000/base:1", "myregistry.azurecr.io")) == "localhost:5000/base:1"
    assert base_reference(_registry_defn("ubuntu:22.04", "docker.io")) == "docker.io/library/ubuntu:22.04"


def test_a_dockerfile_is_never_rewritten_by_the_address() -> None:
    dockerfile = "FROM team/base:1.0\nRUN true\n"
    with_address = Definition(docker=DockerSection(base_dockerfile=dockerfile,
                                                   base_image_registry=RegistryCredentials("myregistry.azurecr.io")))
    assert base_reference(with_address) == "docker.io/team/base:1.0"
    assert spec_hash(with_address) == spec_hash(_dockerfile(dockerfile))


def test_a_variant_base_image_comes_from_the_address_too() -> None:
    def defn(address: str | None) -> Definition:
        out = _registry_defn("team/base:1.0", address)
        out.variants = {"gpu": VariantOverride(base_image="team/base-gpu:1.0")}
        return out

    gpu = for_variant(defn("myregistry.azurecr.io"), "gpu")
    assert base_reference(gpu) == "myregistry.azurecr.io/team/base-gpu:1.0"
    assert canonical_form(defn("myregistry.azurecr.io"))["variants"]["gpu"]["base_image"] == \
        "myregistry.azurecr.io/team/base-gpu:1.0"
    assert spec_hash(defn("myregistry.azurecr.io")) != spec_hash(defn("otherregistry.azurecr.io"))
    assert spec_hash(gpu) != spec_hash(for_variant(defn("otherregistry.azurecr.io"), "gpu"))


@pytest.mark.parametrize("address", ["https://myregistry.azurecr.io", "myregistry.azurecr.io/team", "my registry"])
def test_an_address_that_is_not_a_registry_host_is_an_error(address: str) -> None:
    from envcache.errors import DefinitionError

    with pytest.raises(DefinitionError, match="docker.base_image_registry.address: invalid registry address"):
        definition_from_dict({"docker": {"base_image": "team/base:1.0", "base_image_registry": {"address": address}}})


def test_azure_directory_reads_and_writes_the_address(tmp_path: Path) -> None:
    import json

    defn = definition_from_dict({"docker": {"base_image": "team/base:1.0", "base_image_registry": {
        "address": "myregistry.azurecr.io", "username": "bot", "password": "hunter2"}}})
    write_azure_dir(defn, tmp_path / "az")
    data = json.loads((tmp_path / "az" / "azureml_environment.json").read_text())
    assert data["docker"]["baseImage"] == "team/base:1.0"
    assert data["docker"]["baseImageRegistry"]["address"] == "myregistry.azurecr.io"
    back = load_definition(tmp_path / "az")
    assert back == defn and base_reference(back) == "myregistry.azurecr.io/team/base:1.0"
    data["docker"]["baseImageRegistry"]["address"] = "otherregistry.azurecr.io"
    (tmp_path / "az" / "azureml_environment.json").write_text(json.dumps(data))
    assert spec_hash(load_definition(tmp_path / "az")) != spec_hash(defn)
