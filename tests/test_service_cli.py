"""The client-side CLI verbs as a user runs them: the real ``envcache`` process against a daemon."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import yaml


async def cli(url: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "envcache.cli", *args, "--url", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_env_register_list_show_download_and_scaffold(daemon, tmp_path: Path) -> None:
    path = tmp_path / "env.yml"
    path.write_text(yaml.safe_dump({"docker": {"base_image": "busybox:1.36"}, "environment_variables": {"A": "1"}}))
    code, out, err = await cli(daemon, "env", "register", "demo", str(path))
    assert code == 0 and "registered demo version 1" in out, err
    code, out, _ = await cli(daemon, "env", "register", "demo", str(path))
    assert code == 0 and "unchanged" in out and "version 1" in out
    code, out, err = await cli(daemon, "env", "register", "envcache-demo", str(path))
    assert code == 2 and "reserved" in err
    code, out, _ = await cli(daemon, "env", "list", "--json")
    names = {e["name"]: e for e in json.loads(out)}
    assert code == 0 and names["demo"]["version"] == 1 and names["envcache-minimal"]["curated"]
    code, out, _ = await cli(daemon, "env", "show", "demo", "--version", "1")
    assert code == 0 and "A: '1'" in out
    code, _, err = await cli(daemon, "env", "show", "nobody")
    assert code == 3 and "no environment 'nobody'" in err
    out_dir = tmp_path / "azure"
    code, out, err = await cli(daemon, "env", "download", "demo", str(out_dir))
    assert code == 0, err
    assert json.loads((out_dir / "azureml_environment.json").read_text())["name"] == "demo"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "envcache.cli", "env", "scaffold", "fresh",
                                                str(tmp_path / "fresh"), stdout=asyncio.subprocess.PIPE)
    await proc.communicate()
    assert proc.returncode == 0 and (tmp_path / "fresh" / "azureml_environment.json").is_file()
    code, out, err = await cli(daemon, "resolve", str(tmp_path / "missing.yml"))
    assert code == 2 and "missing.yml" in err
