"""Real bases that are valid but unusual (issue 9 §6), on both engines: a base whose config has
no ``history`` (valid per the OCI image spec; hand-made and some tool-made images), named by a
short name (buildah files it as ``localhost/NAME:TAG``, Docker as ``docker.io/library/…``), with
only ``python3`` where the definition's interpreter path says ``python``. And a stored base the
engine still holds under another name is found by its id (the config digest), not loaded again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
from pathlib import Path

import pytest

from envcache.service.config import Config
from tests.fixtures.bases import PythonBase, load_into_buildah, load_into_dockerd
from tests.fixtures.oci_images import OciImage, push_oci_image, read_oci_image
from tests.fixtures.upstream import ensure_and_log
from tests.fixtures.wheel_index import WheelIndex

pytestmark = pytest.mark.engine

BASE = "nohistory/python:1"   # a short name: no registry host


def without_history(image: OciImage, layout: Path) -> OciImage:
    """``image`` in a new OCI layout (``layout``) whose config has no ``history`` at all; the
    layer blobs are symlinks to the original's (150 MB not copied)."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for layer in image.layers:
        os.symlink(image.blob(layer.digest), blobs / layer.digest.split(":", 1)[1])
    config = json.loads(image.blob(image.config_digest).read_bytes())
    del config["history"]
    manifest = json.loads(image.blob(image.manifest_digest).read_bytes())
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    def put(data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest[7:]).write_bytes(data)
        return digest, len(data)

    config_digest, config_size = put(json.dumps(config).encode())
    manifest["config"].update(digest=config_digest, size=config_size)
    manifest_digest, manifest_size = put(json.dumps(manifest).encode())
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": manifest["mediaType"], "digest": manifest_digest, "size": manifest_size,
         "annotations": {"org.opencontainers.image.ref.name": "nohistory"}}]}))
    return read_oci_image(layout, "nohistory")


@pytest.mark.parametrize("engine", ["docker", "buildah"])
async def test_history_less_base_by_short_name_with_only_python3(
        engine: str, request: pytest.FixtureRequest, make_daemon, python_base: PythonBase,
        wheel_index: WheelIndex, tmp_path: Path) -> None:
    base = without_history(python_base.cpu, tmp_path / "layout")
    config = Config()
    config.build.engine = engine
    if engine == "docker":
        dockerd = request.getfixturevalue("dockerd")
        load_into_dockerd(dockerd, base, BASE)
        config.build.docker_host = dockerd.host
    else:
        buildah = request.getfixturevalue("buildah")
        load_into_buildah(buildah, base, BASE)     # filed as localhost/nohistory/python:1
        config.build.buildah_root, config.build.buildah_runroot = str(buildah.storage_root), str(buildah.run_root)
        config.build.buildah_storage_driver = buildah.storage_driver
    wheel_index.add("envcache-app", "1.0")
    daemon = await make_daemon(config)
    answer = await ensure_and_log(daemon, {
        "docker": {"base_image": BASE},
        "python": {"interpreter_path": "python",
                   "conda_dependencies": {"pip_packages": ["envcache-app==1.0"], "pip_options": wheel_index.options}},
        "environment_variables": {"QUIRKS": "yes"}})
    assert answer.get("status") == "built", answer.get("log", answer)
    # The base has no `python`: pip ran with python3, and the label says so.
    assert "config: the image has no 'python'; pip ran with 'python3', which the label records" in answer["log"]
    manifest = json.loads((await daemon.store.get_manifest("envcache/env", answer["image"]["digest"])).body)
    image_config = json.loads(daemon.store.files.path(manifest["config"]["digest"]).read_bytes())
    assert image_config["config"]["Labels"]["envcache.interpreter_path"] == "python3"
    assert "QUIRKS=yes" in image_config["config"]["Env"]
    # History padded for the base's layer: one non-empty entry per layer, as engines and clients expect.
    layers = [entry for entry in image_config["history"] if not entry.get("empty_layer")]
    assert len(layers) == len(image_config["rootfs"]["diff_ids"]) == len(manifest["layers"])
    assert [(e["name"], e["version"]) for e in answer["image"]["lock"]["pip"]] == [("envcache-app", "1.0")]


async def test_a_base_the_engine_still_holds_by_id_is_tagged_not_loaded_again(
        make_daemon, dockerd, reference_registry_factory, busybox_oci_layout: OciImage) -> None:
    config = Config()
    config.build.engine, config.build.docker_host = "docker", dockerd.host
    daemon = await make_daemon(config)
    registry = reference_registry_factory()
    base = f"{registry.host}/quirks/base:{secrets.token_hex(4)}"
    await asyncio.to_thread(push_oci_image, busybox_oci_layout, base)

    first = await ensure_and_log(daemon, {"docker": {"base_image": base}, "environment_variables": {"N": "1"}})
    assert first.get("status") == "built", first.get("log", first)
    assert f"base {base}: loaded into docker from envcache's registry" in first["log"]
    # The engine loses every name envcache gave the base (its own and the stage tags) but keeps
    # the image: another name holds it.
    image_id = first["image"]["base_digest"]
    keep = f"envcache-test/keep:{secrets.token_hex(4)}"
    await asyncio.to_thread(dockerd.docker, "tag", image_id, keep)
    names = json.loads((await asyncio.to_thread(dockerd.docker, "image", "inspect", image_id)).stdout)[0]["RepoTags"]
    for name in names:
        if name != keep:
            await asyncio.to_thread(dockerd.docker, "rmi", name)
    try:
        second = await ensure_and_log(daemon, {"docker": {"base_image": base}, "environment_variables": {"N": "2"}})
        assert second.get("status") == "built", second.get("log", second)
        assert "found by id in docker from envcache's registry" in second["log"], second["log"]
        assert "loaded into" not in second["log"]
    finally:
        await asyncio.to_thread(dockerd.docker, "rmi", keep)
