"""The hit path for build tools that cannot afford a Python start: one ``curl`` against
``/api/v1/resolve`` — the definition's own files in, the bare image reference out, the exit status
from the HTTP status (README, "The fast hit path")."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import yaml

from envcache.service.config import Config
from tests.test_service_cli import seed_hit

CURL = shutil.which("curl") or "curl"


async def curl(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(CURL, "-sS", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


@pytest.fixture
async def offline_daemon(make_daemon):
    """No default variant base images: definitions without a base resolve offline."""
    return await make_daemon(Config(variants={}))


async def test_one_curl_resolves_a_file(offline_daemon, tmp_path: Path) -> None:
    env_file = tmp_path / "env.yml"
    env_file.write_text(yaml.safe_dump({"environment_variables": {"OMP_NUM_THREADS": "4"}}))
    image = await seed_hit(offline_daemon, env_file)
    resolve = f"{offline_daemon}/api/v1/resolve"
    code, out = await curl("-f", "-H", "Accept: text/plain", "--data-binary", f"@{env_file}",
                           f"{resolve}?path=env.yml&variant=cpu")
    assert (code, out) == (0, f"{image}\n")
    # A miss is a 404, so curl -f exits 22 and prints nothing on stdout: `|| envcache ensure` works.
    code, out = await curl("-f", "-H", "Accept: text/plain", "--data-binary", f"@{env_file}",
                           f"{resolve}?path=env.yml&variant=gpu")
    assert (code, out) == (22, "")
    code, out = await curl("-H", "Accept: text/plain", "--data-binary", f"@{env_file}",
                           f"{resolve}?path=env.yml&variant=gpu")
    assert (code, out) == (0, "miss: no cached image for this definition (gpu)\n")
    # Without Accept: text/plain, the same request answers the API's JSON.
    code, out = await curl("-f", "--data-binary", f"@{env_file}", f"{resolve}?path=env.yml&variant=cpu")
    assert code == 0 and json.loads(out)["image"]["image"] == image
    # A bad file is a 400 naming the file and line (curl --fail-with-body shows it).
    (tmp_path / "bad.yml").write_text("docker:\n  base_image: [\n")
    code, out = await curl("--fail-with-body", "-H", "Accept: text/plain", "--data-binary", f"@{tmp_path / 'bad.yml'}",
                           f"{resolve}?path=bad.yml&variant=cpu")
    assert code == 22 and "bad.yml: line 3" in json.loads(out)["error"]["message"]


async def test_several_files_as_a_form(offline_daemon, tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("-r base.txt\nsix==1.16.0\n")
    (tmp_path / "base.txt").write_text("requests==2.32.3\n")
    image = await seed_hit(offline_daemon, tmp_path / "requirements.txt")
    code, out = await curl("-f", "-H", "Accept: text/plain", "-F", f"requirements.txt=@{tmp_path / 'requirements.txt'}",
                           "-F", f"base.txt=@{tmp_path / 'base.txt'}", f"{offline_daemon}/api/v1/resolve?variant=cpu")
    assert (code, out) == (0, f"{image}\n")
    # An include that was not sent is an error, never a read of the daemon's own files.
    code, out = await curl("--fail-with-body", "-F", f"requirements.txt=@{tmp_path / 'requirements.txt'}",
                           f"{offline_daemon}/api/v1/resolve?variant=cpu")
    assert code == 22 and "base.txt" in json.loads(out)["error"]["message"]
