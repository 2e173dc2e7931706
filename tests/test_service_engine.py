"""The build engine as a new user meets it: detected at start, found again when a build needs one
(dockerd started or buildah installed after the daemon — no restart), and described by the
serve banner, ``envcache status`` and ``/api/v1/health``."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.engine


def envcache(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envcache.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/v1/health", timeout=10) as resp:
        return json.loads(resp.read())["engine"]


def banner(proc) -> str:
    return next(line for line in proc.log.read_text().splitlines() if line.startswith("envcache serving on "))


def test_dockerd_started_after_the_daemon_is_used_without_a_restart(daemon_process, dockerd, busybox_image,
                                                                     tmp_path: Path) -> None:
    later = tmp_path / "later"
    later.mkdir()
    socket = later / "docker.sock"      # where dockerd "will" listen: nothing there yet
    config = tmp_path / "envcache.toml"
    config.write_text(f'[build]\nengine = "docker"\ndocker_host = "unix://{socket}"\ncompression = "gzip"\n')
    proc = daemon_process(tmp_path / "data", 0, config)

    missing = (f"engine: docker at unix://{socket} does not answer (Docker Engine at unix://{socket} does not "
               "answer (no such socket): start dockerd, or point [build] docker_host (or DOCKER_HOST) at its socket)")
    assert banner(proc).endswith(f"; {missing})")
    status = envcache("status", "--url", proc.url)
    assert status.returncode == 0 and status.stdout.splitlines()[1] == missing
    assert health(proc.url)["answers"] is False and "DockerError" not in status.stdout

    # A build now says what is wrong, in words.
    env_file = tmp_path / "env.yml"
    marker = secrets.token_hex(4)
    env_file.write_text(yaml.safe_dump({"docker": {"base_dockerfile": f"FROM {busybox_image}\nRUN echo {marker} > /m\n"}}))
    failed = envcache("ensure", str(env_file), "--variant", "cpu", "--url", proc.url)
    assert failed.returncode == 1 and "no such socket): start dockerd" in failed.stderr.splitlines()[-1]
    assert "DockerError" not in failed.stderr and "Traceback" not in failed.stderr

    # dockerd "starts": its socket appears where the config says.
    socket.symlink_to(dockerd.host.removeprefix("unix://"))
    version = dockerd.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    status = envcache("status", "--url", proc.url)
    assert status.stdout.splitlines()[1] == f"engine: docker {version} at unix://{socket}"
    assert health(proc.url) == {"name": "docker", "answers": True, "version": version, "detail": None,
                                "summary": f"engine: docker {version} at unix://{socket}"}
    built = envcache("ensure", str(env_file), "--variant", "cpu", "--url", proc.url)
    assert built.returncode == 0, built.stderr
    assert f"envcache: building with docker {version}" in built.stderr and built.stdout.strip().endswith("-cpu")


def test_buildah_installed_after_the_daemon_is_found(daemon_process, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The daemon's PATH has no buildah yet, and no Docker socket exists where it looks.
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    proc = daemon_process(tmp_path / "data", 0, None, "--json")
    started = next(json.loads(line) for line in proc.log.read_text().splitlines() if line.startswith('{"serving"'))
    assert started["engine"]["name"] == "none" and started["engine"]["answers"] is False
    assert "install Docker" in started["engine"]["detail"] and started["serving"] == proc.url
    assert health(proc.url)["name"] == "none"

    (bin_dir / "buildah").symlink_to(shutil.which("buildah", path=os.defpath) or "/usr/bin/buildah")
    found = health(proc.url)
    assert found["name"] == "buildah" and found["answers"] is True and found["version"]
