"""Private wheels in the definition layer: the pinned-wheel canonical rule, what a wheel file
must be, and the variants file beside an Azure ML directory. Offline; the wheels are real
(``pip wheel`` of tiny setuptools projects)."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from envcache.definition import definition_from_dict, definition_to_dict, load_definition, spec_hash, write_azure_dir
from envcache.definition.canonical import canonical_form, canonical_pip_packages, pinned_wheels, wheel_digests
from envcache.definition.variants import for_variant
from envcache.definition.wheel import inspect_wheel, pinned_wheel
from envcache.errors import DefinitionError, InvalidInput
from tests.fixtures.wheels import TinyWheel

HEX = hashlib.sha256(b"a wheel").hexdigest()
FILE = "tinypkg-1.0-py3-none-any.whl"


def hashed(*pip: str) -> str:
    return spec_hash(definition_from_dict({"python": {"conda_dependencies": {"pip_packages": list(pip)}}}))


def test_a_pinned_wheel_hashes_by_file_and_digest_wherever_it_is_served() -> None:
    here = f"tinypkg @ http://127.0.0.1:5050/api/v1/wheels/files/{HEX}/{FILE}#sha256={HEX}"
    same = [
        f"tinypkg @ https://envcache.team.example:5000/api/v1/wheels/files/{HEX}/{FILE}#sha256={HEX}",
        f"TinyPkg @ file:///srv/wheels/{FILE}#sha256={HEX}",
        f"https://mirror.example/simple/tinypkg/{FILE}#sha256={HEX}",   # a bare URL names its project
        f"tinypkg @ https://user:secret@host/{FILE}?signature=abc#sha256={HEX}",  # query and login: location
        f"tinypkg @ {FILE}#sha256={HEX}",                                # the canonical spelling reads back as itself
    ]
    assert canonical_pip_packages([here]) == [f"tinypkg @ {FILE}#sha256={HEX}"]
    assert {hashed(entry) for entry in same} == {hashed(here)}
    assert canonical_pip_packages([here, *same]) == canonical_pip_packages([here])  # one requirement, merged


def test_what_is_not_a_pinned_wheel_keeps_its_url() -> None:
    here = f"tinypkg @ http://127.0.0.1:5050/x/{FILE}#sha256={HEX}"
    apart = {
        "another wheel": f"tinypkg @ http://127.0.0.1:5050/x/{FILE}#sha256={'0' * 64}",
        "another file name": f"tinypkg @ http://127.0.0.1:5050/x/tinypkg-1.0-py3-none-manylinux1_x86_64.whl#sha256={HEX}",
        "upper-case hex (pip compares lower case)": f"tinypkg @ http://127.0.0.1:5050/x/{FILE}#sha256={HEX.upper()}",
        "another hash algorithm": f"tinypkg @ http://127.0.0.1:5050/x/{FILE}#sha512={HEX}",
        "no digest": f"tinypkg @ http://127.0.0.1:5050/x/{FILE}",
        "an extra": f"tinypkg[cli] @ http://127.0.0.1:5050/x/{FILE}#sha256={HEX}",
        "a marker": f"tinypkg @ http://127.0.0.1:5050/x/{FILE}#sha256={HEX} ; sys_platform == 'linux'",
    }
    hashes = {why: hashed(entry) for why, entry in apart.items()}
    assert hashed(here) not in hashes.values() and len(set(hashes.values())) == len(apart), hashes
    for why in ("another hash algorithm", "no digest", "upper-case hex (pip compares lower case)"):
        assert "127.0.0.1:5050" in canonical_pip_packages([apart[why]])[0], why
    # A file name of another project, or a VCS URL, is not this wheel: kept as written.
    assert pinned_wheel(f"http://h/{FILE}#sha256={HEX}", "other") is None
    assert pinned_wheel(f"git+https://h/{FILE}#sha256={HEX}") is None
    assert "other @ http://h/" in canonical_pip_packages([f"other @ http://h/{FILE}#sha256={HEX}"])[0]


def test_pinned_wheels_and_digests_cover_variants_and_stored_documents() -> None:
    gpu = hashlib.sha256(b"gpu wheel").hexdigest()
    defn = definition_from_dict({
        "python": {"conda_dependencies": {"pip_packages": [f"tinypkg @ http://a/{FILE}#sha256={HEX}", "six"]}},
        "variants": {"gpu": {"pip_packages": [f"http://a/tinypkg_cuda-1.0-py3-none-any.whl#sha256={gpu}"]}},
    })
    assert [(w.name, w.digest) for w in pinned_wheels(defn)] == [("tinypkg", f"sha256:{HEX}"),
                                                                  ("tinypkg-cuda", f"sha256:{gpu}")]
    assert wheel_digests(definition_to_dict(defn)) == {f"sha256:{HEX}", f"sha256:{gpu}"}
    assert wheel_digests(canonical_form(for_variant(defn, "cpu"))) == {f"sha256:{HEX}"}
    assert wheel_digests(canonical_form(for_variant(defn, "gpu"))) == {f"sha256:{HEX}", f"sha256:{gpu}"}


def test_a_real_wheel_is_read_from_its_file_name_and_metadata(tiny_wheels: dict[str, TinyWheel]) -> None:
    wheel = tiny_wheels["tinypkg"]
    info = inspect_wheel(wheel.path, wheel.path.name)
    assert (info.name, info.version, info.tags, info.requires_python) == ("tinypkg", "1.0", ("py3-none-any",), ">=3.8")
    assert info.summary == "a tiny package the envcache tests build"


def _rewritten(source: Path, target: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of wheel ``source`` with members replaced (bytes), dropped (None) or added."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            if item.filename not in change:
                new.writestr(item, old.read(item))
        for name, data in change.items():
            if data is not None:
                new.writestr(name, data)
    return target


def test_files_that_are_not_wheels_are_refused_saying_why(tiny_wheels: dict[str, TinyWheel], tmp_path: Path) -> None:
    wheel = tiny_wheels["tinypkg"]
    info = "tinypkg-1.0.dist-info"
    metadata = zipfile.ZipFile(wheel.path).read(f"{info}/METADATA")
    junk = tmp_path / FILE
    junk.write_bytes(b"not a zip at all")
    cases = {
        "not a wheel file name": (wheel.path, "my-custom.whl"),
        "wrong number of parts": (wheel.path, "tinypkg.whl"),
        "not a readable zip archive": (junk, FILE),
        "METADATA says tinypkg 1.0, the file name says other 1.0": (wheel.path, "other-1.0-py3-none-any.whl"),
        "the file name says tinypkg 1.1": (wheel.path, "tinypkg-1.1-py3-none-any.whl"),
        "lacks RECORD": (_rewritten(wheel.path, tmp_path / "a.whl", {f"{info}/RECORD": None}), FILE),
        "exactly one top-level .dist-info": (
            _rewritten(wheel.path, tmp_path / "b.whl", {"extra-1.0.dist-info/METADATA": metadata}), FILE),
        "only 1.x wheels install": (_rewritten(wheel.path, tmp_path / "c.whl", {
            f"{info}/WHEEL": b"Wheel-Version: 2.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}), FILE),
        "invalid METADATA": (_rewritten(wheel.path, tmp_path / "d.whl", {
            f"{info}/METADATA": metadata.replace(b"Requires-Python: >=3.8", b"Requires-Python: >=three")}), FILE),
    }
    for needle, (path, name) in cases.items():
        with pytest.raises(InvalidInput) as caught:
            inspect_wheel(path, name)
        assert needle in str(caught.value), (needle, str(caught.value))


def test_variants_travel_in_a_file_beside_the_azure_files(tmp_path: Path) -> None:
    source = tmp_path / "env.yaml"
    source.write_text(
        "docker: {base_image: 'python:3.11-slim'}\n"
        "python: {conda_dependencies: {pip_packages: [torch==2.2.0]}}\n"
        "variants:\n"
        "  gpu:\n"
        "    base_image: nvidia/cuda:12.2.0-runtime-ubuntu22.04\n"
        "    pip_packages: ['torch==2.2.0+cu121']\n"
        "    pip_options: ['--extra-index-url https://download.pytorch.org/whl/cu121']\n")
    defn = load_definition(source)
    write_azure_dir(defn, tmp_path / "azure")
    assert sorted(p.name for p in (tmp_path / "azure").iterdir()) == [
        "azureml_environment.json", "conda_dependencies.yml", "envcache_variants.yml"]
    back = load_definition(tmp_path / "azure")
    assert back.variants == defn.variants
    for variant in ("cpu", "gpu"):
        assert spec_hash(for_variant(back, variant)) == spec_hash(for_variant(defn, variant))
    # Written again without variants, the stale file goes (or it would come back on load).
    write_azure_dir(for_variant(defn, "cpu"), tmp_path / "azure")
    assert not (tmp_path / "azure" / "envcache_variants.yml").exists()
    # A mistake in the file is reported with its file, line and field, like any definition's.
    shutil.copytree(tmp_path / "azure", tmp_path / "bad")
    (tmp_path / "bad" / "envcache_variants.yml").write_text("gpu:\n  pip_packages:\n    - 'torch>>2'\n")
    with pytest.raises(DefinitionError, match=r"envcache_variants.yml: line 3 \(variants.gpu.pip_packages\[0\]\)"):
        load_definition(tmp_path / "bad")
