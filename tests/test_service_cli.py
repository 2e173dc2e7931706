"""The client-side CLI verbs as a user runs them: the real ``envcache`` process against a daemon."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiohttp
import pytest
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


@pytest.fixture
async def offline_daemon(make_daemon):
    """A daemon with no default variant base images: definitions without a base resolve offline."""
    from envcache.service.config import Config

    return await make_daemon(Config(variants={}))


async def seed_hit(daemon, path: Path) -> str:
    """File an image for ``path`` (cpu) the way a finished build does: registry tag + images row."""
    from envcache import definition as spec
    from envcache.wire import DefinitionFiles
    from tests.fixtures.daemon import push_image

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{daemon}/api/v1/resolve", json={
                "document": DefinitionFiles.from_path(path).to_json(), "variant": "cpu"}) as resp:
            miss = await resp.json()
            assert resp.status == 404, miss
        digest, _ = await push_image(http, daemon, "envcache/env", f"{miss['key']}-cpu")
    canonical = spec.canonical_bytes(spec.for_variant(spec.load_definition(path), "cpu"))
    now = time.time()
    daemon.store.metadata.db["images"].insert({
        "key": miss["key"], "variant": "cpu", "spec_hash": miss["spec_hash"], "canonical": canonical,
        "repository": "envcache/env", "tag": f"{miss['key']}-cpu", "manifest_digest": digest, "size": 1,
        "created": now, "last_used": now, "lock": "{}", "base_digest": "none", "recipe_version": "1"})
    return f"{daemon.removeprefix('http://')}/envcache/env:{miss['key']}-cpu"


# What a cache hit must not import in the CLI process: the definition parsers and aiohttp stay
# in the daemon, ``serve``'s asyncio is not needed for one request, http.client is all the HTTP a
# hit needs (urllib.request's openers would only add start-up time), typing is for type checkers
# (a sixth of the hit's time), and shutil only sizes --help (argparse imports it for that).
HEAVY = ("yaml", "packaging", "pip_requirements_parser", "aiohttp", "asyncio", "envcache.definition",
         "urllib.request", "typing", "shutil")


async def test_resolve_and_ensure_hit_from_raw_files_without_importing_parsers(offline_daemon, tmp_path: Path) -> None:
    daemon = offline_daemon
    from tests.test_client_files import write_tree

    paths = write_tree(tmp_path)
    for label in ("yaml", "conda", "requirements", "azure-dir"):
        image = await seed_hit(daemon, paths[label])
        # -S: without site-packages' start-up hooks (an editable install's finder, this machine's
        # .pth files import typing and shutil themselves), so only what envcache imports counts.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-S", "-X", "importtime", "-m", "envcache.cli", "resolve", str(paths[label]), "--variant",
            "cpu", "--url", daemon, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        out, err = await proc.communicate()
        assert proc.returncode == 0 and out.decode().strip() == image, (label, err.decode()[-2000:])
        imported = {line.rsplit("|", 1)[-1].strip() for line in err.decode().splitlines() if line.startswith("import time:")}
        assert not {m for m in imported if m.split(".")[0] in HEAVY or m.startswith(HEAVY)}, label
        code, out, err = await cli(daemon, "ensure", str(paths[label]), "--variant", "cpu")
        assert code == 0 and out.strip() == image and "envcache: hit in" in err, (label, err)
    code, out, _ = await cli(daemon, "resolve", str(paths["json"]), "--variant", "cpu")
    assert code == 3 and out == ""


async def test_a_bad_file_exits_2_with_the_daemons_message_naming_file_and_line(daemon, tmp_path: Path) -> None:
    from envcache import definition as spec
    from envcache.errors import EnvcacheError

    bad = tmp_path / "env.yml"
    bad.write_text("docker:\n  base_image: busybox\npython:\n  conda_dependencies:\n    pip_packages: ['six ==']\n")
    try:
        spec.load_definition(bad)
    except EnvcacheError as exc:
        expected = exc.message
    assert "line 5" in expected
    for verb in ("resolve", "ensure"):
        code, out, err = await cli(daemon, verb, str(bad))
        assert code == 2 and out == "" and err.strip() == f"envcache: error: {expected}", err
    # A relative path is named as the user typed it.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "envcache.cli", "resolve", "env.yml", "--url", daemon, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2 and err.decode().startswith("envcache: error: env.yml: line 5"), err


def test_each_verb_loads_only_the_module_that_registers_it() -> None:
    import argparse

    from envcache import cli

    def verbs(parser: argparse.ArgumentParser) -> set[str]:
        return {name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                for name in action.choices}

    assert verbs(cli.build_parser()) == set(cli._COMMAND_OWNERS)
    for verb in cli._COMMAND_OWNERS:
        assert verb in verbs(cli.build_parser(verb))
    assert verbs(cli.build_parser("no-such-verb")) == set(cli._COMMAND_OWNERS)
