"""What the CLI says in the first hour, through the real ``envcache`` process: help texts, hints
that keep what was asked, messages that point where they should, tables that cut no words."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml

from envcache.cli import build_parser
from tests.fixtures.daemon import push_image


def envcache(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envcache.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


async def aenvcache(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``envcache`` off the event loop, which serves the in-process daemon meanwhile."""
    return await asyncio.to_thread(envcache, *args, cwd=cwd)


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command the parser knows, as argument tuples."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found += commands(sub, (*prefix, name))
    return found


def test_every_help_has_a_description_and_its_exit_statuses() -> None:
    top = envcache("--help").stdout
    assert "``" not in top and "exit status:\n  0  success" in top
    verbs = commands(build_parser())
    assert len(verbs) > 20
    for verb in verbs:
        text = envcache(*verb, "--help").stdout
        usage, _, rest = text.partition("\n\n")
        description = rest.split("\n\n")[0]
        assert usage.startswith(f"usage: envcache {' '.join(verb)}") and len(description.split()) >= 5, (verb, text)
        assert not description.lstrip().startswith(("positional arguments", "options")), (verb, text)
        assert re.search(r"\nexit status:\n  0  \S", text), (verb, text)
        assert "``" not in text, verb
    assert "\n  3  miss: no cached image" in envcache("resolve", "--help").stdout


async def test_a_gpu_miss_suggests_the_gpu_ensure(make_daemon, tmp_path: Path) -> None:
    from envcache.service.config import Config

    daemon = await make_daemon(Config(variants={}))
    env_file = tmp_path / "my env.yml"
    env_file.write_text(yaml.safe_dump({"environment_variables": {"A": "1"}}))
    miss = await aenvcache("resolve", str(env_file), "--variant", "gpu", "--url", daemon)
    assert miss.returncode == 3
    assert miss.stderr.strip().endswith(f"run `envcache ensure '{env_file}' --variant gpu --url {daemon}`"), miss.stderr
    plain = await aenvcache("resolve", "my env.yml", "--format", "yaml", "--url", daemon, cwd=tmp_path)
    assert plain.returncode == 3  # auto: the variant resolves on the daemon, so the hint keeps it out
    assert plain.stderr.strip().endswith(f"run `envcache ensure 'my env.yml' --format yaml --url {daemon}`")


async def test_gc_refusal_names_the_running_daemons_url(daemon_process, tmp_path: Path) -> None:
    proc = daemon_process(tmp_path / "data")
    busy = envcache("gc", "--data", str(proc.data_dir))
    assert busy.returncode == 1 and f"envcache gc --url {proc.url}`" in busy.stderr, busy.stderr
    assert "HOST:PORT" not in busy.stderr


async def test_fsck_after_repair_does_not_suggest_repair_for_what_it_cannot_fix(daemon_process,
                                                                                 tmp_path: Path) -> None:
    from envcache.store import open_store

    proc = daemon_process(tmp_path / "data")
    async with aiohttp.ClientSession() as http:
        await push_image(http, proc.url, "team/app", "v1", layers=(b"a layer nobody else has",))
    proc.stop()
    store = await open_store(proc.data_dir)
    try:
        from tests.fixtures.daemon import sha256

        store.files.path(sha256(b"a layer nobody else has")).unlink()  # a lost blob: no file to repair from
    finally:
        await store.close()
    data = str(proc.data_dir)
    repaired = envcache("fsck", "--repair", "--data", data)
    assert repaired.returncode == 1
    again = envcache("fsck", "--data", data)
    assert again.returncode == 1
    verdict = again.stdout.splitlines()[-1]
    assert "--repair cannot fix" in verdict and "re-push the blob" in verdict
    assert "run `envcache fsck --repair`" not in verdict, verdict


async def test_warm_table_keeps_errors_whole(make_daemon, tmp_path: Path) -> None:
    daemon = await make_daemon()
    bad = tmp_path / "bad.yml"
    long_name = "a-rather-long-package-name-that-makes-the-error-message-run-past-one-hundred-and-twenty-characters"
    bad.write_text(yaml.safe_dump({"python": {"conda_dependencies": {"pip_packages": [f"{long_name}>>1"]}}}))
    warm = await aenvcache("warm", str(bad), "--variants", "cpu", "--url", daemon)
    assert warm.returncode == 1
    error = next(line for line in warm.stderr.splitlines() if line.startswith("warm: ")).split(": failed: ", 1)[1]
    assert len(error) > 120 and error in warm.stdout  # whole, not cut at 120 characters or mid-word
    report = json.loads((await aenvcache("warm", str(bad), "--variants", "cpu", "--url", daemon, "--json")).stdout)
    assert report["results"][0]["error"].startswith(error)


async def test_env_show_uses_the_definition_formats_key_order(make_daemon, tmp_path: Path) -> None:
    daemon = await make_daemon()
    env_file = tmp_path / "env.yml"
    env_file.write_text(yaml.safe_dump({"environment_variables": {"B": "2"}, "docker": {"base_image": "busybox"},
                                        "name": "demo"}))
    assert (await aenvcache("env", "register", "demo", str(env_file), "--url", daemon)).returncode == 0
    orders = []
    for name in ("demo", "envcache-minimal"):
        shown = await aenvcache("env", "show", name, "--url", daemon)
        assert shown.returncode == 0, shown.stderr
        orders.append(list(yaml.safe_load(shown.stdout)))
    assert orders[0] == orders[1]
    assert orders[0][:6] == ["name", "version", "description", "python", "docker", "spark"]
