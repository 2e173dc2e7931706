"""``envcache serve``: the documented config file, flags, and the loopback-only default."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from envcache.service.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envcache.cli", "serve", *args],
                          capture_output=True, text=True, timeout=30)


def test_documented_config_file_is_the_defaults() -> None:
    assert load_config(REPO / "config" / "envcache.toml") == Config()


def test_refuses_non_loopback_without_tokens(tmp_path: Path) -> None:
    result = _serve("--host", "0.0.0.0", "--data", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr and "auth tokens" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()  # refused before touching anything


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    cases = {
        "[server]\nprot = 1\n": "unknown key server.prot",
        "[servr]\n": "unknown section [servr]",
        "[registry]\nupload_session_ttl = \"soon\"\n": "registry.upload_session_ttl must be an integer",
        "[build]\nengine = \"podman\"\n": "build.engine must be one of",
        "[server\n": "invalid TOML",
    }
    for text, message in cases.items():
        bad.write_text(text)
        result = _serve("--config", str(bad), "--data", str(tmp_path / "d"))
        assert result.returncode == 2, text
        assert message in result.stderr and str(bad) in result.stderr, (text, result.stderr)
    result = _serve("--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "config file not found" in result.stderr


def test_serves_with_config_file_and_flags(daemon_process, tmp_path: Path) -> None:
    config = tmp_path / "envcache.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "from-config"}"\n[registry]\nupload_session_ttl = 60\n')
    proc = daemon_process(tmp_path / "from-flag", 0, config)
    with urllib.request.urlopen(f"{proc.url}/v2/", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    # --data wins over the file's server.data_dir.
    assert (tmp_path / "from-flag" / "envcache.db").is_file()
    assert not (tmp_path / "from-config").exists()
    assert proc.stop() == 0  # SIGTERM is a clean shutdown


def test_non_loopback_allowed_with_tokens() -> None:
    from envcache.errors import InvalidInput
    from envcache.service.config import check_bind, config_from_dict

    for host in ("127.0.0.1", "127.0.0.5", "::1", "localhost"):
        check_bind(config_from_dict({"server": {"host": host}}))
    with pytest.raises(InvalidInput, match="refusing to listen on 10.1.2.3"):
        check_bind(config_from_dict({"server": {"host": "10.1.2.3"}}))
    guarded = config_from_dict({"server": {"host": "10.1.2.3"}, "auth": {"tokens": [{"token": "t" * 32, "scopes": ["read"]}]}})
    check_bind(guarded)
    assert guarded.auth.tokens[0].scopes == ["read"]
