"""A failed build, as ``envcache ensure`` shows it: the failing step's own error lines (pip's, a
Dockerfile step's) once, at the end, under a one-line verdict — never the generated script,
never the build helper's URL or token."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.engine

PIP_ERRORS = ["ERROR: Could not find a version that satisfies the requirement no-such-package-envcache==1.0 "
              "(from versions: none)",
              "ERROR: No matching distribution found for no-such-package-envcache==1.0"]
#: What must never reach the user: the pip stage's generated script, the engine's echo of it,
#: and the helper's loopback URL with its token.
LEAKS = re.compile(r"set -e; export PATH|/bin/sh -c|PIP_BREAK_SYSTEM_PACKAGES|http://127\.0\.0\.1:\d+/[0-9a-f]{32}")


@pytest.fixture
def building_daemon(daemon_process, dockerd, tmp_path: Path):
    config = tmp_path / "envcache.toml"
    config.write_text(f'[build]\nengine = "docker"\ndocker_host = "{dockerd.host}"\ncompression = "gzip"\n')
    return daemon_process(tmp_path / "data", 0, config)


def ensure(url: str, path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envcache.cli", "ensure", str(path), "--variant", "cpu", "--url", url,
                           *flags], capture_output=True, text=True, timeout=600)


def test_a_pip_failure_ends_with_pips_error_lines_once(building_daemon, python_base_docker, tmp_path: Path) -> None:
    env_file = tmp_path / "env.yml"
    env_file.write_text(yaml.safe_dump({
        "docker": {"base_image": python_base_docker["cpu"]},
        "python": {"conda_dependencies": {"pip_packages": ["no-such-package-envcache==1.0"],
                                          "pip_options": ["--no-index"]}}}))
    streamed = ensure(building_daemon.url, env_file)
    assert streamed.returncode == 1 and streamed.stdout == ""
    lines = [line for line in streamed.stderr.splitlines() if line.removeprefix("  |").strip()]
    # The log streams as it happens; its last lines are pip's errors, then the verdict, once.
    assert [line.removeprefix("  | ") for line in lines[-3:-1]] == PIP_ERRORS, lines[-12:]
    # A new key resolves first, in a throw-away container of the base (the lock's RUN step comes after).
    assert re.fullmatch(r"envcache: error: build [0-9a-f]{32}: build failed in step pip: the step exited with "
                        r"status 1", lines[-1]), lines[-1]
    assert sum("build failed in step pip" in line for line in lines) == 1
    for error in PIP_ERRORS:
        assert sum(error in line for line in lines) == 1
    assert "stage pip: resolving" in streamed.stderr
    assert not LEAKS.search(streamed.stderr), LEAKS.search(streamed.stderr)

    # Without the stream (CI scripts): the verdict, then pip's lines — last, once.
    quiet = ensure(building_daemon.url, env_file, "--quiet")
    lines = quiet.stderr.splitlines()
    assert quiet.returncode == 1 and lines[0].startswith("envcache: error: build ") and len(lines) == 3, lines
    assert [line.strip() for line in lines[1:]] == PIP_ERRORS
    assert not LEAKS.search(quiet.stderr)


def test_a_failing_dockerfile_step_shows_its_own_output(building_daemon, busybox_image, tmp_path: Path) -> None:
    env_file = tmp_path / "env.yml"
    env_file.write_text(yaml.safe_dump({"docker": {"base_dockerfile": (
        f"FROM {busybox_image}\nRUN echo preparing && echo 'cannot find /data/model.bin' >&2 && exit 3\n")}}))
    quiet = ensure(building_daemon.url, env_file, "-q")
    lines = quiet.stderr.splitlines()
    assert quiet.returncode == 1
    assert lines[0].endswith("build failed in step base: a RUN step returned a non-zero code: 3"), lines
    # The step's stdout and stderr reach the engine's log as two streams: their order may differ.
    assert sorted(line.strip() for line in lines[1:]) == ["cannot find /data/model.bin", "preparing"]
    assert "The command" not in quiet.stderr and "Removing intermediate container" not in quiet.stderr
