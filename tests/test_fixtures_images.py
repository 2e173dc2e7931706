"""Proof that the test images are real, runnable and consistent across engines."""

from __future__ import annotations

import json
import tarfile

from tests.fixtures.bases import Rootfs, build_busybox_rootfs, load_into_buildah, load_into_dockerd
from tests.fixtures.engines import Buildah, Dockerd, skopeo
from tests.fixtures.oci_images import OciImage, push_oci_image


def test_busybox_rootfs_is_cached_and_complete(busybox_rootfs: Rootfs) -> None:
    again = build_busybox_rootfs()
    assert again == busybox_rootfs  # same cached files, same digest
    with tarfile.open(busybox_rootfs.tar) as tar:
        names = set(tar.getnames())
        sh = tar.getmember("bin/sh")
    assert {"bin/busybox", "etc/passwd", "etc/group", "tmp"} <= names
    assert sh.issym() and sh.linkname == "/bin/busybox"
    assert (busybox_rootfs.dir / "etc" / "passwd").read_text().startswith("root:x:0:0:")


def test_busybox_image_runs_in_dockerd(dockerd: Dockerd, busybox_image: str) -> None:
    out = dockerd.docker("run", "--rm", "--network", "none", busybox_image, "echo", "hi from busybox")
    assert out.stdout.strip() == "hi from busybox"


def test_oci_layout_inspects_with_skopeo(busybox_oci_layout: OciImage) -> None:
    raw = json.loads(skopeo("inspect", "--raw", busybox_oci_layout.ref).stdout)
    assert [layer["digest"] for layer in raw["layers"]] == [l.digest for l in busybox_oci_layout.layers]
    cfg = json.loads(skopeo("inspect", "--config", busybox_oci_layout.ref).stdout)
    assert cfg["rootfs"]["diff_ids"] == list(busybox_oci_layout.diff_ids)
    assert len(busybox_oci_layout.layers) == 3


def test_oci_layout_runs_in_buildah(buildah: Buildah, busybox_oci_layout: OciImage) -> None:
    name = load_into_buildah(buildah, busybox_oci_layout, "envcache-test/busybox-oci")
    ctr = buildah.buildah("from", name).stdout.strip()
    try:
        out = buildah.buildah("run", ctr, "--", "/usr/local/bin/hello").stdout
        assert out.strip() == "hello from envcache"
    finally:
        buildah.buildah("rm", ctr)


def test_oci_layout_loads_into_dockerd_with_same_diff_ids(dockerd: Dockerd, busybox_oci_layout: OciImage) -> None:
    name = load_into_dockerd(dockerd, busybox_oci_layout, "envcache-test/busybox-oci:latest")
    layers = json.loads(dockerd.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", name).stdout)
    assert layers == list(busybox_oci_layout.diff_ids)
    out = dockerd.docker("run", "--rm", "--network", "none", name, "cat", "/etc/envcache-test/release")
    assert out.stdout == "envcache busybox test image\n"


def test_busybox_variants_push_to_reference_registry_and_pull(
    dockerd: Dockerd, reference_registry: str, busybox_variants: dict[str, OciImage]
) -> None:
    host = reference_registry.removeprefix("http://")
    for variant, image in busybox_variants.items():
        assert push_oci_image(image, f"{host}/envcache-test/busybox:{variant}") == image.manifest_digest
    cpu, gpu = busybox_variants["cpu"], busybox_variants["gpu"]
    assert gpu.diff_ids[:-1] == cpu.diff_ids and len(gpu.layers) == len(cpu.layers) + 1
    dockerd.docker("pull", "--quiet", f"{host}/envcache-test/busybox:gpu")
    out = dockerd.docker("run", "--rm", "--network", "none", f"{host}/envcache-test/busybox:gpu",
                         "sh", "-c", "echo $CUDA_VERSION; cat /usr/local/cuda/version.json").stdout
    version, marker = out.split("\n", 1)
    assert json.loads(marker)["cuda"]["version"] == version == "11.3.1"


def test_python_base_has_python_pip_and_cas_in_dockerd(dockerd: Dockerd, python_base_docker: dict[str, str]) -> None:
    # one container per variant: with vfs every `docker run` copies the whole rootfs
    script = """
set -e
python3 -c "import pip, ssl, venv, sys; ssl.create_default_context(cafile='/etc/ssl/certs/ca-certificates.crt'); print('python', sys.version_info[0])"
python3 -m pip install --no-index --dry-run pip 2>&1
test -e /usr/local/cuda/version.json && echo cuda-marker || echo no-cuda-marker
"""
    cpu = dockerd.docker("run", "--rm", "--network", "none", python_base_docker["cpu"], "sh", "-c", script).stdout
    assert "python 3" in cpu
    # no PEP 668 marker: a plain `pip install` is allowed, as in the Azure ML bases
    assert "Requirement already satisfied: pip" in cpu and "externally-managed" not in cpu
    assert cpu.strip().endswith("no-cuda-marker")
    gpu = dockerd.docker("run", "--rm", "--network", "none", python_base_docker["gpu"],
                         "sh", "-c", "echo $CUDA_VERSION; cat /usr/local/cuda/version.json").stdout
    version, marker = gpu.split("\n", 1)
    assert json.loads(marker)["cuda"]["version"] == version == "11.3.1"


def test_python_base_cpu_and_gpu_share_the_base_layer(dockerd: Dockerd, python_base_docker: dict[str, str]) -> None:
    def layers(name: str) -> list[str]:
        return json.loads(dockerd.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", name).stdout)

    cpu, gpu = layers(python_base_docker["cpu"]), layers(python_base_docker["gpu"])
    assert len(cpu) == 1 and len(gpu) == 2 and gpu[0] == cpu[0]


def test_python_base_venv_works_in_buildah(buildah: Buildah, python_base_buildah: dict[str, str]) -> None:
    ctr = buildah.buildah("from", python_base_buildah["cpu"]).stdout.strip()
    try:
        out = buildah.buildah(
            "run", "--network", "none", ctr, "--", "sh", "-c",
            "python3 -m venv /opt/v && /opt/v/bin/python -m pip --version",
        ).stdout
        assert out.startswith("pip ") and "/opt/v/" in out
    finally:
        buildah.buildah("rm", ctr)
