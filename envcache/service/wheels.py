"""Private wheels (Azure's ``Environment.add_private_pip_wheel``): uploaded once, kept by digest,
listed in a PEP 503/691 simple index, pinned by definitions.

A wheel is kept three ways, one per reader: its bytes as a blob (verified before visible, like
every blob), an OCI artifact ``envcache/wheel:<sha256 hex>`` (so gc, push and pull treat it as
content, and ``oras pull`` fetches it), and a row of the ``wheels`` table (what the index lists).
The file is checked before any of them exists (:func:`envcache.definition.wheel.inspect_wheel`).

Removal unlists a wheel. It is refused while a registered environment's latest version pins it
(that environment uses it now); older versions and cached images that pin it keep its artifact
alive (gc), so they still build.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field

from envcache.definition.canonical import wheel_digests
from envcache.definition.wheel import inspect_wheel
from envcache.errors import Conflict, NotFound
from envcache.oci import (
    EMPTY_JSON, OCI_EMPTY, OCI_MANIFEST, WHEEL_ARTIFACT, WHEEL_MEDIA, WHEEL_REPOSITORY, Descriptor, artifact_manifest,
)
from envcache.store import Store, WheelRecord

#: Called with a new wheel's sha256 hex once it is stored (the upstream tier pushes it).
OnAdded = Callable[[str], Awaitable[object]]


@dataclass
class WheelUsers:
    """What pins a wheel: registered environments (``name:version``; ``latest`` are the versions
    in use now) and cached images (keys)."""

    latest: list[str] = field(default_factory=list)
    older: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.latest or self.older or self.images)


class Wheels:
    """The daemon's private wheels."""

    def __init__(self, store: Store, on_added: OnAdded | None = None) -> None:
        self._store = store
        self._on_added = on_added

    async def add(self, filename: str, body: AsyncIterable[bytes]) -> tuple[WheelRecord, bool]:
        """Store the wheel ``body`` as ``filename``; (record, False) when these bytes already are."""
        with self._store.files.scratch("wheel-") as directory:  # claimed: gc leaves it alone
            received = directory / "upload.whl"
            digest, size = await self._store.receive(body, received)
            info = await asyncio.to_thread(inspect_wheel, received, filename)
            for found in (await self._store.wheels.get(digest), await self._store.wheels.named(filename)):
                if found is not None and (found.digest, found.filename) != (digest, filename):
                    raise Conflict(f"{filename}: {found.filename} ({found.digest}) is already uploaded; a wheel "
                                   "file name names one file, and a file has one name")
            await self._store.adopt_blob(received, digest, verified=True, media_type=WHEEL_MEDIA)
        hex_digest = digest.split(":", 1)[1]
        await self._store.write_blob(EMPTY_JSON, media_type=OCI_EMPTY)
        layer = Descriptor(digest, WHEEL_MEDIA, size, annotations={"org.opencontainers.image.title": filename})
        manifest = artifact_manifest(WHEEL_ARTIFACT, [layer], {"envcache.wheel.name": info.name,
                                                               "envcache.wheel.version": info.version})
        await self._store.put_manifest(WHEEL_REPOSITORY, hex_digest, manifest, OCI_MANIFEST)
        record, created = await self._store.wheels.add(WheelRecord(
            digest, filename, info.name, info.version, info.tags, info.requires_python, info.summary, size,
            time.time()))
        if created and self._on_added is not None:
            await self._on_added(hex_digest)
        return record, created

    async def find(self, ref: str) -> WheelRecord:
        """A wheel by its digest (``sha256:<hex>`` or the hex) or its file name."""
        digest = ref if ref.startswith("sha256:") else f"sha256:{ref}"
        found = await self._store.wheels.get(digest) or await self._store.wheels.named(ref)
        if found is None:
            raise NotFound(f"no wheel {ref[:120]!r} (give its file name or its sha256 digest; `envcache wheels "
                           "list` shows them)")
        return found

    async def list(self) -> list[WheelRecord]:
        return await self._store.wheels.all()

    async def project(self, name: str) -> list[WheelRecord]:
        """A project's wheels (PEP 503 name); NotFound when it has none."""
        found = await self._store.wheels.project(name)
        if not found:
            raise NotFound(f"no wheels of project {name[:120]!r}")
        return found

    async def users(self, digest: str) -> WheelUsers:
        """The registered environment versions and cached images that pin ``digest``."""
        hex_digest = digest.split(":", 1)[1]
        users = WheelUsers()
        latest = {(v.name, v.version) for v in await self._store.environments.latest()}
        for version in await self._store.environments.mentioning(hex_digest):
            if digest in wheel_digests(version.definition):
                which = users.latest if (version.name, version.version) in latest else users.older
                which.append(f"{version.name}:{version.version}")
        users.images = [image.key for image in await self._store.images.mentioning(hex_digest)
                        if image.canonical is not None and digest in wheel_digests(json.loads(image.canonical))]
        return users

    async def remove(self, ref: str) -> tuple[WheelRecord, WheelUsers]:
        """Unlist a wheel; its artifact goes now unless something still pins it (then gc takes
        it once nothing does). Refused while a registered environment's latest version pins it."""
        record = await self.find(ref)
        users = await self.users(record.digest)
        if users.latest:
            raise Conflict(f"{record.filename} is pinned by registered environment(s) {', '.join(users.latest)}: "
                           "register a version without it first")
        await self._store.wheels.delete(record.digest)
        if not users.any:
            await self._store.manifests.delete_tag(WHEEL_REPOSITORY, record.digest.split(":", 1)[1])
        return record, users
