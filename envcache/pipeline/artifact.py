"""Step results as OCI artifacts in envcache's registry: ``envcache/step:<step key>``.

One OCI 1.1 image manifest per result, ``artifactType: application/vnd.envcache.step.v1``:

- the config blob is the step record (key, step, script, arguments, image key and variant,
  snapshot digest, inputs, outputs' tree digests, timings, exit code) as JSON;
- one layer per output: a deterministic tar of the output directory (sorted names, mtime 0,
  owner 0, modes 0644/0755), annotated with the output's name and tree digest;
- the snapshot's listing (its bytes hash to the snapshot digest; the files themselves are the
  blobs the submission uploaded), and the step's log as ``text/plain``.

Being an ordinary tagged manifest, a result is pulled and pushed by any OCI client (``oras``,
``skopeo``) and kept by gc like any tagged content. Materialising goes the other way: an output
tar is unpacked with tarfile's ``data`` filter (no links out, no devices, no absolute paths),
and a tree of uploaded files is copied out of the blob store by digest.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

from envcache.oci import OCI_MANIFEST
from envcache.oci.manifest import dumps_manifest
from envcache.pipeline.errors import TreeError
from envcache.pipeline.tree import MODE_EXECUTABLE, Tree, read_tree
from envcache.store import Store, StepResult
from envcache.wire import STEP_REPOSITORY

ARTIFACT_TYPE = "application/vnd.envcache.step.v1"
CONFIG_TYPE = "application/vnd.envcache.step.config.v1+json"
OUTPUT_TYPE = "application/vnd.oci.image.layer.v1.tar"
LISTING_TYPE = "application/vnd.envcache.tree.v1+json"
LOG_TYPE = "text/plain"
EMPTY_DIR_MODE = 0o755


def _write_tar(directory: Path, target: Path) -> None:
    """A byte-for-byte reproducible tar of ``directory``: equal trees give equal layer digests."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755 if info.isdir() or info.mode & 0o100 else 0o644
        return info

    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                path = Path(root, name)
                if not (path.is_dir() or path.is_file()) or path.is_symlink():
                    raise TreeError(f"{path.relative_to(directory)}: an output may hold only files and directories")
                tar.add(path, arcname=str(path.relative_to(directory)), recursive=False, filter=normalise)


async def store_result(store: Store, *, key: str, step: str, record: dict[str, Any], outputs: dict[str, Path],
                       snapshot: Tree, log: str, scratch: Path) -> StepResult:
    """Store a successful run's outputs, snapshot listing, log and record; tag it ``envcache/step:<key>``."""
    layers: list[dict[str, Any]] = []
    kept: dict[str, tuple[str, str]] = {}
    for name, directory in sorted(outputs.items()):
        tar = scratch / f"output-{name}.tar"
        # The tar first: it refuses symbolic links, which hashing would follow out of the output.
        await asyncio.to_thread(_write_tar, directory, tar)
        tree = await asyncio.to_thread(read_tree, directory)
        digest, size = await store.adopt_blob(tar, media_type=OUTPUT_TYPE)
        kept[name] = (tree.digest, digest)
        layers.append({"mediaType": OUTPUT_TYPE, "digest": digest, "size": size,
                       "annotations": {"envcache.step.output": name, "envcache.step.tree": tree.digest}})
    for media_type, data, title in ((LISTING_TYPE, snapshot.listing(), "snapshot"), (LOG_TYPE, log.encode(), "log")):
        digest, size = await store.write_blob(data, media_type=media_type)
        layers.append({"mediaType": media_type, "digest": digest, "size": size,
                       "annotations": {"org.opencontainers.image.title": title}})
    config = json.dumps({**record, "outputs": {name: tree for name, (tree, _) in kept.items()}},
                        sort_keys=True).encode()
    config_digest, config_size = await store.write_blob(config, media_type=CONFIG_TYPE)
    manifest = dumps_manifest({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": config_size},
        "layers": layers, "annotations": {"envcache.step.key": key, "envcache.step.name": step},
    })
    manifest_digest = await store.put_manifest(STEP_REPOSITORY, key, manifest, OCI_MANIFEST)
    now = time.time()
    result = StepResult(key, step, manifest_digest, kept, now, now)
    await store.steps.put(result)
    return result


async def stored_result(store: Store, key: str) -> StepResult | None:
    """The result filed under ``key`` while its artifact is still in the registry."""
    result = await store.steps.get(key)
    if result is None or await store.get_manifest(STEP_REPOSITORY, key, with_body=False) is None:
        return None
    return result


async def adopt_artifact(store: Store, key: str) -> StepResult | None:
    """File a step artifact copied in from elsewhere (an upstream registry) under its key, from
    its own layers' annotations; None when the tag holds no step artifact."""
    manifest = await store.get_manifest(STEP_REPOSITORY, key)
    doc = json.loads(manifest.body) if manifest is not None else {}
    if doc.get("artifactType") != ARTIFACT_TYPE or (doc.get("annotations") or {}).get("envcache.step.key") != key:
        return None
    outputs = {}
    for layer in doc["layers"]:
        notes = layer.get("annotations") or {}
        if layer.get("mediaType") == OUTPUT_TYPE and "envcache.step.output" in notes:
            outputs[notes["envcache.step.output"]] = (notes["envcache.step.tree"], layer["digest"])
    now = time.time()
    result = StepResult(key, doc["annotations"].get("envcache.step.name", ""), manifest.digest, outputs, now, now)
    await store.steps.put(result)
    return result


async def describe(store: Store, result: StepResult) -> dict[str, Any]:
    """Everything ``envcache step show`` prints: the record, the snapshot listing and the log."""
    manifest = await store.get_manifest(STEP_REPOSITORY, result.manifest_digest)
    if manifest is None:
        raise TreeError(f"step {result.key}: its artifact is gone from the registry")
    doc = json.loads(manifest.body)
    record = json.loads(await store.files.read(doc["config"]["digest"]) or b"{}")
    by_type = {layer["mediaType"]: layer["digest"] for layer in doc["layers"] if layer["mediaType"] != OUTPUT_TYPE}
    listing = json.loads(await store.files.read(by_type[LISTING_TYPE]) or b"{}")
    log = (await store.files.read(by_type[LOG_TYPE]) or b"").decode("utf-8", "replace")
    return {"record": record, "snapshot": listing.get("files", []), "log": log}


def _extract(store: Store, blob: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with store.files.open(blob) as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
        tar.extractall(dest, filter="data")


async def materialise_output(store: Store, blob: str, dest: Path) -> None:
    """Unpack an output's tar layer into ``dest`` (created)."""
    await asyncio.to_thread(_extract, store, blob, dest)


def _copy_tree(store: Store, tree: Tree, dest: Path) -> None:
    for entry in tree.files:
        target = dest / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with store.files.open(f"sha256:{entry.sha256}") as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        except FileNotFoundError:
            raise TreeError(f"{entry.path}: its content (sha256:{entry.sha256}) was not uploaded") from None
        if entry.mode == MODE_EXECUTABLE:
            target.chmod(0o755)


async def materialise_tree(store: Store, tree: Tree, dest: Path) -> None:
    """Copy the files a listing names out of the blob store into ``dest`` (created)."""
    dest.mkdir(parents=True, exist_ok=True, mode=EMPTY_DIR_MODE)
    await asyncio.to_thread(_copy_tree, store, tree, dest)
