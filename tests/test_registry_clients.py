"""Real registry clients against a real daemon: skopeo, the docker CLI (real dockerd), oras.

The clients are blocking subprocesses/libraries while the daemon runs in this test's event
loop, so every client call goes through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import oras.client
import oras.oci

from tests.fixtures.daemon import sha256


def _host(url: str) -> str:
    return url.removeprefix("http://")


async def test_skopeo_copy_oci_layout_round_trip(daemon: str, skopeo, busybox_oci_layout, tmp_path: Path) -> None:
    image = busybox_oci_layout
    assert len(image.layers) >= 3
    target = f"docker://{_host(daemon)}/envcache-test/busybox:latest"
    await asyncio.to_thread(skopeo, "copy", "--dest-tls-verify=false", image.ref, target)

    inspected = json.loads((await asyncio.to_thread(skopeo, "inspect", "--tls-verify=false", target)).stdout)
    assert inspected["Digest"] == image.manifest_digest
    assert inspected["Layers"] == [layer.digest for layer in image.layers]

    out = tmp_path / "back"
    await asyncio.to_thread(skopeo, "copy", "--src-tls-verify=false", target, f"oci:{out}:latest")
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.manifest_digest
    for layer in image.layers:
        back = out / "blobs" / "sha256" / layer.digest.split(":", 1)[1]
        assert back.read_bytes() == image.blob(layer.digest).read_bytes()
    # The registry kept the manifest byte-for-byte.
    manifest = await daemon.store.get_manifest("envcache-test/busybox", "latest")
    assert manifest.body == image.blob(image.manifest_digest).read_bytes()


async def test_docker_push_rmi_pull(daemon: str, dockerd, busybox_image: str) -> None:
    ref = f"{_host(daemon)}/envcache-test/docker-busybox:v1"
    await asyncio.to_thread(dockerd.docker, "tag", busybox_image, ref)
    pushed = await asyncio.to_thread(dockerd.docker, "push", ref)
    digest = (await daemon.store.get_manifest("envcache-test/docker-busybox", "v1")).digest
    assert f"digest: {digest}" in pushed.stdout
    await asyncio.to_thread(dockerd.docker, "rmi", ref)
    gone = await asyncio.to_thread(dockerd.docker, "image", "inspect", ref, check=False)
    assert gone.returncode != 0
    await asyncio.to_thread(dockerd.docker, "pull", ref)
    inspect = json.loads((await asyncio.to_thread(dockerd.docker, "image", "inspect", ref)).stdout)[0]
    assert f"{_host(daemon)}/envcache-test/docker-busybox@{digest}" in inspect["RepoDigests"]
    original = json.loads((await asyncio.to_thread(dockerd.docker, "image", "inspect", busybox_image)).stdout)[0]
    assert inspect["RootFS"]["Layers"] == original["RootFS"]["Layers"]


async def test_oras_artifact_with_artifact_type_and_referrers(daemon: str, tmp_path: Path,
                                                             monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # oras-py wants pushed files under the working directory
    host = _host(daemon)
    client = oras.client.OrasClient(hostname=host, insecure=True)
    Path("model.bin").write_bytes(b"weights" * 1000)
    Path("config.json").write_text("{}")
    artifact_type = "application/vnd.envcache.test.model"
    await asyncio.to_thread(client.push, target=f"{host}/artifacts/model:v1", files=["model.bin"],
                            manifest_config=f"config.json:{artifact_type}")

    out = tmp_path / "pulled"
    files = await asyncio.to_thread(client.pull, target=f"{host}/artifacts/model:v1", outdir=str(out))
    assert [Path(f).name for f in files] == ["model.bin"]
    assert (out / "model.bin").read_bytes() == b"weights" * 1000

    subject = await daemon.store.get_manifest("artifacts/model", "v1")
    Path("sig.txt").write_text("signed")
    await asyncio.to_thread(
        client.push, target=f"{host}/artifacts/model:sig", files=["sig.txt"],
        manifest_config="config.json:application/vnd.envcache.test.signature",
        subject=oras.oci.Subject(mediaType=subject.media_type, digest=subject.digest, size=len(subject.body)),
    )
    sig = await daemon.store.get_manifest("artifacts/model", "sig")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon}/v2/artifacts/model/referrers/{subject.digest}") as resp:
            index = await resp.json(content_type=None)
        assert [(m["digest"], m["artifactType"]) for m in index["manifests"]] == [
            (sig.digest, "application/vnd.envcache.test.signature")]
        async with http.get(f"{daemon}/v2/artifacts/model/referrers/{subject.digest}",
                            params={"artifactType": artifact_type}) as resp:
            assert resp.headers["OCI-Filters-Applied"] == "artifactType"
            assert (await resp.json(content_type=None))["manifests"] == []
    assert sig.digest == sha256(sig.body)
