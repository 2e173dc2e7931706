"""Running a pipeline: reuse every step whose key is stored, run the rest, in data-flow order.

The scheduler is pure orchestration. What a step runs in and where results live come from a
:class:`StepBackend` the caller supplies (the daemon: ensure the image, run the script in a
container, store outputs as ``envcache/step:<key>``). A run has two phases:

1. **Freeze** (at submission, as Azure ML uploads its snapshots then): snapshot every source
   directory and hash every file/directory input, each once. A bad tree (a script its ignore
   file excludes, a broken link) is an error before anything runs.
2. **Execute**: a step starts once every step it reads from is done; at most ``max_parallel``
   steps are in flight. Its key is computed from its environment, snapshot, script, arguments,
   input digests and output names (:func:`envcache.pipeline.keys.step_key`). If reuse is allowed
   (``allow_reuse`` and not ``regenerate_outputs``) and the key is stored, the step is *reused*:
   nothing runs and downstream steps see the stored output digests. Otherwise it *runs*.

A step that fails (``run_step`` raises) is reported with its error and log tail; every step that
reads from it, directly or not, is *skipped*. With ``continue_on_step_failure=False`` (Azure's
default) no new step starts after a failure; steps already running finish and are kept.
Outputs are compared by content digest, so a step re-run with ``allow_reuse=False`` that writes
the same bytes leaves its downstream keys unchanged (Azure compares data locations and re-runs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from envcache.errors import EnvcacheError
from envcache.pipeline.digest_cache import DigestCache
from envcache.pipeline.errors import PipelineFailed, StepFailed, TreeError, with_log_tail
from envcache.pipeline.keys import step_key
from envcache.pipeline.model import DataInput, OutputInput, PipelineModel, Step
from envcache.pipeline.tree import Tree, read_tree, snapshot

Status = Literal["reused", "ran", "failed", "skipped"]


@dataclass(frozen=True)
class Environment:
    """Where a step runs: the image key and variant of its environment."""

    image_key: str
    variant: str


@dataclass(frozen=True)
class StoredStep:
    """A step result as stored under its key: each output's tree digest."""

    key: str
    outputs: Mapping[str, str]


@dataclass(frozen=True)
class ResolvedInput:
    """An input as the runner needs it: its digest, plus either the host tree or its producer."""

    name: str
    digest: str
    tree: Tree | None = None                    # a file/directory input, as hashed at submission
    producer: tuple[str, str] | None = None     # (step, output) for an earlier step's output


@dataclass(frozen=True)
class StepJob:
    """Everything ``run_step`` needs to run one step and store its result under ``key``."""

    step: Step
    key: str
    environment: Environment
    snapshot: Tree
    inputs: tuple[ResolvedInput, ...]


@runtime_checkable
class StepBackend(Protocol):
    """What the scheduler asks of the daemon (or of a test's host runner)."""

    async def environment_of(self, step: Step) -> Environment: ...

    async def lookup_step(self, key: str) -> StoredStep | None: ...

    async def run_step(self, job: StepJob) -> StoredStep:
        """Run the step, store its outputs under ``job.key``, return them; raise StepFailed on failure."""
        ...


@dataclass
class StepReport:
    name: str
    status: Status
    seconds: float = 0.0
    key: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    log_tail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 3), "key": self.key,
                "outputs": dict(self.outputs), "error": self.error, "log_tail": self.log_tail}


@dataclass
class PipelineReport:
    steps: list[StepReport]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(step.status in ("reused", "ran") for step in self.steps)

    def step(self, name: str) -> StepReport:
        return next(step for step in self.steps if step.name == name)

    def raise_for_failure(self) -> None:
        failed = next((step for step in self.steps if step.status == "failed"), None)
        if failed is not None:
            raise PipelineFailed(with_log_tail(failed.error or f"step {failed.name!r} failed", failed.log_tail))

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "seconds": round(self.seconds, 3), "steps": [step.to_dict() for step in self.steps]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineReport:
        """A report as the daemon's API sends it (the inverse of :meth:`to_dict`)."""
        return cls([StepReport(**step) for step in data["steps"]], data["seconds"])


@dataclass(frozen=True)
class FrozenPipeline:
    """A pipeline with its snapshots and file/directory inputs hashed: what a submission runs."""

    pipeline: PipelineModel
    snapshots: Mapping[str, Tree]               # step name → snapshot of its source directory
    data: Mapping[Path, Tree]                   # input path → its tree


def freeze(pipeline: PipelineModel, *, cache: DigestCache | None = None) -> FrozenPipeline:
    """Phase 1: hash every source directory and data input once (blocking: call it in a thread)."""
    by_directory: dict[Path, Tree] = {}
    snapshots: dict[str, Tree] = {}
    data: dict[Path, Tree] = {}
    for step in pipeline.steps:
        if step.source_directory not in by_directory:
            by_directory[step.source_directory] = snapshot(step.source_directory, cache=cache)
        tree = snapshots[step.name] = by_directory[step.source_directory]
        if not tree.has_file(step.script_name):
            raise TreeError(f"step {step.name!r}: {step.script_name} is excluded from the snapshot of "
                            f"{step.source_directory} by its ignore file")
        for item in step.inputs:
            if isinstance(item, DataInput) and item.path not in data:
                data[item.path] = read_tree(item.path, cache=cache)
    return FrozenPipeline(pipeline, snapshots, data)


async def run_pipeline(pipeline: PipelineModel, backend: StepBackend, *, regenerate_outputs: bool = False,
                       continue_on_step_failure: bool = False, max_parallel: int = 2,
                       cache: DigestCache | None = None) -> PipelineReport:
    """Freeze (in a worker thread, so the event loop keeps serving) and execute a pipeline."""
    frozen = await asyncio.to_thread(freeze, pipeline, cache=cache)
    return await execute(frozen, backend, regenerate_outputs=regenerate_outputs,
                         continue_on_step_failure=continue_on_step_failure, max_parallel=max_parallel)


async def execute(frozen: FrozenPipeline, backend: StepBackend, *, regenerate_outputs: bool = False,
                  continue_on_step_failure: bool = False, max_parallel: int = 2) -> PipelineReport:
    """Phase 2: reuse or run every step, independent ones concurrently (at most ``max_parallel``)."""
    if max_parallel < 1:
        raise ValueError("max_parallel must be at least 1")
    pipeline = frozen.pipeline
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    done: dict[str, asyncio.Future[StepReport]] = {step.name: loop.create_future() for step in pipeline.steps}
    slots = asyncio.Semaphore(max_parallel)
    failures: list[str] = []

    async def settle(step: Step) -> None:
        upstream = {name: await done[name] for name in pipeline.upstream(step)}
        blocked = [name for name, report in upstream.items() if report.status in ("failed", "skipped")]
        if blocked:
            report = StepReport(step.name, "skipped", error=f"not run: step {blocked[0]!r} did not complete")
        else:
            async with slots:
                if failures and not continue_on_step_failure:
                    report = StepReport(step.name, "skipped", error=f"not run: step {failures[0]!r} failed")
                else:
                    report = await _attempt(frozen, backend, step, upstream, regenerate_outputs)
        if report.status == "failed":
            failures.append(step.name)
        done[step.name].set_result(report)

    async with asyncio.TaskGroup() as group:
        for step in pipeline.steps:
            group.create_task(settle(step))
    return PipelineReport([done[step.name].result() for step in pipeline.steps], time.perf_counter() - started)


async def _attempt(frozen: FrozenPipeline, backend: StepBackend, step: Step, upstream: Mapping[str, StepReport],
                   regenerate_outputs: bool) -> StepReport:
    started = time.perf_counter()
    key: str | None = None
    try:
        environment = await backend.environment_of(step)
        inputs = tuple(_resolve(frozen, item, upstream) for item in step.inputs)
        snapshot_tree = frozen.snapshots[step.name]
        key = step_key(image_key=environment.image_key, variant=environment.variant, snapshot=snapshot_tree.digest,
                       script_name=step.script_name, arguments=step.arguments,
                       inputs={item.name: item.digest for item in inputs}, outputs=step.outputs, version=step.version)
        if step.allow_reuse and not regenerate_outputs:
            stored = await backend.lookup_step(key)
            if stored is not None and set(stored.outputs) == set(step.outputs):
                return StepReport(step.name, "reused", time.perf_counter() - started, key, dict(stored.outputs))
        stored = await backend.run_step(StepJob(step, key, environment, snapshot_tree, inputs))
        missing = set(step.outputs) - set(stored.outputs)
        if missing:
            raise StepFailed(step.name, f"the runner returned no digest for output(s) {', '.join(sorted(missing))}")
        return StepReport(step.name, "ran", time.perf_counter() - started, key, dict(stored.outputs))
    except StepFailed as exc:
        return StepReport(step.name, "failed", time.perf_counter() - started, key,
                          error=f"step {step.name!r} failed: {exc.reason}", log_tail=exc.log_tail)
    except Exception as exc:  # a backend error is this step's failure, reported, never a traceback
        reason = str(exc) if isinstance(exc, EnvcacheError) else f"{type(exc).__name__}: {exc}"
        return StepReport(step.name, "failed", time.perf_counter() - started, key,
                          error=f"step {step.name!r} failed: {reason}")


def _resolve(frozen: FrozenPipeline, item: DataInput | OutputInput, upstream: Mapping[str, StepReport]) -> ResolvedInput:
    if isinstance(item, DataInput):
        tree = frozen.data[item.path]
        return ResolvedInput(item.name, tree.digest, tree=tree)
    producer = frozen.pipeline.producer(item.output)
    return ResolvedInput(item.name, upstream[producer.name].outputs[item.output], producer=(producer.name, item.output))
