"""Step results as OCI artifacts in a real store: reproducible output layers, re-filing a copied-in
artifact from its own annotations, listings checked on arrival, and gc's retention of results."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from envcache.oci import OCI_MANIFEST
from envcache.pipeline.artifact import (
    ARTIFACT_TYPE, adopt_artifact, describe, materialise_output, store_result, stored_result,
)
from envcache.pipeline.errors import TreeError
from envcache.pipeline.tree import read_tree, snapshot, tree_from_listing
from envcache.store import open_store
from envcache.store.gc import run_gc
from envcache.wire import STEP_REPOSITORY


def _output(root: Path, text: str) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "model.txt").write_text(text)
    (root / "run.sh").write_text("echo\n")
    (root / "run.sh").chmod(0o755)
    return root


async def _store_one(store, tmp_path: Path, key: str, text: str):
    source = tmp_path / f"src-{key}"
    source.mkdir()
    (source / "train.py").write_text("print('hi')\n")
    return await store_result(store, key=key, step="train", record={"key": key, "exit_code": 0},
                              outputs={"model": _output(tmp_path / f"out-{key}", text)},
                              snapshot=snapshot(source), log="line one\nline two\n", scratch=tmp_path)


async def test_a_result_is_an_oci_artifact_whose_outputs_come_back_byte_for_byte(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "data")
    try:
        first = await _store_one(store, tmp_path, "a" * 32, "weights")
        second = await _store_one(store, tmp_path, "b" * 32, "weights")
        # Same content written at other times and places: the same tree and the same layer.
        assert first.outputs == second.outputs
        manifest = await store.get_manifest(STEP_REPOSITORY, "a" * 32)
        doc = json.loads(manifest.body)
        assert manifest.media_type == OCI_MANIFEST and doc["artifactType"] == ARTIFACT_TYPE
        assert [layer["mediaType"] for layer in doc["layers"]][1:] == ["application/vnd.envcache.tree.v1+json",
                                                                       "text/plain"]
        details = await describe(store, first)
        assert details["log"] == "line one\nline two\n" and [f[0] for f in details["snapshot"]] == ["train.py"]
        await materialise_output(store, first.outputs["model"][1], tmp_path / "back")
        assert read_tree(tmp_path / "back").digest == first.outputs["model"][0]
        assert (tmp_path / "back" / "run.sh").stat().st_mode & 0o100

        # A copy that arrived without its row (pulled from an upstream) is filed from its annotations.
        await store.steps.delete_unused(["a" * 32], time.time() + 1)
        assert await store.steps.get("a" * 32) is None
        adopted = await adopt_artifact(store, "a" * 32)
        assert adopted is not None and adopted.outputs == first.outputs and adopted.step == "train"
    finally:
        await store.close()


async def test_gc_expires_step_results_unused_for_keep_days(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "data")
    try:
        old = await _store_one(store, tmp_path, "c" * 32, "old weights")
        new = await _store_one(store, tmp_path, "d" * 32, "new weights")
        await store.steps.touch({old.key: time.time() - 10 * 86400})
        dry = await run_gc(store, dry_run=True, keep_days=5, grace=0)
        assert dry.steps_expired == [old.key] and await stored_result(store, old.key) is not None
        report = await run_gc(store, keep_days=5, grace=0)
        assert report.steps_expired == [old.key] and f"{STEP_REPOSITORY}:{old.key}" in report.tags_deleted
        assert await stored_result(store, old.key) is None and await stored_result(store, new.key) is not None
        assert not await store.has_blob(old.outputs["model"][1])       # its output layer was collected
        assert await store.has_blob(new.outputs["model"][1])
    finally:
        await store.close()


@pytest.mark.parametrize("path", ["../escape", "/abs", "a/../b", "", "a//b"])
def test_a_listing_from_a_client_cannot_name_a_path_outside_its_tree(path: str) -> None:
    with pytest.raises(TreeError):
        tree_from_listing("dir", [(path, "100644", 1, "0" * 64)])


def test_a_listing_digest_is_recomputed_and_equals_the_local_one(tmp_path: Path) -> None:
    tree = read_tree(_output(tmp_path / "out", "x"))
    sent = [(f.path, f.mode, f.size, f.sha256) for f in reversed(tree.files)]
    assert tree_from_listing("dir", sent).digest == tree.digest
