"""Per-variant views, stage chain keys, and the individual canonical rules of DESIGN.md's table."""

from __future__ import annotations

import pytest

from envcache.errors import DefinitionError
from envcache.definition import (
    CANONICAL_VERSION, CondaDependencies, Definition, DockerSection, PythonSection, SparkPackage, SparkSection,
    VariantOverride, canonical_form, definition_from_dict, for_variant, spec_hash,
)
from envcache.builder.stages import stage_chain
from envcache.definition.canonical import canonical_image_ref, canonical_pip_packages
from envcache.definition.dockerfile import normalise_dockerfile


def _defn(pip: list[str] | None = None, conda: list[str] | None = None, **kw: object) -> Definition:
    return Definition(
        python=PythonSection(conda_dependencies=CondaDependencies(
            channels=["conda-forge"], conda_packages=conda if conda is not None else ["python=3.11", "numpy=1.26"],
            pip_packages=pip if pip is not None else ["requests==2.31.0"])),
        docker=DockerSection(base_image="ubuntu:22.04"), **kw)


def test_stage_chain_order_and_sharing() -> None:
    a = _defn(pip=["requests==2.31.0"])
    b = _defn(pip=["requests==2.32.0"])
    chain_a, chain_b = stage_chain(a, "cpu", "root"), stage_chain(b, "cpu", "root")
    assert [s.kind for s in chain_a] == ["base", "conda", "pip", "config"]
    assert [s.key for s in chain_a[:2]] == [s.key for s in chain_b[:2]]  # shared base + conda
    assert chain_a[2].key != chain_b[2].key and chain_a[3].key != chain_b[3].key  # chained on the parent
    assert all(len(s.key) == 32 and int(s.key, 16) >= 0 for s in chain_a)
    assert chain_a[0].content["canonical_version"] == CANONICAL_VERSION
    assert stage_chain(a, "cpu", "other-root")[0].key != chain_a[0].key


def test_stage_chain_omits_empty_and_user_managed_stages() -> None:
    defn = _defn(pip=[], conda=[])
    assert [s.kind for s in stage_chain(defn, "cpu", "r")] == ["base", "config"]
    defn = _defn(spark=SparkSection(packages=[SparkPackage("com.a", "core", "1.0")]))
    defn.python.user_managed_dependencies = True
    chain = stage_chain(defn, "gpu", "r")
    assert [s.kind for s in chain] == ["base", "spark", "config"]
    assert chain[-1].content["user_managed_dependencies"] is True


def test_for_variant_applies_overrides() -> None:
    defn = _defn(pip=["torch==2.2.0", "requests==2.31.0"], variants={"gpu": VariantOverride(
        base_image="nvidia/cuda:12.2.0-runtime-ubuntu22.04", channels=["nvidia"], conda_packages=["cudatoolkit=12"],
        pip_packages=["Torch==2.2.0+cu121"], pip_options=["--extra-index-url https://download.pytorch.org/whl/cu121"])})
    gpu, cpu = for_variant(defn, "gpu"), for_variant(defn, "cpu")
    assert gpu.variants == {} and cpu.variants == {}
    assert gpu.docker.base_image == "nvidia/cuda:12.2.0-runtime-ubuntu22.04" and cpu.docker.base_image == "ubuntu:22.04"
    assert gpu.python.conda_dependencies.channels == ["conda-forge", "nvidia"]
    assert canonical_pip_packages(gpu.python.conda_dependencies.pip_packages) == ["requests==2.31", "torch==2.2+cu121"]
    assert "cudatoolkit=12" in gpu.python.conda_dependencies.conda_packages
    assert spec_hash(gpu) != spec_hash(cpu)
    assert defn.variants  # the original is untouched
    with pytest.raises(DefinitionError, match="unknown variant 'tpu'"):
        for_variant(defn, "tpu")


def test_defaults_are_written_out() -> None:
    form = canonical_form(Definition())
    assert form == {
        "canonical_version": CANONICAL_VERSION,
        "docker": {"base_image": None, "base_dockerfile": None},
        "python": {"user_managed_dependencies": False, "interpreter_path": "python",
                   "conda_dependencies": {"channels": [], "conda_packages": [], "pip_options": [], "pip_packages": []}},
        "spark": {"repositories": [], "packages": [], "precache_packages": True},
        "environment_variables": {},
        "variants": {},
    }


def test_runtime_settings_and_credentials_are_not_content() -> None:
    plain = _defn()
    tuned = _defn()
    tuned.docker.shm_size, tuned.docker.arguments, tuned.docker.enabled = "8g", ["--ipc=host"], True
    tuned.docker.shared_volumes = False
    tuned.docker.base_image_registry.username = "bot"
    tuned.docker.base_image_registry.password = "hunter2"
    assert spec_hash(plain) == spec_hash(tuned)
    assert "hunter2" not in repr(tuned)


@pytest.mark.parametrize("ref,expected", [
    ("ubuntu", "docker.io/library/ubuntu:latest"),
    ("ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
    ("library/ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
    ("index.docker.io/library/ubuntu", "docker.io/library/ubuntu:latest"),
    ("nvidia/cuda:12.2.0-base-ubuntu22.04", "docker.io/nvidia/cuda:12.2.0-base-ubuntu22.04"),
    ("localhost:5000/team/img", "localhost:5000/team/img:latest"),
    ("MCR.Microsoft.com/azureml/base:1", "mcr.microsoft.com/azureml/base:1"),
    ("busybox@sha256:" + "A" * 64, "docker.io/library/busybox@sha256:" + "a" * 64),
])
def test_image_reference_normalisation(ref: str, expected: str) -> None:
    assert canonical_image_ref(ref) == expected


def test_dockerfile_normalisation_rules() -> None:
    text = ("# syntax=docker/dockerfile:1\r\n# escape=\\\r\n\r\n# a comment\r\nfrom   ubuntu:22.04\r\n"
            "run apt-get update && \\\r\n    # comment inside a continuation\r\n    apt-get install -y  curl   \r\n"
            "ENV GREETING=\"hello    world\"\r\nRUN <<EOF\r\n  echo  keep   me\r\nEOF\r\n")
    assert normalise_dockerfile(text) == [
        "# syntax=docker/dockerfile:1", "# escape=\\", "FROM ubuntu:22.04",
        "RUN apt-get update && apt-get install -y curl", 'ENV GREETING="hello    world"',
        "RUN <<EOF\n  echo  keep   me\nEOF"]
    assert normalise_dockerfile("# escape=`\nFROM x\nRUN a `\n  b\n") == ["# escape=`", "FROM x", "RUN a b"]


def test_pip_rules() -> None:
    assert canonical_pip_packages([
        "Zope.Interface == 5.0.0", "zope-interface==5.0.0",  # duplicate spelled two ways
        "requests[Socks,security]>=2.0; python_version<'3.12'", "requests[tls]>=2.0 ; python_version < \"3.12\"",
        "torch==2.02", "  git+https://tok:x@github.com/a/b.git#egg=b  ",
    ]) == [
        "git+https://github.com/a/b.git#egg=b",
        'requests[security,socks,tls]>=2; python_version < "3.12"',
        "torch==2.2",
        "zope-interface==5",
    ]


def test_variant_overrides_are_content_of_the_whole_definition() -> None:
    base = definition_from_dict({"docker": {"base_image": "ubuntu:22.04"}})
    gpu = definition_from_dict({"docker": {"base_image": "ubuntu:22.04"},
                                "variants": {"gpu": {"base_image": "nvidia/cuda:12.2.0-base-ubuntu22.04"}}})
    empty = definition_from_dict({"docker": {"base_image": "ubuntu:22.04"}, "variants": {"gpu": {}}})
    assert spec_hash(base) != spec_hash(gpu)
    assert spec_hash(base) == spec_hash(empty)  # an empty override changes nothing
    assert spec_hash(for_variant(gpu, "cpu")) == spec_hash(base)


def test_credentials_in_channel_and_repository_urls_are_not_hashed() -> None:
    with_token = definition_from_dict({
        "python": {"conda_dependencies": {"channels": ["https://bot:t0ken@conda.example.com/main/"]}},
        "spark": {"repositories": ["https://u:pw@maven.example.com/repo"]}})
    plain = definition_from_dict({
        "python": {"conda_dependencies": {"channels": ["https://conda.example.com/main"]}},
        "spark": {"repositories": ["https://maven.example.com/repo"]}})
    assert spec_hash(with_token) == spec_hash(plain)
    for text in (repr(with_token), str(canonical_form(with_token))):
        assert "t0ken" not in text and ":pw@" not in text
    assert with_token.python.conda_dependencies.channels == ["https://bot:t0ken@conda.example.com/main/"]


def test_azure_inline_conda_dependencies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from envcache.definition import load_definition

    (tmp_path / "azureml_environment.json").write_text(json.dumps({
        "name": "runconfig-style",
        "python": {"userManagedDependencies": False, "interpreterPath": "python",
                   "condaDependencies": {"name": "x", "channels": ["defaults"],
                                         "dependencies": ["python=3.6.2", {"pip": ["azureml-defaults"]}]}},
        "docker": {"baseImage": "mcr.microsoft.com/azureml/base:intelmpi2018.3-ubuntu16.04"}}))
    defn = load_definition(tmp_path)
    assert defn.python.conda_dependencies.conda_packages == ["python=3.6.2"]
    assert defn.python.conda_dependencies.pip_packages == ["azureml-defaults"]


def test_dockerfile_heredoc_markers_inside_quotes_are_text() -> None:
    steps = normalise_dockerfile('FROM x\nRUN echo "a <<b"   c\nRUN   echo done\n')
    assert steps == ["FROM x", 'RUN echo "a <<b" c', "RUN echo done"]
    two = normalise_dockerfile("FROM x\nCOPY <<one <<two /dst/\n1  1\none\n2  2\ntwo\nRUN  true\n")
    assert two == ["FROM x", "COPY <<one <<two /dst/\n1  1\none\n2  2\ntwo", "RUN true"]


def test_environment_variable_names_are_never_mistaken_for_fields() -> None:
    defn = definition_from_dict({"environment_variables": {"base_image": "Not An Image", "channels": "a b"}})
    assert defn.environment_variables == {"base_image": "Not An Image", "channels": "a b"}
