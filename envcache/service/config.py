"""Daemon configuration: a TOML file (documented in config/envcache.toml) over built-in defaults.

``Config`` composes the narrow settings each part defines for itself (``BuildSettings`` in
the builder, ``Upstream`` in the upstream tier, the data directory for the store); nothing below
the service reads ``Config``.

Every section and key is checked: an unknown one is an error naming it and listing the valid
ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envcache.builder.settings import COMPRESSIONS, ENGINES, BuildSettings
from envcache.definition.model import VARIANTS, Variant
from envcache.errors import InvalidInput
from envcache.pipeline.settings import PipelineSettings
from envcache.store import StoreSettings
from envcache.store.errors import MB
from envcache.store.store import DEFAULT_GRACE, DEFAULT_MIN_FREE
from envcache.upstream.config import Upstream, parse_upstreams


def _default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("envcache"))


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5050
    data_dir: Path = field(default_factory=_default_data_dir)
    # TLS on the daemon's own port: a PEM certificate (chain) and its key; both or neither.
    tls_certificate: str | None = None
    tls_key: str | None = None
    # A connection must send a complete request's headers within this many seconds of opening
    # or of its previous response (idle keep-alive connections and half-sent headers alike).
    idle_timeout: int = 60
    # A request body that sends nothing for this many seconds is answered 408 and dropped.
    body_timeout: int = 60
    # Connections served at once; more are answered 503 at once. 0: half the open-file limit.
    max_connections: int = 0


@dataclass
class Token:
    token: str
    scopes: list[str] = field(default_factory=lambda: ["read", "write"])
    name: str | None = None   # what the access log shows; unset: token-<n>, its place in the list


@dataclass
class AuthConfig:
    tokens: list[Token] = field(default_factory=list)


@dataclass
class VariantConfig:
    base_image: str


# Azure ML's own base images, so a definition without a base image builds like it would there.
DEFAULT_VARIANTS = {
    Variant.CPU: "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04",
    Variant.GPU: "mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.3-cudnn8-ubuntu20.04",
}


@dataclass
class ResolveConfig:
    base_digest_ttl: int = 3600


@dataclass
class RegistryConfig:
    # An upload session idle for longer than this is dropped with its bytes.
    upload_session_ttl: int = 3600


LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass
class LogConfig:
    """``[log]``: the daemon's log (the access log and its own messages)."""

    format: str = "json"        # one of LOG_FORMATS
    level: str = "info"         # one of LOG_LEVELS; "warning" and above turn the access log off
    file: str | None = None     # unset: stderr


@dataclass
class StorageConfig:
    # New blob writes are refused (507 Insufficient Storage) when they would leave less than this
    # many MiB free on the data directory's filesystem, so deletes and gc always have room.
    min_free_mb: int = DEFAULT_MIN_FREE // MB

    def settings(self, data_dir: Path) -> StoreSettings:
        return StoreSettings(data_dir, min_free_bytes=self.min_free_mb * MB)


@dataclass
class GcConfig:
    """``[gc]``: retention. 0 turns a setting off."""

    # Evict least recently used cached images while the store's blobs exceed this many bytes
    # (every gc: interval runs, `envcache gc --url`, POST /api/v1/gc without its own max_bytes).
    max_bytes: int = 0
    # Run gc in the background every this many seconds.
    interval: int = 0
    # Interval runs also expire cached images not used for this many days (gc --keep-days).
    keep_days: int = 0
    # Anything used more recently than this many seconds is kept (gc --grace).
    grace: int = int(DEFAULT_GRACE)


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    build: BuildSettings = field(default_factory=BuildSettings)
    variants: dict[str, VariantConfig] = field(
        default_factory=lambda: {name: VariantConfig(image) for name, image in DEFAULT_VARIANTS.items()})
    resolve: ResolveConfig = field(default_factory=ResolveConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    log: LogConfig = field(default_factory=LogConfig)
    gc: GcConfig = field(default_factory=GcConfig)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    # Shared registries to pull from / push to; their model and validation live in envcache.upstream.config.
    upstreams: list[Upstream] = field(default_factory=list)


_CHOICES = {("build", "engine"): set(ENGINES), ("build", "compression"): set(COMPRESSIONS),
            ("log", "format"): set(LOG_FORMATS), ("log", "level"): set(LOG_LEVELS)}
_SCOPES = {"read", "write"}
_TOKEN_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def load_config(path: Path | str | None = None) -> Config:
    """Read ``path`` (TOML) over the defaults; ``None`` gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: invalid TOML: {exc}") from None
    return config_from_dict(data, source=str(path))


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    config = Config()
    sections = {f.name for f in dataclasses.fields(Config)}
    for name, value in data.items():
        if name not in sections:
            raise InvalidInput(f"{source}: unknown section [{name}]; valid sections: {', '.join(sorted(sections))}")
        if name == "upstreams":
            try:
                config.upstreams = parse_upstreams(value)
            except InvalidInput as exc:
                raise InvalidInput(f"{source}: {exc}") from None
            continue
        if not isinstance(value, dict):
            raise InvalidInput(f"{source}: [{name}] must be a table")
        if name == "auth":
            config.auth = AuthConfig(tokens=_tokens(value, source))
        elif name == "variants":
            config.variants = _variants(value, source)
        else:
            setattr(config, name, _section(type(getattr(config, name)), name, value, source))
    config.server.data_dir = Path(config.server.data_dir).expanduser()
    return config


def _section(cls: type, name: str, values: dict[str, Any], source: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    instance = cls()
    for key, value in values.items():
        if key not in fields:
            raise InvalidInput(f"{source}: unknown key {name}.{key}; valid keys: {', '.join(sorted(fields))}")
        default = getattr(instance, key)
        expected: tuple[type, ...] = (int,) if isinstance(default, int) else (str,)
        if isinstance(default, Path):
            expected = (str,)
        if isinstance(value, bool) or not isinstance(value, expected):
            raise InvalidInput(f"{source}: {name}.{key} must be {'an integer' if expected == (int,) else 'a string'}")
        allowed = _CHOICES.get((name, key))
        if allowed and value not in allowed:
            raise InvalidInput(f"{source}: {name}.{key} must be one of {', '.join(sorted(allowed))}, not {value!r}")
        if expected == (int,) and value < (0 if key in ("port", "max_connections") or name == "gc" else 1):
            raise InvalidInput(f"{source}: {name}.{key} must be positive")
        setattr(instance, key, Path(value) if isinstance(default, Path) else value)
    return instance


def _tokens(section: dict[str, Any], source: str) -> list[Token]:
    unknown = set(section) - {"tokens"}
    if unknown:
        raise InvalidInput(f"{source}: unknown key auth.{sorted(unknown)[0]}; valid keys: tokens")
    tokens: list[Token] = []
    for index, item in enumerate(section.get("tokens", [])):
        where = f"{source}: auth.tokens[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("token"), str) or not item["token"]:
            raise InvalidInput(f"{where} must be a table with a non-empty string 'token'")
        check_token(item["token"], where)
        if set(item) - {"token", "scopes", "name"}:
            raise InvalidInput(f"{where}: unknown key {sorted(set(item) - {'token', 'scopes', 'name'})[0]}; "
                               "valid keys: name, scopes, token")
        scopes = item.get("scopes", ["read", "write"])
        if not isinstance(scopes, list) or not scopes or not set(scopes) <= _SCOPES:
            raise InvalidInput(f"{where}.scopes must be a non-empty list of 'read' and 'write'")
        name = item.get("name")
        if name is not None and (not isinstance(name, str) or not _TOKEN_NAME.fullmatch(name)):
            raise InvalidInput(f"{where}.name must be 1 to 64 letters, digits, '.', '_' or '-'")
        if name is not None and name in {t.name for t in tokens}:
            raise InvalidInput(f"{where}.name {name!r} is used twice; names tell tokens apart in the access log")
        tokens.append(Token(token=item["token"], scopes=list(scopes), name=name))
    return tokens


MIN_TOKEN_LENGTH = 32


def check_token(token: str, where: str) -> None:
    """Refuse a token an attacker could guess or a client could not send as written.

    32 characters of ``openssl rand -hex 16`` are 128 bits; anything shorter in a config file is
    a placeholder or a password. Clients strip the header value, so surrounding whitespace (or
    a token of nothing else) would never match.
    """
    if not token.strip():
        raise InvalidInput(f"{where}: the token is empty or only whitespace")
    if token != token.strip():
        raise InvalidInput(f"{where}: the token starts or ends with whitespace, which clients cannot send")
    if len(token) < MIN_TOKEN_LENGTH:
        raise InvalidInput(f"{where}: the token has {len(token)} characters; use at least {MIN_TOKEN_LENGTH} "
                           "random ones (e.g. `openssl rand -hex 32`)")


def _variants(section: dict[str, Any], source: str) -> dict[str, VariantConfig]:
    out = Config().variants  # a variant the file does not name keeps its default
    for name, value in section.items():
        if name not in VARIANTS:
            raise InvalidInput(f"{source}: unknown variant [variants.{name}]; valid variants: {', '.join(VARIANTS)}")
        if not isinstance(value, dict) or set(value) != {"base_image"} or not isinstance(value["base_image"], str):
            raise InvalidInput(f"{source}: [variants.{name}] must set exactly base_image (a string)")
        out[name] = VariantConfig(base_image=value["base_image"])
    return out


def is_loopback(host: str) -> bool:
    """True for loopback addresses and ``localhost`` (the only names safe without auth)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(config: Config) -> None:
    """Refuse to listen beyond loopback unless auth tokens are configured."""
    if not is_loopback(config.server.host) and not config.auth.tokens:
        raise InvalidInput(
            f"refusing to listen on {config.server.host}: a non-loopback address needs auth tokens "
            "([auth] tokens = [{token = \"...\", scopes = [\"read\", \"write\"]}] in the config file)"
        )
