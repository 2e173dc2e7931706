"""Named, versioned environments (Azure's "register an environment"), plus curated ones.

A version is a name for a *content*: registering the same content again returns the existing
version instead of minting a new one, so CI jobs that register on every run do not produce
endless versions of one environment. Content means the spec hash, so reformatting or
reordering a pip list is not a new version either.

Curated environments ship inside the package (``envcache/curated/``, package data, so a wheel
install has them too) and are read-only: the ``envcache-`` prefix is reserved for them so a user
can never shadow one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envcache.errors import InvalidInput, NotFound
from envcache.service import schemas
from envcache.store import EnvironmentVersion
from envcache.definition import definition_from_dict, definition_to_dict, load_definition, spec_hash

if TYPE_CHECKING:
    from envcache.definition.model import Definition
    from envcache.store.interfaces import Environments as EnvironmentStore

RESERVED_PREFIX = "envcache-"
CURATED_DIR = Path(__file__).resolve().parents[1] / "curated"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass
class EnvironmentRecord:
    name: str
    version: int
    spec_hash: str
    definition: dict
    created: float
    curated: bool = False

    @classmethod
    def of(cls, version: EnvironmentVersion) -> EnvironmentRecord:
        return cls(version.name, version.version, version.spec_hash, version.definition, version.created)

    def as_definition(self) -> Definition:
        """The stored definition as a Definition ready for ensure (no second read of the row)."""
        return definition_from_dict(self.definition, source=f"environment {self.name}:{self.version}")

    def model(self) -> schemas.Environment:
        return schemas.Environment(self.name, self.version, self.spec_hash, self.definition, self.created, self.curated)


def check_name(name: Any) -> str:
    """Environment names become URL path parts and scaffold directory names: keep them plain."""
    if not isinstance(name, str) or not name or len(name) > 255 or not set(name) <= _NAME_CHARS or name[0] in "-.":
        raise InvalidInput(
            f"environment name {str(name)[:80]!r} is invalid: use 1-255 letters, digits, '-', '_' or '.', "
            "not starting with '-' or '.'"
        )
    return name


class Environments:
    """Registered environments in the store, curated ones from files."""

    def __init__(self, store: EnvironmentStore, curated_dir: Path = CURATED_DIR) -> None:
        self._store = store
        self._curated = self._load_curated(curated_dir)

    def _load_curated(self, directory: Path) -> dict[str, EnvironmentRecord]:
        curated: dict[str, EnvironmentRecord] = {}
        if not directory.is_dir():
            return curated
        for path in sorted(directory.glob("*.y*ml")):
            defn = load_definition(path)
            name = path.name.split(".")[0]
            curated[name] = EnvironmentRecord(
                name, 1, spec_hash(defn), definition_to_dict(defn, redact=True), path.stat().st_mtime, True
            )
        return curated

    async def register(self, name: str, definition: Definition) -> tuple[EnvironmentRecord, bool]:
        """Store ``definition`` under ``name``; returns (record, True if a new version was made)."""
        check_name(name)
        if name.startswith(RESERVED_PREFIX):
            raise InvalidInput(f"environment names starting with {RESERVED_PREFIX!r} are reserved for curated environments")
        # Never store secrets in clear: the registry keeps the redacted definition.
        version, created = await self._store.register(name, spec_hash(definition),
                                                      definition_to_dict(definition, redact=True), time.time())
        return EnvironmentRecord.of(version), created

    async def get(self, name: str, version: int | None = None) -> EnvironmentRecord:
        """One version, the latest when ``version`` is None."""
        if name in self._curated:
            record = self._curated[name]
            if version not in (None, record.version):
                raise NotFound(f"curated environment {name} has only version {record.version}")
            return record
        found = await self._store.get(name, version)
        if found is None:
            which = f"version {version} of environment {name!r}" if version is not None else f"environment {name!r}"
            raise NotFound(f"no {which}")
        return EnvironmentRecord.of(found)

    async def versions(self, name: str) -> list[EnvironmentRecord]:
        if name in self._curated:
            return [self._curated[name]]
        found = await self._store.versions(name)
        if not found:
            raise NotFound(f"no environment {name!r}")
        return [EnvironmentRecord.of(v) for v in found]

    def curated(self) -> list[EnvironmentRecord]:
        """The curated environments (they ship with envcache: one version each)."""
        return list(self._curated.values())

    async def list(self) -> list[EnvironmentRecord]:
        """The latest version of every environment, curated first."""
        return [*self.curated(), *(EnvironmentRecord.of(v) for v in await self._store.latest())]
