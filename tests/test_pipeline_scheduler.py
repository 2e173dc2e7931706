"""The scheduler with real scripts: what runs, what is reused, what a failure stops.

Each test runs the three-step project (prepare → train → evaluate) through the host runner of
``tests.fixtures.pipelines``; the scripts write a ledger, so "ran" is checked against what really
executed, not only against the report.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from envcache.pipeline import (
    DigestCache, PipelineReport, StepFailed, StepJob, StoredStep, TreeError, load_pipeline, run_pipeline,
)
from tests.fixtures.pipelines import HostBackend, Project

ALL = ["prepare", "train", "evaluate"]


async def run(project: Project, backend: HostBackend, **options: object) -> PipelineReport:
    return await run_pipeline(project.model(), backend, **options)  # type: ignore[arg-type]


def statuses(report: PipelineReport) -> dict[str, str]:
    return {step.name: step.status for step in report.steps}


async def test_first_run_runs_all_and_second_reuses_all(project: Project, backend: HostBackend) -> None:
    first = await run(project, backend)
    assert statuses(first) == dict.fromkeys(ALL, "ran") and first.ok
    assert project.ran() == ALL
    second = await run(project, backend)
    assert statuses(second) == dict.fromkeys(ALL, "reused")
    assert project.ran() == []
    assert [s.key for s in second.steps] == [s.key for s in first.steps]
    assert [s.outputs for s in second.steps] == [s.outputs for s in first.steps]
    assert len({s.key for s in first.steps}) == 3 and backend.stored_keys() == {s.key for s in first.steps}
    wire = json.loads(json.dumps(second.to_dict()))            # the report as the CLI/API will send it
    assert wire["ok"] is True and [s["status"] for s in wire["steps"]] == ["reused"] * 3
    assert wire["steps"][1]["key"] == second.step("train").key and "model" in wire["steps"][1]["outputs"]


async def test_a_helper_module_change_reruns_train_and_what_reads_it(project: Project, backend: HostBackend) -> None:
    await run(project, backend)
    project.ran()
    project.write("src/train/helpers.py", "SCALE = 4\n")
    report = await run(project, backend)
    assert statuses(report) == {"prepare": "reused", "train": "ran", "evaluate": "ran"}
    assert project.ran() == ["train", "evaluate"]


async def test_a_helper_change_that_keeps_the_output_reuses_downstream(project: Project, backend: HostBackend) -> None:
    await run(project, backend)
    project.ran()
    project.write("src/train/helpers.py", "SCALE = 3  # same value, new bytes\n")
    report = await run(project, backend)
    assert statuses(report) == {"prepare": "reused", "train": "ran", "evaluate": "reused"}
    assert project.ran() == ["train"]


async def test_amlignored_files_change_nothing_and_amlignore_beats_gitignore(project: Project,
                                                                             backend: HostBackend) -> None:
    await run(project, backend)
    project.ran()
    project.write("src/train/notes.txt", "edited: .amlignore excludes me\n")
    project.write("src/train/debug.log", "new file matching *.log\n")
    assert statuses(await run(project, backend)) == dict.fromkeys(ALL, "reused")
    assert project.ran() == []
    # scratch.txt is excluded only by .gitignore, which is not read while .amlignore exists.
    project.write("src/train/scratch.txt", "edited\n")
    assert statuses(await run(project, backend)) == {"prepare": "reused", "train": "ran", "evaluate": "reused"}
    assert project.ran() == ["train"]


async def test_touching_an_input_reruns_nothing_changing_it_reruns_from_its_reader(project: Project,
                                                                                   backend: HostBackend) -> None:
    await run(project, backend)
    project.ran()
    raw = project.root / "data/raw.csv"
    os.utime(raw, ns=(raw.stat().st_atime_ns + 10**9, raw.stat().st_mtime_ns + 10**9))
    assert statuses(await run(project, backend)) == dict.fromkeys(ALL, "reused")
    project.write("data/raw.csv", "1\n2\n4\n")
    assert statuses(await run(project, backend)) == dict.fromkeys(ALL, "ran")
    assert project.ran() == ALL


async def test_allow_reuse_false_always_runs_and_downstream_follows_output_digests(project: Project,
                                                                                   backend: HostBackend) -> None:
    text = (project.root / "pipeline.yml").read_text()
    project.write("pipeline.yml", text.replace("outputs: [model]", "outputs: [model]\n    allow_reuse: false"))
    await run(project, backend)
    project.ran()
    report = await run(project, backend)
    assert statuses(report) == {"prepare": "reused", "train": "ran", "evaluate": "reused"}
    assert project.ran() == ["train"]


async def test_labels_and_azure_only_fields_are_not_in_the_key_but_the_variant_is(project: Project,
                                                                                backend: HostBackend) -> None:
    await run(project, backend)
    project.ran()
    text = (project.root / "pipeline.yml").read_text()
    text = text.replace("- name: evaluate", "- name: score").replace(
        "outputs: [model]", "outputs: [model]\n    compute_target: gpu-cluster\n    hash_paths: [train.py]")
    project.write("pipeline.yml", text)
    assert statuses(await run(project, backend)) == {"prepare": "reused", "train": "reused", "score": "reused"}
    project.write("pipeline.yml", text.replace("outputs: [model]", "outputs: [model]\n    variant: gpu"))
    assert statuses(await run(project, backend)) == {"prepare": "reused", "train": "ran", "score": "reused"}


async def test_regenerate_outputs_runs_every_step(project: Project, backend: HostBackend) -> None:
    first = await run(project, backend)
    project.ran()
    again = await run(project, backend, regenerate_outputs=True)
    assert statuses(again) == dict.fromkeys(ALL, "ran") and project.ran() == ALL
    assert [s.key for s in again.steps] == [s.key for s in first.steps]


async def test_a_failing_step_stops_its_downstream_and_is_not_stored(project: Project, backend: HostBackend) -> None:
    good = (project.root / "src/train/train.py").read_text()
    project.write("src/train/train.py", good + "raise SystemExit('the loss went to NaN')\n")
    report = await run(project, backend)
    assert statuses(report) == {"prepare": "ran", "train": "failed", "evaluate": "skipped"}
    assert project.ran() == ["prepare", "train"]
    train = report.step("train")
    assert train.error == "step 'train' failed: exit status 1" and "the loss went to NaN" in train.log_tail
    assert train.key is not None and train.key not in backend.stored_keys()
    assert "train" in (report.step("evaluate").error or "")
    with pytest.raises(Exception, match=r"(?s)step 'train' failed.*the loss went to NaN"):
        report.raise_for_failure()
    project.write("src/train/train.py", good)
    assert statuses(await run(project, backend)) == {"prepare": "reused", "train": "ran", "evaluate": "ran"}


async def test_a_script_excluded_by_its_ignore_file_is_refused_before_anything_runs(project: Project,
                                                                                    backend: HostBackend) -> None:
    project.write("src/train/.amlignore", "train.py\n")
    with pytest.raises(TreeError, match="train.py is excluded from the snapshot"):
        await run(project, backend)
    assert project.ran() == []


def two_independent_steps(project: Project, wait_for_other: bool) -> None:
    """Steps a and b, reading nothing; with ``wait_for_other`` each waits until the other has started."""
    for me, other in (("a", "b"), ("b", "a")):
        project.write(f"par/{me}.py", textwrap.dedent(f"""
            import os, sys, time
            open(os.environ["LEDGER"], "a").write("{me}-start\\n")
            deadline = time.monotonic() + 20
            while {wait_for_other} and "{other}-start" not in open(os.environ["LEDGER"]).read():
                if time.monotonic() > deadline:
                    sys.exit("{other} never started")
                time.sleep(0.02)
            open(os.environ["LEDGER"], "a").write("{me}-end\\n")
            open(sys.argv[1] + "/done", "w").write("{me}")
        """))
    project.write("par.yml", textwrap.dedent("""
        defaults: {source_directory: par}
        steps:
          - {name: a, script_name: a.py, arguments: ["${{outputs.a_out}}"], outputs: [a_out]}
          - {name: b, script_name: b.py, arguments: ["${{outputs.b_out}}"], outputs: [b_out]}
    """))


async def test_independent_steps_run_concurrently(project: Project, backend: HostBackend) -> None:
    two_independent_steps(project, wait_for_other=True)
    report = await run_pipeline(load_pipeline(project.root / "par.yml"), backend, max_parallel=2)
    assert statuses(report) == {"a": "ran", "b": "ran"}


async def test_max_parallel_bounds_how_many_run_at_once(project: Project, backend: HostBackend) -> None:
    two_independent_steps(project, wait_for_other=False)
    report = await run_pipeline(load_pipeline(project.root / "par.yml"), backend, max_parallel=1)
    assert statuses(report) == {"a": "ran", "b": "ran"}
    events = project.ran()
    first = events[0][0]
    assert events == [f"{first}-start", f"{first}-end", *(f"{'ab'.replace(first, '')}-{e}" for e in ("start", "end"))]


@pytest.mark.parametrize("keep_going", [False, True])
async def test_continue_on_step_failure(project: Project, backend: HostBackend, keep_going: bool) -> None:
    project.write("par/a.py", "raise SystemExit('a fails')\n")
    project.write("par/b.py", "import sys\nopen(sys.argv[1] + '/done', 'w').write('b')\n")
    project.write("par.yml", textwrap.dedent("""
        defaults: {source_directory: par}
        steps:
          - {name: a, script_name: a.py, outputs: [a_out]}
          - {name: b, script_name: b.py, arguments: ["${{outputs.b_out}}"], outputs: [b_out]}
    """))
    report = await run_pipeline(load_pipeline(project.root / "par.yml"), backend, max_parallel=1,
                                continue_on_step_failure=keep_going)
    assert statuses(report) == {"a": "failed", "b": "ran" if keep_going else "skipped"}


async def test_a_backend_error_is_that_steps_failure_not_a_crash(project: Project, backend: HostBackend) -> None:
    class Broken(HostBackend):
        async def run_step(self, job: StepJob) -> StoredStep:
            if job.step.name == "train":
                raise OSError(28, "No space left on device")
            return await super().run_step(job)

    report = await run(project, Broken(backend.store, backend.ledger))
    assert statuses(report) == {"prepare": "ran", "train": "failed", "evaluate": "skipped"}
    assert "No space left on device" in (report.step("train").error or "")


async def test_the_digest_cache_changes_no_key(project: Project, backend: HostBackend, tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "digests", racy_window_ns=0)
    plain = await run(project, backend)
    cached = [await run(project, backend, cache=cache) for _ in range(2)]
    assert [s.key for s in plain.steps] == [s.key for s in cached[0].steps] == [s.key for s in cached[1].steps]


def test_step_failed_message_names_the_step_and_shows_the_tail() -> None:
    error = StepFailed("train", "exit status 2", "line 1\nTraceback: boom\n")
    assert str(error) == "step 'train' failed: exit status 2\n--- end of its log ---\nline 1\nTraceback: boom"
