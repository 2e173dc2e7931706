"""Private wheels on a real daemon (no engine needed): upload through the CLI and the facade, the
PEP 503/691 index read by real pip, removal rules and gc; registered environments by name from
the CLI, and variants through register/download. Wheels are real, built by the test."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import oras.client
import pytest
import yaml

from envcache import Client, CondaDependencies, Environment, Workspace
from envcache.errors import Conflict, InvalidInput
from envcache.definition import for_variant, spec_hash
from envcache.oci import WHEEL_ARTIFACT, WHEEL_REPOSITORY
from envcache.service.requests import load_files
from envcache.wire import DefinitionFiles
from tests.fixtures.daemon import DaemonURL
from tests.fixtures.upstream import make_image, make_layer
from tests.fixtures.wheels import TinyWheel
from tests.test_service_cli import cli

JSON_V1 = "application/vnd.pypi.simple.v1+json"


async def _add(daemon: str, wheel: TinyWheel) -> str:
    code, out, err = await cli(daemon, "wheels", "add", str(wheel.path))
    assert code == 0, err
    return out.strip()


async def test_a_wheel_is_uploaded_once_and_its_requirement_pins_its_digest(
        daemon: DaemonURL, tiny_wheels: dict[str, TinyWheel], tmp_path: Path, monkeypatch) -> None:
    wheel = tiny_wheels["tinypkg"]
    code, out, err = await cli(daemon, "wheels", "add", str(wheel.path))
    assert code == 0 and "envcache: uploaded tinypkg-1.0-py3-none-any.whl" in err, err
    url = f"{daemon}/api/v1/wheels/files/{wheel.sha256}/{wheel.path.name}"
    assert out.strip() == f"tinypkg @ {url}#sha256={wheel.sha256}"
    code, again, err = await cli(daemon, "wheels", "add", str(wheel.path))
    assert code == 0 and again == out and "already uploaded" in err
    code, out, _ = await cli(daemon, "wheels", "list", "--json")
    listed = json.loads(out)
    assert [(w["filename"], w["name"], w["version"], w["tags"], w["requires_python"], w["size"]) for w in listed] == [
        (wheel.path.name, "tinypkg", "1.0", ["py3-none-any"], ">=3.8", wheel.path.stat().st_size)]
    for ref in (wheel.path.name, f"sha256:{wheel.sha256}", wheel.sha256):
        code, shown, _ = await cli(daemon, "wheels", "show", ref)
        assert code == 0 and f"sha256:{wheel.sha256}" in shown and "pinned by nothing" in shown
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200 and await resp.read() == wheel.path.read_bytes()
    # The wheel is an OCI artifact too: any OCI client fetches it, under its own file name.
    monkeypatch.chdir(tmp_path)
    client = oras.client.OrasClient(hostname=daemon.host, insecure=True)
    files = await asyncio.to_thread(client.pull, target=f"{daemon.host}/{WHEEL_REPOSITORY}:{wheel.sha256}",
                                    outdir=str(tmp_path / "pulled"))
    assert [Path(f).name for f in files] == [wheel.path.name]
    assert (tmp_path / "pulled" / wheel.path.name).read_bytes() == wheel.path.read_bytes()
    manifest = json.loads((await daemon.store.get_manifest(WHEEL_REPOSITORY, wheel.sha256)).body)
    assert manifest["artifactType"] == WHEEL_ARTIFACT and manifest["layers"][0]["digest"] == f"sha256:{wheel.sha256}"


async def test_what_is_not_a_wheel_is_refused_and_nothing_is_kept(
        daemon: DaemonURL, tiny_wheels: dict[str, TinyWheel], tmp_path: Path) -> None:
    wheel = tiny_wheels["tinypkg"]
    await _add(daemon, wheel)
    blobs_before = {b.digest for b in await daemon.store.blobs.all()}
    # Other bytes under a file name already taken (as on PyPI, a file name names one file) …
    changed = tmp_path / "rebuilt" / wheel.path.name
    changed.parent.mkdir()
    shutil.copy(wheel.path, changed)
    with zipfile.ZipFile(changed, "a") as archive:
        archive.writestr("tinypkg/extra.py", "X = 1\n")
    # … and the same bytes under another name.
    renamed = tmp_path / "tinypkg-1.0-py2.py3-none-any.whl"
    shutil.copy(wheel.path, renamed)
    junk = tmp_path / "junk-1.0-py3-none-any.whl"
    junk.write_bytes(b"\x00" * 4096)
    mislabelled = tmp_path / "tinyother-1.0-py3-none-any.whl"
    shutil.copy(wheel.path, mislabelled)
    azure_style = tmp_path / "my-custom.whl"
    shutil.copy(wheel.path, azure_style)
    cases = [(changed, 1, "tinypkg-1.0-py3-none-any.whl (sha256:"), (renamed, 1, "is already uploaded"),
             (junk, 2, "not a readable zip archive"), (mislabelled, 2, "METADATA says tinypkg 1.0"),
             (azure_style, 2, "is not a wheel file name"), (tmp_path / "missing.whl", 2, "no such wheel file")]
    for path, status, needle in cases:
        code, out, err = await cli(daemon, "wheels", "add", str(path))
        assert (code, out) == (status, "") and needle in err and "Traceback" not in err, (path, err)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{daemon}/api/v1/wheels", data=b"x") as resp:
            body = await resp.json()
            assert resp.status == 400 and "filename" in body["error"]["message"]
        async with http.post(f"{daemon}/api/v1/wheels", params={"filename": changed.name},
                             data=changed.read_bytes()) as resp:
            assert resp.status == 409 and (await resp.json())["error"]["status"] == 409
    assert {b.digest for b in await daemon.store.blobs.all()} == blobs_before
    assert not [p for p in daemon.store.files.tmp.iterdir() if p.name.startswith("wheel-")]
    assert [w.filename for w in await daemon.store.wheels.all()] == [wheel.path.name]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append(dict(attrs))


async def test_the_simple_index_serves_pip_in_html_and_json(
        daemon: DaemonURL, tiny_wheels: dict[str, TinyWheel], tmp_path: Path) -> None:
    for wheel in tiny_wheels.values():
        await _add(daemon, wheel)
    index = f"{daemon}/api/v1/wheels/simple/"
    # Real pip, as a build's pip would use it: the latest version, a pinned one, another project.
    for spec, expected in (("tinypkg", "tinypkg2"), ("tinypkg==1.0", "tinypkg"), ("tinyother", "tinyother")):
        out = tmp_path / spec
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pip", "download", "--isolated", "--no-deps", "--no-cache-dir", "--index-url",
            index, "--dest", str(out), spec, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        log = (await proc.communicate())[0].decode()
        assert proc.returncode == 0, log
        assert [p.read_bytes() for p in out.iterdir()] == [tiny_wheels[expected].path.read_bytes()]
    async with aiohttp.ClientSession() as http:
        async with http.get(index) as resp:  # no Accept header: PEP 503 HTML
            assert resp.headers["Content-Type"].startswith("text/html")
            parser = _Links()
            parser.feed(await resp.text())
            assert [link["href"] for link in parser.links] == ["tinyother/", "tinypkg/"]
        async with http.get(index + "tinypkg/", headers={"Accept": "application/vnd.pypi.simple.v1+html"}) as resp:
            assert resp.headers["Content-Type"].startswith("application/vnd.pypi.simple.v1+html")
            parser = _Links()
            parser.feed(await resp.text())
            wheel = tiny_wheels["tinypkg"]
            assert parser.links[0] == {
                "href": f"../../files/{wheel.sha256}/{wheel.path.name}#sha256={wheel.sha256}",
                "data-requires-python": ">=3.8"}
        async with http.get(index + "tinypkg/", headers={"Accept": f"{JSON_V1}, text/html;q=0.1"}) as resp:
            assert resp.headers["Content-Type"] == JSON_V1 and resp.headers["Vary"] == "Accept"
            page = await resp.json(content_type=None)
        assert page["meta"] == {"api-version": "1.1"} and page["versions"] == ["1.0", "2.0"]
        assert [(f["filename"], f["hashes"]["sha256"], f["size"]) for f in page["files"]] == [
            (w.path.name, w.sha256, w.path.stat().st_size) for w in (tiny_wheels["tinypkg"], tiny_wheels["tinypkg2"])]
        async with http.get(index + "TinyPkg/", allow_redirects=False) as resp:  # PEP 503: the normalised URL
            assert resp.status == 301 and resp.headers["Location"] == "/api/v1/wheels/simple/tinypkg/"
        async with http.get(index + "nosuch/") as resp:
            assert resp.status == 404 and "no wheels of project" in (await resp.json())["error"]["message"]
        async with http.get(index, headers={"Accept": "application/xml"}) as resp:
            assert resp.status == 406 and (await resp.json())["error"]["status"] == 406


def _definition(*pip: str, base: str = "busybox:1.36", **variants: list[str]) -> dict[str, Any]:
    definition: dict[str, Any] = {"docker": {"base_image": base},
                                  "python": {"conda_dependencies": {"pip_packages": list(pip)}}}
    if variants:
        definition["variants"] = {name: {"pip_packages": entries} for name, entries in variants.items()}
    return definition


async def _gc(daemon: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{daemon}/api/v1/gc", json={"grace_seconds": 0}) as resp:
            assert resp.status == 200
            return await resp.json()


async def test_rm_refuses_while_an_environment_uses_a_wheel_and_gc_keeps_what_is_pinned(
        daemon: DaemonURL, tiny_wheels: dict[str, TinyWheel], tmp_path: Path) -> None:
    pkg, other = tiny_wheels["tinypkg"], tiny_wheels["tinyother"]
    await _add(daemon, pkg)
    await _add(daemon, other)
    # Pinned through another daemon's URL: what counts is the digest, not the host.
    pinned = f"tinypkg @ https://elsewhere.example/{pkg.path.name}#sha256={pkg.sha256}"
    (tmp_path / "v1.yml").write_text(yaml.safe_dump(_definition("six", gpu=[pinned])))
    (tmp_path / "v2.yml").write_text(yaml.safe_dump(_definition("six")))
    assert (await cli(daemon, "env", "register", "trainer", str(tmp_path / "v1.yml")))[0] == 0
    code, out, err = await cli(daemon, "wheels", "rm", pkg.path.name)
    assert (code, out) == (1, "") and "pinned by registered environment(s) trainer:1" in err, err
    code, out, _ = await cli(daemon, "wheels", "show", pkg.sha256)
    assert "registered environment (latest): trainer:1" in out
    # Once the latest version no longer pins it, it can go; version 1 still builds, so the bytes stay.
    assert (await cli(daemon, "env", "register", "trainer", str(tmp_path / "v2.yml")))[0] == 0
    code, out, err = await cli(daemon, "wheels", "rm", pkg.path.name)
    assert code == 0 and "removed tinypkg-1.0-py3-none-any.whl" in out and "older version: trainer:1" in out, err
    code, out, err = await cli(daemon, "wheels", "rm", other.path.name)
    assert code == 0 and "stay" not in out, err
    report = await _gc(daemon)
    assert f"{WHEEL_REPOSITORY}:{pkg.sha256}" not in report["tags_deleted"]
    assert await daemon.store.has_blob(f"sha256:{pkg.sha256}")            # pinned by trainer:1: kept
    assert not await daemon.store.has_blob(f"sha256:{other.sha256}")      # pinned by nothing: swept
    assert [w.filename for w in await daemon.store.wheels.all()] == []
    async with aiohttp.ClientSession() as http:  # unlisted: the index no longer offers it
        async with http.get(f"{daemon}/api/v1/wheels/simple/tinypkg/") as resp:
            assert resp.status == 404
    code, _, err = await cli(daemon, "wheels", "rm", pkg.path.name)
    assert code == 3 and "no wheel" in err


async def test_azure_add_private_pip_wheel_with_a_wheel_file_name(
        daemon: DaemonURL, tiny_wheels: dict[str, TinyWheel], tmp_path: Path, monkeypatch) -> None:
    """The how-to's snippet, with a real wheel's file name: Azure takes ``my-custom.whl``, but
    pip installs only files named as the wheel spec says, so envcache refuses any other name."""
    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile(tiny_wheels["tinypkg"].path) as source, \
            zipfile.ZipFile("my_custom-1.0-py3-none-any.whl", "w") as target:
        for item in source.infolist():  # the tiny wheel, as project my-custom
            data = source.read(item)
            if item.filename.endswith("METADATA"):
                data = data.replace(b"Name: tinypkg", b"Name: my-custom")
            target.writestr(item.filename.replace("tinypkg-1.0.dist-info", "my_custom-1.0.dist-info"), data)
    await asyncio.to_thread(_run_snippet, Workspace(url=daemon))  # the facade blocks; the daemon runs here


def _run_snippet(ws: Workspace) -> None:
    # --- the snippet ---
    whl_url = Environment.add_private_pip_wheel(workspace=ws, file_path="my_custom-1.0-py3-none-any.whl")
    myenv = Environment(name="myenv")
    conda_dep = CondaDependencies()
    conda_dep.add_pip_package(whl_url)
    myenv.python.conda_dependencies = conda_dep
    # -------------------
    digest = hashlib.sha256(Path("my_custom-1.0-py3-none-any.whl").read_bytes()).hexdigest()
    assert whl_url.startswith("my-custom @ http://") and whl_url.endswith(f"#sha256={digest}")
    assert myenv.register(workspace=ws).version == "1"
    assert Client(ws.url).wheel(digest)["used_by"]["environments"] == ["myenv:1"]
    with pytest.raises(Conflict, match="already exists"):
        Environment.add_private_pip_wheel(ws, "my_custom-1.0-py3-none-any.whl")
    assert Environment.add_private_pip_wheel(ws, "my_custom-1.0-py3-none-any.whl", exist_ok=True) == whl_url
    shutil.copy("my_custom-1.0-py3-none-any.whl", "my-custom.whl")
    with pytest.raises(InvalidInput, match="'my-custom.whl' is not a wheel file name"):
        Environment.add_private_pip_wheel(ws, "my-custom.whl")


async def test_registered_environments_by_name_from_the_cli(daemon: DaemonURL, tmp_path: Path,
                                                            monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    await make_image(daemon.store, "base/tiny", "1", [make_layer({"hello": b"hi"})])  # resolvable offline
    Path("env.yml").write_text(yaml.safe_dump(_definition("six", base=f"{daemon.host}/base/tiny:1")))
    assert (await cli(daemon, "env", "register", "demo", "env.yml"))[0] == 0
    code, out, err = await cli(daemon, "resolve", "demo", "--variant", "cpu")
    assert (code, out) == (3, "") and "demo: no cached image (cpu); run `envcache ensure demo --variant cpu --url " in err
    code, out, err = await cli(daemon, "resolve", "demo:1", "--variant", "cpu", "--json")
    assert code == 3 and json.loads(out)["status"] == "miss"
    code, _, err = await cli(daemon, "resolve", "demo:7", "--variant", "cpu")
    assert code == 3 and "demo:7: no such file, and no version 7 of environment 'demo'" in err
    code, _, err = await cli(daemon, "ensure", "nosuch", "--variant", "cpu")
    assert code == 3 and "nosuch: no such file, and no environment 'nosuch'" in err
    code, _, err = await cli(daemon, "resolve", "not/a name")
    assert code == 2 and "not/a name: file not found" in err
    # A path that exists wins over a registered name: this file is read (and is no definition).
    Path("demo").write_text("not a definition")
    code, _, err = await cli(daemon, "resolve", "demo")
    assert code == 2 and "demo: cannot tell the format from the name" in err
    code, _, err = await cli(daemon, "warm")
    assert code == 2 and "give definition paths, --registered, or both" in err


async def test_warm_registered_with_nothing_registered_is_nothing_to_do(daemon: DaemonURL) -> None:
    code, out, err = await cli(daemon, "warm", "--registered")
    assert code == 0 and "nothing to warm" in out, err


async def test_register_and_download_keep_variants(daemon: DaemonURL, tmp_path: Path) -> None:
    source = tmp_path / "env.yml"
    source.write_text(yaml.safe_dump(_definition("torch==2.2.0", gpu=["torch==2.2.0+cu121"])))
    assert (await cli(daemon, "env", "register", "torchy", str(source)))[0] == 0
    for name in ("torchy", "envcache-datascience"):  # the curated one has variants too
        out_dir = tmp_path / name
        code, out, err = await cli(daemon, "env", "download", name, str(out_dir))
        assert code == 0 and (out_dir / "envcache_variants.yml").is_file(), err
    for variant in ("cpu", "gpu"):
        hashes = [await _hash("--variant", variant, str(path)) for path in (source, tmp_path / "torchy")]
        assert hashes[0] == hashes[1], variant
    code, out, _ = await cli(daemon, "env", "show", "torchy", "--json")
    assert json.loads(out)["spec_hash"] == await _hash(str(tmp_path / "torchy"))
    # ensure/resolve send an Azure directory as its files: the variants file goes along.
    document = DefinitionFiles.from_path(tmp_path / "torchy")
    assert document is not None and "torchy/envcache_variants.yml" in document.files
    gpu = spec_hash(for_variant(load_files(document.to_json(), ""), "gpu"))
    assert gpu == await _hash("--variant", "gpu", str(source))


async def _hash(*args: str) -> str:
    """``envcache hash`` (offline: it takes no daemon URL)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "envcache.cli", "hash", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().split()[0]
