"""The Python API, with Azure ML's names: code written for ``azureml-pipeline`` reads the same here.

    prepared = PipelineData("prepared")
    raw = Dataset.File.from_files("data/raw.csv").as_named_input("raw")
    prepare = PythonScriptStep("prepare.py", source_directory="src/prepare",
                               arguments=["--raw", raw, "--out", prepared], inputs=[raw], outputs=[prepared])
    train = PythonScriptStep("train.py", source_directory="src/train",
                             arguments=[prepared, model], inputs=[prepared], outputs=[model])
    run = Pipeline(workspace, [train]).submit("exp", regenerate_outputs=False)   # prepare comes along
    run.wait_for_completion()

A step object becomes the same plain data as the YAML format and goes through the same checks
(:func:`envcache.pipeline.model.pipeline_from_data`); relative paths are taken from the current
directory, as Azure does. The *workspace* is an envcache daemon (:class:`DaemonWorkspace`) or
anything else that runs steps (a :class:`StepBackend`).

Differences from Azure, on purpose: ``hash_paths`` is accepted and unnecessary (the whole
snapshot is hashed); ``compute_target``, ``datastore`` and mount modes are accepted and do not
matter (steps run in their environment's image, outputs live in envcache's registry);
``params`` is refused (put values in ``arguments``, which are hashed); an output needs a name
(Azure invents a random one, which would make every run a new key).
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from envcache.pipeline.digest_cache import DigestCache
from envcache.pipeline.errors import PipelineDefinitionError
from envcache.pipeline.model import PipelineModel, pipeline_from_data
from envcache.pipeline.scheduler import PipelineReport, StepBackend, StepReport, execute, freeze
from envcache.pipeline.submit import DaemonWorkspace

SOURCE = "Pipeline"


class PipelineData:
    """An output of one step that later steps read (Azure's ``PipelineData``)."""

    def __init__(self, name: str, datastore: Any = None) -> None:
        if not isinstance(name, str) or not name:
            raise PipelineDefinitionError(f"PipelineData needs a name, got {name!r}", source=SOURCE)
        self.name = name
        self.datastore = datastore
        self._producer: PythonScriptStep | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class OutputFileDatasetConfig(PipelineData):
    """Azure's newer name for a step output; here the same as :class:`PipelineData`."""

    def __init__(self, name: str, destination: Any = None) -> None:
        super().__init__(name, datastore=destination)


class DatasetInput:
    """A file or directory on this machine given to a step under a name (``as_named_input``)."""

    def __init__(self, name: str, path: str | Path) -> None:
        self.name = name
        self.path = str(path)

    def as_mount(self) -> DatasetInput:
        return self  # inputs are always mounted read-only

    def as_download(self) -> DatasetInput:
        return self


class FileDataset:
    def __init__(self, path: str | Path) -> None:
        self.path = path

    def as_named_input(self, name: str) -> DatasetInput:
        return DatasetInput(name, self.path)


class Dataset:
    """``Dataset.File.from_files(path)``: a local file or directory, as Azure's file datasets."""

    class File:
        @staticmethod
        def from_files(path: str | Path) -> FileDataset:
            return FileDataset(path)


class PythonScriptStep:
    """A step that runs ``script_name`` from ``source_directory`` in its environment's image."""

    def __init__(self, script_name: str, name: str | None = None, arguments: list[Any] | None = None,
                 compute_target: Any = None, runconfig: Any = None, inputs: list[Any] | None = None,
                 outputs: list[PipelineData] | None = None, params: dict[str, Any] | None = None,
                 source_directory: str | Path | None = None, allow_reuse: bool = True, version: str | None = None,
                 hash_paths: list[str] | None = None, *, environment: str | None = None,
                 variant: str | None = None) -> None:
        label = f"PythonScriptStep({name or script_name!r})"
        if params:
            raise PipelineDefinitionError(f"{label}: params is not supported; pass values in arguments, "
                                          "which are part of the step key", source=SOURCE)
        self.name = name or script_name
        self.inputs = list(inputs or [])
        self.outputs = list(outputs or [])
        for output in self.outputs:
            if not isinstance(output, PipelineData):
                raise PipelineDefinitionError(f"{label}: outputs: expected PipelineData, got {output!r}", source=SOURCE)
            if output._producer is not None and output._producer is not self:
                raise PipelineDefinitionError(f"{label}: output {output.name!r} is already an output of step "
                                              f"{output._producer.name!r}", source=SOURCE)
            output._producer = self
        if environment is None and runconfig is not None:
            environment = getattr(runconfig, "environment", None)
        self.data: dict[str, Any] = {
            "name": self.name, "script_name": script_name, "arguments": [self._argument(a, label) for a in arguments or []],
            "inputs": dict(self._input(i, label) for i in self.inputs), "outputs": [o.name for o in self.outputs],
            "allow_reuse": allow_reuse, "environment": environment, "variant": variant, "version": version,
            "compute_target": compute_target if isinstance(compute_target, str) or compute_target is None
            else getattr(compute_target, "name", str(compute_target)),
            "hash_paths": list(hash_paths or []),
        }
        if source_directory is not None:
            self.data["source_directory"] = str(source_directory)

    def _argument(self, value: Any, label: str) -> Any:
        if isinstance(value, PipelineData):
            if any(value is output for output in self.outputs):
                return f"${{{{outputs.{value.name}}}}}"
            if any(value is item for item in self.inputs):
                return f"${{{{inputs.{value.name}}}}}"
            raise PipelineDefinitionError(f"{label}: arguments: {value!r} is neither in inputs nor in outputs",
                                          source=SOURCE)
        if isinstance(value, DatasetInput):
            if not any(value is item for item in self.inputs):
                raise PipelineDefinitionError(f"{label}: arguments: input {value.name!r} is not in inputs", source=SOURCE)
            return f"${{{{inputs.{value.name}}}}}"
        return value  # strings and numbers; anything else is refused by the model's checks

    def _input(self, value: Any, label: str) -> tuple[str, Any]:
        if isinstance(value, PipelineData):
            return value.name, {"output": value.name}
        if isinstance(value, DatasetInput):
            return value.name, {"path": value.path}
        raise PipelineDefinitionError(f"{label}: inputs: expected PipelineData or a named dataset input, "
                                      f"got {value!r}", source=SOURCE)

    def producers(self) -> list[PythonScriptStep]:
        return [item._producer for item in self.inputs if isinstance(item, PipelineData) and item._producer]


class Pipeline:
    """Steps to run together; ``resolve_closure`` brings in the steps that produce their inputs."""

    def __init__(self, workspace: StepBackend | DaemonWorkspace, steps: list[PythonScriptStep],
                 description: str | None = None,
                 default_source_directory: str | Path | None = None, resolve_closure: bool = True) -> None:
        self.workspace = workspace
        self.description = description
        self.steps = _closure(steps) if resolve_closure else list(steps)
        self.default_source_directory = default_source_directory

    def validate(self) -> PipelineModel:
        """The checked model; raises PipelineDefinitionError naming the step and field."""
        data: dict[str, Any] = {"steps": [step.data for step in self.steps], "description": self.description}
        if self.default_source_directory is not None:
            data["defaults"] = {"source_directory": str(self.default_source_directory)}
        names = [step.name for step in self.steps]

        def locate(field: str) -> str | None:
            index = re.match(r"steps\[(\d+)\]", field)
            return f"step {names[int(index[1])]!r}" if index else None

        return pipeline_from_data(data, base_dir=Path.cwd(), source=SOURCE, locate=locate)

    def submit(self, experiment_name: str | None = None, *, regenerate_outputs: bool = False,
               continue_on_step_failure: bool = False, cache: DigestCache | None = None,
               max_parallel: int = 2) -> PipelineRun:
        """Snapshot everything now (bad input raises here), then run in the background — on the
        daemon when the workspace is a :class:`DaemonWorkspace` (environment paths are taken
        from the current directory, like every other relative path here)."""
        frozen = freeze(self.validate(), cache=cache)
        options = {"regenerate_outputs": regenerate_outputs, "continue_on_step_failure": continue_on_step_failure,
                   "max_parallel": max_parallel}
        if isinstance(self.workspace, DaemonWorkspace):
            return PipelineRun(experiment_name, asyncio.to_thread(self.workspace.run, frozen, base_dir=Path.cwd(),
                                                                  **options))
        if not isinstance(self.workspace, StepBackend):
            raise TypeError("the workspace must be a DaemonWorkspace or run steps itself: environment_of, "
                            "lookup_step and run_step")
        return PipelineRun(experiment_name, execute(frozen, self.workspace, **options))


class Experiment:
    """``Experiment(workspace, name).submit(pipeline, regenerate_outputs=...)``, as in Azure."""

    def __init__(self, workspace: StepBackend | DaemonWorkspace, name: str) -> None:
        self.workspace = workspace
        self.name = name

    def submit(self, config: Pipeline, regenerate_outputs: bool = False,
               continue_on_step_failure: bool = False) -> PipelineRun:
        return config.submit(self.name, regenerate_outputs=regenerate_outputs,
                             continue_on_step_failure=continue_on_step_failure)


class PipelineRun:
    """A submitted pipeline, running on its own thread and event loop."""

    def __init__(self, experiment_name: str | None, coroutine: Any) -> None:
        self.experiment_name = experiment_name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="envcache-pipeline")
        self._future: Future[PipelineReport] = self._pool.submit(asyncio.run, coroutine)
        self._pool.shutdown(wait=False)

    def get_status(self) -> str:
        if not self._future.done():
            return "Running"
        return "Finished" if self._future.result().ok else "Failed"

    def wait_for_completion(self, show_output: bool = True, timeout_seconds: float | None = None,
                            raise_on_error: bool = True) -> str:
        """Wait; print one line per step; raise the first step failure (with its log tail) if asked."""
        report = self._future.result(timeout=timeout_seconds)
        if show_output:
            for step in report.steps:
                print(f"{step.name}: {step.status} in {step.seconds:.1f}s  key {step.key or '-'}")
        if raise_on_error:
            report.raise_for_failure()
        return self.get_status()

    @property
    def report(self) -> PipelineReport:
        return self._future.result()

    def get_steps(self) -> list[StepReport]:
        return self.report.steps


def _closure(steps: list[PythonScriptStep]) -> list[PythonScriptStep]:
    """The steps plus, transitively, the steps producing their inputs (Azure's resolve_closure)."""
    ordered: list[PythonScriptStep] = []
    pending = list(steps)
    while pending:
        step = pending.pop(0)
        if not any(step is seen for seen in ordered):
            ordered.append(step)
            pending.extend(step.producers())
    return ordered
