"""Pipeline steps: run a script in its environment's image once, reuse its outputs while nothing
it depends on changed (Azure ML's ``PythonScriptStep`` with ``allow_reuse``, made exact).

This package is the pure core — source snapshots, input digests, step keys, the pipeline model
(YAML and the Azure-named Python API) and the async scheduler — which imports nothing from
envcache but ``errors`` and, through ``definition_io`` only, two file helpers; and
:mod:`~envcache.pipeline.artifact`, step results as OCI artifacts in the store (not imported
here). Running a step in a container is supplied by the caller through :class:`StepBackend`
(the daemon's is :mod:`envcache.service.pipelines`).
"""

from envcache.pipeline.azure import (
    Dataset, DatasetInput, Experiment, OutputFileDatasetConfig, Pipeline, PipelineData, PipelineRun, PythonScriptStep,
)
from envcache.pipeline.digest_cache import DigestCache
from envcache.pipeline.errors import PipelineDefinitionError, PipelineFailed, StepFailed, TreeError
from envcache.pipeline.ignore import IgnoreRules, ignore_rules
from envcache.pipeline.keys import STEP_KEY_VERSION, step_key
from envcache.pipeline.model import DataInput, OutputInput, PipelineModel, Step, pipeline_from_data
from envcache.pipeline.scheduler import (
    Environment, FrozenPipeline, PipelineReport, ResolvedInput, StepBackend, StepJob, StepReport, StoredStep, execute,
    freeze, run_pipeline,
)
from envcache.pipeline.tree import FileEntry, Tree, read_tree, snapshot
from envcache.pipeline.submit import DaemonWorkspace
from envcache.pipeline.yaml_format import load_pipeline

__all__ = [
    "STEP_KEY_VERSION", "DaemonWorkspace", "DataInput", "Dataset", "DatasetInput", "DigestCache", "Environment",
    "Experiment", "FileEntry", "FrozenPipeline", "IgnoreRules", "OutputFileDatasetConfig", "OutputInput",
    "Pipeline", "PipelineData", "PipelineDefinitionError", "PipelineFailed", "PipelineModel", "PipelineReport",
    "PipelineRun", "PythonScriptStep", "ResolvedInput", "StepBackend", "StepFailed", "StepJob", "StepReport",
    "StoredStep", "Tree", "TreeError", "execute", "freeze", "ignore_rules", "load_pipeline", "pipeline_from_data",
    "read_tree", "run_pipeline", "snapshot", "step_key",
]
