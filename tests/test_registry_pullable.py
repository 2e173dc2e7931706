"""What ``ensure`` returns is pullable by every client a user is likely to have (README "Layer
compression"): Debian 12's Docker 20.10 — which cannot unpack zstd layers — pulling into a second,
empty dockerd (not the one that built it) and running the image; skopeo copying it; oras pulling
its layers and its lock. And a daemon whose compression setting changed never answers with an
image stored in the other one.

The daemons run with the default ``[build] compression`` (only the engine is set): the default is
what a user of the Quick start gets.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import oras.client
import pytest

from envcache.service.config import Config
from tests.fixtures.bases import PythonBase, load_into_dockerd
from tests.fixtures.engines import Dockerd
from tests.fixtures.upstream import ensure_and_log
from tests.fixtures.wheel_index import WheelIndex

pytestmark = pytest.mark.engine

BASE = "envcache-test/python-base:cpu"


def _definition(index: WheelIndex, marker: str) -> dict[str, Any]:
    return {"docker": {"base_image": BASE},
            "python": {"conda_dependencies": {"pip_packages": ["envcache-app==1.0"], "pip_options": index.options}},
            "environment_variables": {"MARKER": marker}}


async def _building_daemon(make_daemon, builder: Dockerd, compression: str | None = None, data_dir: Path | None = None):
    config = Config()
    config.build.engine, config.build.docker_host = "docker", builder.host
    if compression is not None:
        config.build.compression = compression
    return await make_daemon(config, data_dir=data_dir)


def _pull_and_run(fresh: Dockerd, image: str) -> str:
    """``docker pull`` into ``fresh`` (which holds nothing) and run the pip-installed package."""
    assert fresh.docker("images", "-q").stdout.strip() == ""
    fresh.docker("pull", image)
    ran = fresh.docker("run", "--rm", "--network", "none", image, "sh", "-c",
                       'python3 -c "import envcache_app; print(envcache_app.__version__)"; echo "$MARKER"')
    return ran.stdout.strip()


async def test_docker_20_10_pulls_into_an_empty_dockerd_and_skopeo_and_oras_pull(
        make_daemon, dockerd: Dockerd, dockerd_factory, python_base: PythonBase, wheel_index: WheelIndex,
        tmp_path: Path, monkeypatch) -> None:
    assert Config().build.compression == "gzip"
    load_into_dockerd(dockerd, python_base.cpu, BASE)
    wheel_index.add("envcache-app", "1.0")
    daemon = await _building_daemon(make_daemon, dockerd)
    answer = await ensure_and_log(daemon, _definition(wheel_index, "pullable"))
    assert answer.get("status") == "built", answer.get("log", answer)
    image, digest = answer["image"]["image"], answer["image"]["digest"]
    manifest = json.loads((await daemon.store.get_manifest("envcache/env", digest)).body)
    assert {layer["mediaType"] for layer in manifest["layers"]} == {"application/vnd.oci.image.layer.v1.tar+gzip"}

    # Docker 20.10 (the test command's, Debian 12's) in a second dockerd that has never seen the image.
    version = dockerd.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    print(f"docker server {version}")
    fresh = dockerd_factory()
    assert (await asyncio.to_thread(_pull_and_run, fresh, image)).splitlines() == ["1.0", "pullable"]
    pulled = json.loads(fresh.docker("image", "inspect", image).stdout)[0]
    assert pulled["Id"] == manifest["config"]["digest"]     # the config the store holds, byte for byte

    # skopeo: a copy to an OCI layout verifies every blob against its digest.
    layout = tmp_path / "layout"
    await asyncio.to_thread(subprocess.run, ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                             f"docker://{image}", f"oci:{layout}:copied"], check=True)
    index = json.loads((layout / "index.json").read_text())
    copied = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    assert [layer["digest"] for layer in copied["layers"]] == [layer["digest"] for layer in manifest["layers"]]

    # oras: the image's blobs, and its lock artifact (the file oras pull writes).
    monkeypatch.chdir(tmp_path)
    host = image.split("/", 1)[0]
    client = oras.client.OrasClient(hostname=host, insecure=True)
    pip_layer = manifest["layers"][-1]          # the config stage adds none: the pip stage's is last
    response = await asyncio.to_thread(client.get_blob, f"{host}/envcache/env", pip_layer["digest"])
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(response.content))) as layer:
        assert any(name.endswith("envcache_app/__init__.py") for name in layer.getnames())
    files = await asyncio.to_thread(client.pull, target=f"{host}/envcache/lock:{answer['image']['tag']}",
                                    outdir=str(tmp_path / "lock"))
    lock = json.loads(Path(files[0]).read_text())
    assert [(e["name"], e["version"]) for e in lock["pip"]] == [("envcache-app", "1.0")]


async def test_a_changed_compression_setting_never_answers_with_the_old_images(
        make_daemon, dockerd: Dockerd, dockerd_factory, python_base: PythonBase, wheel_index: WheelIndex) -> None:
    load_into_dockerd(dockerd, python_base.cpu, BASE)
    wheel_index.add("envcache-app", "1.0")
    definition = _definition(wheel_index, "switched")
    zstd = await _building_daemon(make_daemon, dockerd, "zstd")
    built = await ensure_and_log(zstd, definition)
    assert built.get("status") == "built", built.get("log", built)
    old = json.loads((await zstd.store.get_manifest("envcache/env", built["image"]["digest"])).body)
    assert {layer["mediaType"] for layer in old["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}

    # The same data dir under a daemon with the default (gzip): the image is re-stored, not
    # answered as it was.
    gzip_daemon = await _building_daemon(make_daemon, dockerd, data_dir=zstd.data_dir)
    answer = await ensure_and_log(gzip_daemon, definition)
    assert answer["status"] == "recompressed", answer
    assert "storing its layers so (same image, same lock)" in answer["log"]
    new = json.loads((await gzip_daemon.store.get_manifest("envcache/env", answer["image"]["digest"])).body)
    assert answer["image"]["digest"] != built["image"]["digest"]
    assert new["config"] == old["config"] and answer["image"]["lock"] == built["image"]["lock"]
    assert {layer["mediaType"] for layer in new["layers"]} == {"application/vnd.oci.image.layer.v1.tar+gzip"}
    # The next ensure is a plain hit on the gzip image, and an empty Docker 20.10 pulls and runs it.
    again = await ensure_and_log(gzip_daemon, definition)
    assert again["status"] == "hit" and again["image"]["digest"] == answer["image"]["digest"]
    fresh = dockerd_factory()
    assert (await asyncio.to_thread(_pull_and_run, fresh, answer["image"]["image"])).splitlines() == ["1.0", "switched"]
