"""Pipeline runs in the daemon: the :class:`~envcache.pipeline.StepBackend` over the engine and the
store, and the runs the API starts and reports.

A submission arrives frozen (see :func:`frozen_from_request`): every step's snapshot and every
file input as a listing of files whose bytes the client uploaded as blobs beforehand. Runs use
copies materialised from the store by digest, never the client's directories, so a file edited
after submission cannot be filed under the old key.

A step runs in its environment's image (ensured like ``POST /api/v1/ensure``: hit, pull or
build) through the engine layer: the snapshot as a throwaway writable ``/snapshot`` (the working
directory), each input read-only under ``/inputs/<name>``, each output a writable
``/outputs/<name>``, no network, the daemon's uid:gid. Runs of one key share one execution
(single-flight, like ``ensure``): a second submission of the same step waits for the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import msgspec

from envcache.builder.engines.base import TAIL_LINES, Engine, Mount
from envcache.builder.errors import EngineUnavailable
from envcache.builder.stored import load_image
from envcache.errors import InvalidInput, NotFound
from envcache.pipeline import (
    DataInput, Environment, FrozenPipeline, OutputInput, PipelineModel, PipelineReport, Step, StepFailed, StepJob,
    StoredStep, Tree, execute,
)
from envcache.pipeline.artifact import (
    adopt_artifact, materialise_output, materialise_tree, store_result, stored_result,
)
from envcache.pipeline.errors import TreeError
from envcache.pipeline.model import NAME_RE, PLACEHOLDER_RE
from envcache.pipeline.settings import PipelineSettings
from envcache.pipeline.tree import tree_from_listing
from envcache.service import requests, schemas
from envcache.service.ensure import Ensurer
from envcache.store import Store, StepResult

#: Finished runs kept in memory for ``GET /api/v1/pipeline-runs/{id}``.
KEPT_RUNS = 200
#: The interpreter a step's script runs with: ``python`` if the image has one, else ``python3``.
PYTHON = ["sh", "-c", 'exec "$(command -v python || command -v python3)" "$@"', "python"]


LogFn = Callable[[str], None]
Environments = dict[str, tuple[schemas.Subject, str]]   # step name → (its environment, variant)


class LogLines:
    """A log kept whole and fanned out: every follower reads from the start, then waits for more."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ended = False
        self._changed = asyncio.Event()

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[str]:
        index = 0
        while True:
            while index < len(self.lines):
                yield self.lines[index]
                index += 1
            if self.ended:
                return
            await self._changed.wait()


@dataclass
class Execution:
    """One run of one step key, shared by every submission that needs it; its output goes to
    each of their logs (a submission that joins late gets what was written so far first)."""

    lines: list[str] = field(default_factory=list)
    sinks: list[LogFn] = field(default_factory=list)

    def log(self, line: str) -> None:
        self.lines.append(line)
        for sink in self.sinks:
            sink(line)

    def attach(self, sink: LogFn) -> None:
        for line in self.lines:
            sink(line)
        self.sinks.append(sink)


class StepRunner:
    """Daemon-wide: reuse lookups and runs of steps, one execution per step key at a time."""

    def __init__(self, store: Store, engine: Callable[[], Awaitable[Engine | None]], ensurer: Ensurer,
                 definitions: requests.Definitions, *, pull: Callable[[str], Awaitable[bool]],
                 push: Callable[[str], Awaitable[object]], settings: PipelineSettings) -> None:
        """``engine`` answers the daemon's engine (detected on first use), or None; ``pull`` copies
        a step result in from an upstream registry (True if one had it); ``push`` queues one
        for the push upstreams."""
        self._store = store
        self._engine = engine
        self._ensurer = ensurer
        self._definitions = definitions
        self._pull = pull
        self._push = push
        self._timeout = settings.step_timeout
        self._inflight: dict[str, tuple[Execution, asyncio.Task[StepResult]]] = {}

    async def environment(self, subject: schemas.Subject, variant: str, where: str) -> Environment:
        """The step's image, ensured (a hit, or a pull/build waited for)."""
        definition, _ = await self._definitions.of(subject, where)
        outcome = await self._ensurer.ensure(definition, variant)
        image = outcome.image
        if image is None:
            assert outcome.build is not None
            image = await asyncio.shield(outcome.build.wait())  # others may wait for the build too
        return Environment(image.key, image.variant)

    async def lookup(self, key: str) -> StepResult | None:
        """The stored result of ``key``: local, else pulled from an upstream that has it."""
        result = await stored_result(self._store, key)
        if result is None and await self._pull(key):
            result = await adopt_artifact(self._store, key)
        if result is not None:
            await self._store.steps.touch({key: time.time()})
        return result

    async def run(self, job: StepJob, outputs_by_tree: dict[str, str], log: LogFn) -> StepResult:
        """Run ``job`` (or join the run of its key already under way); its output goes to ``log``."""
        if job.key not in self._inflight:
            execution = Execution()
            task = asyncio.get_running_loop().create_task(self._run_and_share(job, dict(outputs_by_tree), execution))
            self._inflight[job.key] = (execution, task)
            task.add_done_callback(lambda _: self._inflight.pop(job.key, None))
        execution, task = self._inflight[job.key]
        execution.attach(log)
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Daemon shutdown: stop running steps (their containers are removed by the engine)."""
        tasks = [task for _, task in self._inflight.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _image_in_engine(self, image_key: str) -> str:
        engine = await self._engine()
        if engine is None:
            raise EngineUnavailable("no container engine available to run pipeline steps: install Docker (and "
                                    "start dockerd) or buildah, or set [build] engine / docker_host")
        image = await self._store.images.get(image_key)
        manifest = await self._store.get_manifest(image.repository, image.manifest_digest) if image else None
        if image is None or manifest is None:
            raise NotFound(f"image {image_key} is no longer in the cache")
        local = f"{image.repository}:{image.tag}"
        if await engine.inspect(local) is None:
            await load_image(self._store, engine, manifest, local)
        return local

    async def _run_and_share(self, job: StepJob, outputs_by_tree: dict[str, str], execution: Execution) -> StepResult:
        result = await self._run(job, outputs_by_tree, execution)
        await self._push(job.key)
        return result

    async def _run(self, job: StepJob, outputs_by_tree: dict[str, str], execution: Execution) -> StepResult:
        step = job.step
        image = await self._image_in_engine(job.environment.image_key)
        engine = await self._engine()
        assert engine is not None
        started = time.time()
        with self._store.files.scratch("envcache-step-") as work:
            await materialise_tree(self._store, job.snapshot, work / "snapshot")
            mounts = [Mount(work / "snapshot", "/snapshot", read_only=False)]
            inputs: dict[str, str] = {}
            for item in job.inputs:
                host, target = work / "inputs" / item.name, f"/inputs/{item.name}"
                if item.tree is not None:
                    await materialise_tree(self._store, item.tree, host)
                    inputs[item.name] = f"{target}/{item.tree.files[0].path}" if item.tree.kind == "file" else target
                else:
                    await materialise_output(self._store, outputs_by_tree[item.digest], host)
                    inputs[item.name] = target
                mounts.append(Mount(host, target, read_only=True))
            outputs = {name: work / "outputs" / name for name in step.outputs}
            for name, host in outputs.items():
                host.mkdir(parents=True)
                mounts.append(Mount(host, f"/outputs/{name}", read_only=False))
            argv = [*PYTHON, step.script_name, *step.argv(inputs, {name: f"/outputs/{name}" for name in outputs})]
            try:
                ran = await engine.run_mounted(image, argv, workdir="/snapshot", mounts=mounts, env={},
                                       user=f"{os.getuid()}:{os.getgid()}", network=False,
                                       labels={"envcache.step": job.key, "envcache.step.name": step.name},
                                       log=execution.log, timeout=self._timeout)
            except TimeoutError:
                raise StepFailed(step.name, f"stopped after {self._timeout}s ([pipeline] step_timeout)",
                                 "\n".join(execution.lines[-TAIL_LINES:])) from None
            if ran.exit_code != 0:
                raise StepFailed(step.name, f"exit status {ran.exit_code}", ran.log_tail)
            record = {
                "key": job.key, "step": step.name, "script_name": step.script_name, "arguments": list(step.arguments),
                "image_key": job.environment.image_key, "variant": job.environment.variant,
                "snapshot": job.snapshot.digest, "inputs": {item.name: item.digest for item in job.inputs},
                "started": started, "finished": time.time(), "exit_code": ran.exit_code,
            }
            return await store_result(self._store, key=job.key, step=step.name, record=record, outputs=outputs,
                                      snapshot=job.snapshot, log="\n".join(execution.lines) + "\n", scratch=work)


class RunBackend:
    """The scheduler's backend for one submission: its environments, and where each output
    tree digest it has seen is stored (the tar layer a downstream step unpacks)."""

    def __init__(self, runner: StepRunner, environments: Environments, log: LogFn) -> None:
        self._runner = runner
        self._log = log
        self._environments = environments
        self._outputs_by_tree: dict[str, str] = {}

    async def environment_of(self, step: Step) -> Environment:
        subject, variant = self._environments[step.name]
        return await self._runner.environment(subject, variant, f"step {step.name!r}: environment: ")

    def _stored(self, result: StepResult) -> StoredStep:
        self._outputs_by_tree.update(result.outputs.values())
        return StoredStep(result.key, {name: tree for name, (tree, _) in result.outputs.items()})

    async def lookup_step(self, key: str) -> StoredStep | None:
        result = await self._runner.lookup(key)
        return self._stored(result) if result is not None else None

    async def run_step(self, job: StepJob) -> StoredStep:
        name = job.step.name
        result = await self._runner.run(job, self._outputs_by_tree, lambda line: self._log(f"{name} | {line}"))
        return self._stored(result)


@dataclass
class PipelineRun:
    id: str
    created: float
    state: str = "running"            # running → succeeded | failed
    finished: float | None = None
    report: PipelineReport | None = None
    error: str | None = None
    log: LogLines = field(default_factory=LogLines)

    def model(self) -> schemas.PipelineRun:
        return schemas.PipelineRun(id=self.id, state=self.state, created=self.created, finished=self.finished,
                                   error=self.error,
                                   report=msgspec.convert(self.report.to_dict(), schemas.PipelineReport)
                                   if self.report else None)


class PipelineRuns:
    """Submissions the daemon is running or ran recently (in memory; results are in the store)."""

    def __init__(self, runner: StepRunner) -> None:
        self.runner = runner
        self._runs: dict[str, PipelineRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, body: schemas.PipelineRunRequest) -> PipelineRun:
        frozen, environments = frozen_from_request(body)
        run = PipelineRun(uuid.uuid4().hex, time.time())
        self._runs[run.id] = run
        while len(self._runs) > KEPT_RUNS:
            oldest = next(iter(self._runs))
            if self._runs[oldest].state == "running":
                break
            del self._runs[oldest]
        backend = RunBackend(self.runner, environments, run.log)
        task = asyncio.get_running_loop().create_task(self._execute(run, frozen, backend, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    async def _execute(self, run: PipelineRun, frozen: FrozenPipeline, backend: RunBackend,
                       body: schemas.PipelineRunRequest) -> None:
        try:
            run.report = await execute(frozen, backend, regenerate_outputs=body.regenerate_outputs,
                                       continue_on_step_failure=body.continue_on_step_failure,
                                       max_parallel=body.max_parallel)
            run.state = "succeeded" if run.report.ok else "failed"
        except asyncio.CancelledError:
            run.state, run.error = "failed", "cancelled: the daemon is shutting down"
            raise
        finally:
            run.finished = time.time()
            run.log.end()

    def get(self, run_id: str) -> PipelineRun:
        run = self._runs.get(run_id)
        if run is None:
            raise NotFound(f"no pipeline run with id {run_id!r}")
        return run

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self.runner.close()


def _tree(listing: schemas.TreeListing, where: str) -> Tree:
    try:
        return tree_from_listing(listing.kind, [tuple(entry) for entry in listing.files])  # type: ignore[misc]
    except TreeError as exc:
        raise InvalidInput(f"{where}: {exc}") from None


def frozen_from_request(body: schemas.PipelineRunRequest) -> tuple[FrozenPipeline, Environments]:
    """The submission as the scheduler runs it; bad input names the field (``steps[1].inputs.raw``)."""
    steps: list[Step] = []
    snapshots: dict[str, Tree] = {}
    data: dict[Path, Tree] = {}
    environments: Environments = {}
    produced: set[str] = set()
    for index, item in enumerate(body.steps):
        where = f"steps[{index}]"
        if item.name in snapshots:
            raise InvalidInput(f"{where}.name: duplicate step name {item.name!r}")
        snapshot = snapshots[item.name] = _tree(item.snapshot, f"{where}.snapshot")
        script = PurePosixPath(item.script_name)
        if not snapshot.has_file(str(script)):
            raise InvalidInput(f"{where}.script_name: {item.script_name!r} is not in the step's snapshot")
        inputs: list[DataInput | OutputInput] = []
        for name, spec in item.inputs.items():
            if not NAME_RE.match(name):
                raise InvalidInput(f"{where}.inputs: {name!r} is not a valid input name")
            if spec.output is not schemas.UNSET:
                if spec.output not in produced:
                    raise InvalidInput(f"{where}.inputs.{name}.output: no earlier step has an output named "
                                       f"{spec.output!r}")
                inputs.append(OutputInput(name, spec.output))
            elif spec.tree is not schemas.UNSET:
                path = Path(f"/{index}/{name}")  # a placeholder: the tree is what counts
                data[path] = _tree(spec.tree, f"{where}.inputs.{name}.tree")
                inputs.append(DataInput(name, path))
            else:
                raise InvalidInput(f"{where}.inputs.{name}: give either 'output' or 'tree'")
        for position, output in enumerate(item.outputs):
            if not NAME_RE.match(output) or output in produced:
                raise InvalidInput(f"{where}.outputs[{position}]: {output!r} is not a new, valid output name")
            produced.add(output)
        declared = {"inputs": set(item.inputs), "outputs": set(item.outputs)}
        for position, argument in enumerate(item.arguments):
            for match in PLACEHOLDER_RE.finditer(argument):
                if match[2] not in declared[match[1]]:
                    raise InvalidInput(f"{where}.arguments[{position}]: {match[0]} names no declared {match[1][:-1]}")
        environments[item.name] = (item.environment, requests.variant(item.variant))
        steps.append(Step(name=item.name, script_name=str(script), source_directory=Path("/snapshot"),
                          arguments=tuple(item.arguments), inputs=tuple(inputs), outputs=tuple(item.outputs),
                          variant=item.variant, allow_reuse=item.allow_reuse, version=item.version))
    return FrozenPipeline(PipelineModel(tuple(steps), body.description), snapshots, data), environments


