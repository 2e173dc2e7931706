"""Definitions sent as raw files: the daemon loads them to the same definition, key and errors.

The fast hit path (``envcache resolve PATH``) sends a definition's files instead of loading it
locally; these tests hold it to the local loaders: same canonical bytes for every format (the
golden vectors included), same image key from a real daemon, the same message naming file and
line for a bad file, and a refusal for any document that would make the daemon read outside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
import yaml

from envcache import definition as spec
from envcache.wire import DefinitionFiles, check_files
from envcache.errors import EnvcacheError, InvalidInput
from envcache.service.requests import load_files as _load_files
from envcache.service.config import Config

VECTORS = Path(__file__).parent / "vectors"
VECTOR_PATHS = ["minimal.yaml", "full.yaml", "dockerfile.yaml", "user_managed.json", "azure_dir", "environment.yml",
                "conda_export.yml", "requirements/requirements.txt"]


@pytest.fixture
async def daemon(make_daemon):
    """A daemon with no default variant base images: definitions without a base resolve offline."""
    return await make_daemon(Config(variants={}))


def write_tree(root: Path) -> dict[str, Path]:
    """One definition per format (no base image, so a daemon resolves them offline), with includes."""
    (root / "common").mkdir()
    (root / "svc").mkdir()
    (root / "common" / "base.txt").write_text("requests==2.32.3\n-c ../svc/cons.txt  # pins\n")
    (root / "svc" / "cons.txt").write_text("requests<3\n")
    (root / "svc" / "requirements.txt").write_text("--index-url https://pypi.org/simple\n-r ../common/base.txt\n"
                                                   "NumPy >= 1.26\n")
    (root / "env.yml").write_text(yaml.safe_dump({"python": {"conda_dependencies": {
        "channels": ["conda-forge"], "conda_packages": ["python=3.11"], "pip_packages": ["six==1.16.0"]}},
        "environment_variables": {"A": "1"}}))
    (root / "env.json").write_text(json.dumps({"environment_variables": {"B": "2"}}))
    (root / "environment.yml").write_text("channels: [conda-forge]\ndependencies:\n  - python=3.11\n  - pip\n"
                                          "  - pip:\n    - -r svc/requirements.txt\n    - six==1.16.0\n")
    azure = root / "azure"
    spec.write_azure_dir(spec.definition_from_dict({"name": "az", "python": {"conda_dependencies": {
        "conda_packages": ["python=3.10"]}}}), azure)
    (azure / "conda_dependencies.yml").write_text("channels: [conda-forge]\ndependencies:\n  - python=3.10\n"
                                                  "  - pip:\n    - -r ../common/base.txt\n")
    return {"yaml": root / "env.yml", "json": root / "env.json", "requirements": root / "svc" / "requirements.txt",
            "conda": root / "environment.yml", "azure-dir": azure, "azure-json": azure / "azureml_environment.json"}


def canonical(definition: spec.Definition, variant: str = "cpu") -> bytes:
    return spec.canonical_bytes(spec.for_variant(definition, variant))


@pytest.mark.parametrize("relative", VECTOR_PATHS)
def test_golden_vectors_load_from_raw_files_to_the_same_canonical_bytes(relative: str) -> None:
    path = VECTORS / relative
    files = DefinitionFiles.from_path(path)
    assert files is not None, f"{relative} should take the raw-files path"
    loaded = _load_files(files.to_json(), "")
    local = spec.load_definition(path)
    for variant in ("cpu", "gpu"):
        assert canonical(loaded, variant) == canonical(local, variant)
    expected = json.loads((VECTORS / "expected.json").read_text())["spec_hash"][relative]
    assert spec.spec_hash(loaded) == expected


def test_includes_are_followed_across_directories(tmp_path: Path) -> None:
    paths = write_tree(tmp_path)
    files = DefinitionFiles.from_path(paths["conda"])
    assert files is not None and files.path == "environment.yml"
    assert sorted(files.files) == ["common/base.txt", "environment.yml", "svc/cons.txt", "svc/requirements.txt"]
    files = DefinitionFiles.from_path(paths["requirements"])
    assert files is not None and files.path == "svc/requirements.txt" and "common/base.txt" in files.files
    files = DefinitionFiles.from_path(paths["azure-dir"])
    assert files is not None and files.path == "azure"
    assert sorted(files.files) == ["azure/azureml_environment.json", "azure/conda_dependencies.yml",
                                   "common/base.txt", "svc/cons.txt"]
    for path in paths.values():
        files = DefinitionFiles.from_path(path)
        assert files is not None
        assert canonical(_load_files(files.to_json(), "")) == canonical(spec.load_definition(path)), path


def test_unsure_includes_fall_back_to_local_loading(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("six\n")
    cases = {
        "combined.txt": "-rbase.txt\n",                             # pip reads it; we do not guess
        "two-options.txt": "--pre -r base.txt\n",
        "url.txt": "-r https://example.invalid/base.txt\n",
        "absolute.txt": f"-r {tmp_path / 'base.txt'}\n",
        "docker.yml": "docker:\n  base_dockerfile: 'FROM x\n\n    RUN pip install -r base.txt'\n",
        "flow.yml": "dependencies:\n  - pip: [-r base.txt]\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert DefinitionFiles.from_path(tmp_path / name) is None, name
    (tmp_path / "latin1.txt").write_bytes("caf\xe9==1\n".encode("latin-1"))
    assert DefinitionFiles.from_path(tmp_path / "latin1.txt") is None
    assert DefinitionFiles.from_path(tmp_path / "missing.yml") is None
    # A missing include is still a known closure: the daemon reports it exactly as a local load.
    (tmp_path / "dangling.txt").write_text("six\n-r nowhere.txt\n")
    files = DefinitionFiles.from_path(tmp_path / "dangling.txt")
    assert files is not None and list(files.files) == ["dangling.txt"]
    with pytest.raises(EnvcacheError) as local:
        spec.load_definition(tmp_path / "dangling.txt")
    with pytest.raises(InvalidInput) as remote:
        _load_files(files.to_json(), "")
    assert remote.value.message == local.value.message and "line 2" in local.value.message


@pytest.mark.parametrize("document, field", [
    ({"path": "r.txt", "files": {"r.txt": "-r /etc/passwd\n"}}, "r.txt: line 1"),
    ({"path": "r.txt", "files": {"r.txt": "-r ../../etc/passwd\n"}}, "outside the files sent"),
    ({"path": "r.txt", "files": {"r.txt": "-c https://example.invalid/c.txt\n"}}, "r.txt: line 1"),
    ({"path": "e.yml", "files": {"e.yml": "dependencies:\n  - pip:\n    - -r ../x.txt\n"}}, "e.yml: line 3"),
    ({"path": "../r.txt", "files": {"../r.txt": "six\n"}}, "document.path"),
    ({"path": "r.txt", "files": {"/etc/passwd": "six\n"}}, "document.files"),
    ({"path": "r.txt", "files": {}}, "document.files"),
    ({"path": "a", "files": {"a/azureml_environment.json": '{"python": {"condaDependenciesFile": "/etc/passwd"}}'}},
     "condaDependenciesFile"),
    ({"path": "r.txt", "files": {"r.txt": "six\n"}, "sneaky": 1}, "unknown field 'sneaky'"),
    # pip joins continued lines: ``-\`` + ``r /etc/passwd`` is an include too.
    ({"path": "r.txt", "files": {"r.txt": "six\n-\\\nr /etc/passwd\n"}}, "r.txt: line 2"),
    # YAML and JSON escapes spell ``-r`` without the text containing it.
    ({"path": "e.yml", "files": {"e.yml": 'dependencies:\n  - pip:\n    - "\\x2dr /etc/passwd"\n'}}, "/etc/passwd"),
    ({"path": "a", "files": {"a/azureml_environment.json": json.dumps({"python": {"condaDependencies": {
        "dependencies": [{"pip": ["\u002dr ../../x.txt"]}]}}}, ensure_ascii=False).replace("-r", "\\u002dr")}},
     "../../x.txt"),
])
def test_documents_that_reach_outside_their_files_are_refused(document: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_files(document)
    assert field in refused.value.message


async def test_each_format_gets_the_same_key_from_files_and_from_the_document(daemon, tmp_path: Path) -> None:
    paths = write_tree(tmp_path)
    async with aiohttp.ClientSession() as http:
        for label, path in paths.items():
            answers = []
            for subject in ({"definition": spec.definition_to_dict(spec.load_definition(path))},
                            {"document": DefinitionFiles.from_path(path).to_json()}):
                async with http.post(f"{daemon}/api/v1/resolve", json={**subject, "variant": "cpu"}) as resp:
                    body = await resp.json()
                    assert resp.status == 404 and body["status"] == "miss", (label, body)
                    answers.append((body["key"], body["spec_hash"]))
            assert answers[0] == answers[1], label
        # A bad document: a 400 with the same message a local load gives (file and line), and
        # the daemon keeps serving.
        bad = tmp_path / "bad.yml"
        bad.write_text("docker:\n  base_image: busybox\npython:\n  conda_dependencies:\n    pip_pakages: [six]\n")
        with pytest.raises(EnvcacheError) as local:
            spec.load_definition(bad)
        document = DefinitionFiles.from_path(bad).to_json()
        async with http.post(f"{daemon}/api/v1/ensure", json={"document": document}) as resp:
            body = await resp.json()
            assert resp.status == 400 and body["error"]["status"] == 400
            assert body["error"]["message"] == local.value.message
            assert f"{tmp_path}/bad.yml: line 5" in body["error"]["message"] and "pip_pakages" in body["error"]["message"]
        async with http.post(f"{daemon}/api/v1/resolve", json={"document": {"path": "r.txt", "files": {
                "r.txt": "-r /etc/passwd\n"}}}) as resp:
            body = await resp.json()
            assert resp.status == 400 and "include the daemon does not follow" in body["error"]["message"]
        async with http.get(f"{daemon}/api/v1/health") as resp:
            assert resp.status == 200
