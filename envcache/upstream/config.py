"""Upstream registries a daemon shares images with.

Kept as a small, validated model so that a typo in a team's config is reported with the field
path (``upstreams[1].mode``) at start-up instead of surfacing as a confusing network error later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from envcache.errors import InvalidInput

MODES = ("pull", "push", "both")
_FIELDS = ("url", "prefix", "mode", "ca_file", "insecure", "username", "password", "password_env",
           "token", "mirror_for", "timeout")


@dataclass(frozen=True)
class Upstream:
    """One shared registry: where it is, which repositories are ours, and what we do with it."""

    url: str                       # scheme://host[:port], no path
    prefix: str = "envcache"       # repository prefix: images live at <prefix>/env, stages at <prefix>/stage
    mode: str = "both"             # pull | push | both
    ca_file: Path | None = None    # extra CA bundle to trust (a team's private CA)
    insecure: bool = False         # do not verify TLS (lab / tests only)
    username: str | None = None
    password: str | None = field(default=None, repr=False)   # never printed
    token: str | None = field(default=None, repr=False)      # a pre-issued bearer token
    mirror_for: tuple[str, ...] = ()   # origin registries this upstream mirrors (pull-through)
    timeout: float = 30.0          # longest silence tolerated from it (a stalled socket must not hang ensure)

    @property
    def can_pull(self) -> bool:
        return self.mode in ("pull", "both")

    @property
    def can_push(self) -> bool:
        return self.mode in ("push", "both")

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    def repo(self, kind: str) -> str:
        """Repository on the upstream for ``kind`` (``env``, ``stage`` or ``wheel``)."""
        return f"{self.prefix}/{kind}" if self.prefix else kind

    def describe(self) -> dict[str, Any]:
        """What ``upstream list`` shows: everything except secrets."""
        return {"url": self.url, "prefix": self.prefix, "mode": self.mode,
                "ca_file": str(self.ca_file) if self.ca_file else None, "insecure": self.insecure,
                "username": self.username, "auth": "basic" if self.username else ("token" if self.token else "none"),
                "mirror_for": list(self.mirror_for), "timeout": self.timeout}


def parse_upstream(raw: Any, where: str = "upstream") -> Upstream:
    """Validate one mapping (from TOML/JSON) into an :class:`Upstream`; errors name the field."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: expected a table/mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise InvalidInput(f"{where}.{unknown[0]}: unknown field (valid: {', '.join(_FIELDS)})")

    url = raw.get("url")
    if not isinstance(url, str) or not url:
        raise InvalidInput(f"{where}.url: required, e.g. \"https://registry.example.com\"")
    parts = urlsplit(url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(f"{where}.url: must be http(s)://host[:port], got {url!r}")
    if parts.path or parts.query:
        raise InvalidInput(f"{where}.url: must not have a path (put repositories in 'prefix'), got {url!r}")

    prefix = _string(raw, "prefix", where, "envcache").strip("/")
    if any(not seg or seg != seg.lower() for seg in prefix.split("/")) and prefix:
        raise InvalidInput(f"{where}.prefix: must be lowercase path segments, got {prefix!r}")
    mode = _string(raw, "mode", where, "both")
    if mode not in MODES:
        raise InvalidInput(f"{where}.mode: must be one of {', '.join(MODES)}, got {mode!r}")
    ca = raw.get("ca_file")
    if ca is not None and not isinstance(ca, str):
        raise InvalidInput(f"{where}.ca_file: must be a path string")
    if ca is not None and not Path(ca).is_file():
        raise InvalidInput(f"{where}.ca_file: no such file {ca!r}")
    insecure = raw.get("insecure", False)
    if not isinstance(insecure, bool):
        raise InvalidInput(f"{where}.insecure: must be true or false")

    username = raw.get("username")
    if username is not None and not isinstance(username, str):
        raise InvalidInput(f"{where}.username: must be a string")
    password = raw.get("password")
    if password is not None and not isinstance(password, str):
        raise InvalidInput(f"{where}.password: must be a string")
    env_name = raw.get("password_env")
    if env_name is not None:
        if not isinstance(env_name, str):
            raise InvalidInput(f"{where}.password_env: must be an environment variable name")
        if env_name not in os.environ:
            raise InvalidInput(f"{where}.password_env: environment variable {env_name} is not set")
        password = os.environ[env_name]
    if username and password is None:
        raise InvalidInput(f"{where}.password: required with username (or set password_env)")
    token = raw.get("token")
    if token is not None and not isinstance(token, str):
        raise InvalidInput(f"{where}.token: must be a string")
    mirror_for = raw.get("mirror_for", [])
    if not isinstance(mirror_for, list) or not all(isinstance(m, str) and m for m in mirror_for):
        raise InvalidInput(f"{where}.mirror_for: must be a list of registry host names")

    timeout = raw.get("timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise InvalidInput(f"{where}.timeout: must be a positive number of seconds")
    return Upstream(url=f"{parts.scheme}://{parts.netloc}", prefix=prefix, mode=mode,
                    ca_file=Path(ca) if ca else None, insecure=insecure, username=username,
                    password=password, token=token, mirror_for=tuple(mirror_for), timeout=float(timeout))


def parse_upstreams(raw: Any) -> list[Upstream]:
    """Validate the ``upstreams`` list of the daemon config."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput("upstreams: expected a list of tables ([[upstreams]] in TOML)")
    return [parse_upstream(item, f"upstreams[{i}]") for i, item in enumerate(raw)]


def _string(raw: dict[str, Any], key: str, where: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise InvalidInput(f"{where}.{key}: must be a string")
    return value
