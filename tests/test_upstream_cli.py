"""``envcache upstream list|check``, ``push KEY``, ``pull KEY`` and the upstream config model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from envcache.cli import main
from envcache.errors import InvalidInput
from envcache.store import open_store
from envcache.upstream.config import parse_upstreams
from tests.fixtures.processes import free_port
from tests.fixtures.upstream import make_image, make_layer


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``envcache ARGV`` through the real entry point; stdout and stderr together."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(("raw", "message"), [
    ([{"prefix": "x"}], r"upstreams\[0\]\.url: required"),
    ([{"url": "ftp://h"}], r"upstreams\[0\]\.url: must be http\(s\)"),
    ([{"url": "http://h/path"}], r"upstreams\[0\]\.url: must not have a path"),
    ([{"url": "http://h", "mode": "sync"}], r"upstreams\[0\]\.mode: must be one of pull, push, both"),
    ([{"url": "http://h"}, {"url": "http://h", "usr": "x"}], r"upstreams\[1\]\.usr: unknown field"),
    ([{"url": "http://h", "username": "u"}], r"upstreams\[0\]\.password: required with username"),
    ([{"url": "http://h", "password_env": "ENVCACHE_NO_SUCH_VAR"}], r"password_env: environment variable"),
    ([{"url": "http://h", "ca_file": "/no/such.pem"}], r"upstreams\[0\]\.ca_file: no such file"),
    ([{"url": "http://h", "timeout": 0}], r"upstreams\[0\]\.timeout: must be a positive"),
    ({"url": "http://h"}, r"upstreams: expected a list"),
])
def test_config_errors_name_the_field(raw: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_upstreams(raw)


def test_config_secrets_stay_out_of_descriptions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVCACHE_TEST_PW", "hunter2")
    [up] = parse_upstreams([{"url": "https://reg.example:5000/", "prefix": "team/ml", "mode": "pull",
                             "username": "ci", "password_env": "ENVCACHE_TEST_PW"}])
    assert (up.url, up.repo("env"), up.can_pull, up.can_push, up.password) == \
        ("https://reg.example:5000", "team/ml/env", True, False, "hunter2")
    assert "hunter2" not in repr(up) and "hunter2" not in json.dumps(up.describe())


def _config(tmp_path: Path, data: Path, upstreams: list[dict]) -> Path:
    lines = ["[server]", f'data_dir = "{data}"']
    for up in upstreams:
        lines.append("[[upstreams]]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in up.items())
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "envcache.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_push_pull_list_check_through_the_cli(tmp_path: Path, reference_registry: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data_a, data_b = tmp_path / "a", tmp_path / "b"

    async def seed() -> str:
        store = await open_store(data_a)
        try:
            return await make_image(store, "envcache/env", "cli0key-cpu", [make_layer({"f": b"cli"})])
        finally:
            await store.close()

    digest = asyncio.run(seed())
    down = f"http://127.0.0.1:{free_port()}"
    cfg_a = _config(tmp_path / "ca", data_a, [{"url": reference_registry, "prefix": "clitest"}])
    cfg_b = _config(tmp_path / "cb", data_b, [{"url": down, "timeout": 2},
                                              {"url": reference_registry, "prefix": "clitest", "mode": "pull"}])

    code, out = run_cli(["push", "cli0key", "--variant", "cpu", "--config", str(cfg_a), "--json"], capsys)
    assert code == 0, out
    [row] = json.loads(out)["pushes"]
    assert row["state"] == "done" and row["remote_repository"] == "clitest/env"

    code, out = run_cli(["pull", "cli0key-cpu", "--config", str(cfg_b)], capsys)
    assert code == 0 and digest in out and reference_registry in out

    code, out = run_cli(["upstream", "list", "--config", str(cfg_a), "--json"], capsys)
    listed = json.loads(out)
    assert code == 0 and listed["upstreams"][0]["prefix"] == "clitest" and listed["pushes"]["counts"]["done"] == 1

    code, out = run_cli(["upstream", "check", "--config", str(cfg_b)], capsys)
    assert code == 1                                     # one of the two is down
    assert f"{down}: FAILED (" in out and "cannot connect" in out
    assert f"{reference_registry}: ok (1 images, 0 stages under clitest/)" in out

    code, out = run_cli(["pull", "nokey", "--variant", "gpu", "--config", str(cfg_b)], capsys)
    assert code == 3 and "not found" in out
    code, out = run_cli(["push", "nokey", "--config", str(cfg_a)], capsys)
    assert code == 3 and "envcache/env:nokey-cpu is not in the local store" in out
    code, out = run_cli(["push", "cli0key", "--config", str(cfg_b), "--upstream", reference_registry], capsys)
    assert code == 2 and f"no push upstream configured with url {reference_registry}" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[upstreams]]\nurl = "http://h"\nmode = "sideways"\n')
    code, out = run_cli(["upstream", "list", "--config", str(bad)], capsys)
    assert code == 2 and "upstreams[0].mode" in out
