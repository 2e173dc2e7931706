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

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envcache.errors import InvalidInput, NotFound
from envcache.spec import definition_from_dict, definition_to_dict, load_definition, spec_hash

if TYPE_CHECKING:
    from sqlite_utils import Database

    from envcache.spec.model import Definition

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

    def as_definition(self) -> Definition:
        """The stored definition as a spec Definition ready for ensure (no second read of the row)."""
        return definition_from_dict(self.definition, source=f"environment {self.name}:{self.version}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "spec_hash": self.spec_hash,
                "definition": self.definition, "created": self.created, "curated": self.curated}


def check_name(name: Any) -> str:
    """Environment names become URL path parts and scaffold directory names: keep them plain."""
    if not isinstance(name, str) or not name or len(name) > 255 or not set(name) <= _NAME_CHARS or name[0] in "-.":
        raise InvalidInput(
            f"environment name {str(name)[:80]!r} is invalid: use 1-255 letters, digits, '-', '_' or '.', "
            "not starting with '-' or '.'"
        )
    return name


class Environments:
    """Registered environments in the ``environments`` table, curated ones from files."""

    def __init__(self, db: Database, curated_dir: Path = CURATED_DIR) -> None:
        self._db = db
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

    def register(self, name: str, definition: Definition) -> tuple[EnvironmentRecord, bool]:
        """Store ``definition`` under ``name``; returns (record, True if a new version was made)."""
        check_name(name)
        if name.startswith(RESERVED_PREFIX):
            raise InvalidInput(f"environment names starting with {RESERVED_PREFIX!r} are reserved for curated environments")
        shash = spec_hash(definition)
        with self._db.conn:  # one transaction: two registrations cannot both take version N+1
            latest = self._db.execute(
                "select version, spec_hash from environments where name = ? order by version desc limit 1", [name]
            ).fetchone()
            if latest is not None and latest[1] == shash:
                return self.get(name, latest[0]), False
            version = 1 if latest is None else latest[0] + 1
            body = definition_to_dict(definition, redact=True)  # never store secrets in clear
            body["name"], body["version"] = name, str(version)  # the labels follow the registry
            now = time.time()
            self._db.conn.execute(
                "insert into environments (name, version, spec_hash, definition, created) values (?, ?, ?, ?, ?)",
                [name, version, shash, json.dumps(body, sort_keys=True), now],
            )
        return EnvironmentRecord(name, version, shash, body, now), True

    def get(self, name: str, version: int | None = None) -> EnvironmentRecord:
        """One version, the latest when ``version`` is None."""
        if name in self._curated:
            record = self._curated[name]
            if version not in (None, record.version):
                raise NotFound(f"curated environment {name} has only version {record.version}")
            return record
        if version is None:
            row = self._db.execute(
                "select name, version, spec_hash, definition, created from environments where name = ? "
                "order by version desc limit 1", [name]
            ).fetchone()
        else:
            row = self._db.execute(
                "select name, version, spec_hash, definition, created from environments where name = ? and version = ?",
                [name, version],
            ).fetchone()
        if row is None:
            which = f"version {version} of environment {name!r}" if version is not None else f"environment {name!r}"
            raise NotFound(f"no {which}")
        return EnvironmentRecord(row[0], row[1], row[2], json.loads(row[3]), row[4])

    def versions(self, name: str) -> list[EnvironmentRecord]:
        if name in self._curated:
            return [self._curated[name]]
        rows = self._db.execute(
            "select name, version, spec_hash, definition, created from environments where name = ? order by version",
            [name],
        ).fetchall()
        if not rows:
            raise NotFound(f"no environment {name!r}")
        return [EnvironmentRecord(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def list(self) -> list[EnvironmentRecord]:
        """The latest version of every environment, curated first."""
        rows = self._db.execute(
            "select e.name, e.version, e.spec_hash, e.definition, e.created from environments e "
            "join (select name, max(version) v from environments group by name) m on e.name = m.name and e.version = m.v "
            "order by e.name"
        ).fetchall()
        registered = [EnvironmentRecord(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]
        return [*self._curated.values(), *registered]
