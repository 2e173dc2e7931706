"""The pipeline file: YAML, documented in README ("Pipeline steps"), relative paths from the file.

    description: train and evaluate           # optional label
    defaults:                                  # optional, for every step that does not say
      environment: env.yml
      variant: cpu
    steps:
      - name: prepare
        script_name: prepare.py                # relative to source_directory; required
        source_directory: src/prepare          # relative to this file; default "."
        arguments: [--raw, "${{inputs.raw}}", --out, "${{outputs.prepared}}"]
        inputs:
          raw: data/raw.csv                    # a file or directory, relative to this file
        outputs: [prepared]                    # output names are unique in the pipeline
      - name: train
        script_name: train.py
        source_directory: src/train
        arguments: ["${{inputs.prepared}}", "${{outputs.model}}"]
        inputs:
          prepared: {output: prepared}         # an earlier step's output, by name
        outputs: [model]
        allow_reuse: true                      # default true
"""

from __future__ import annotations

from pathlib import Path

from envcache.pipeline.definition_io import load_yaml
from envcache.pipeline.model import PipelineModel, pipeline_from_data


def load_pipeline(path: Path) -> PipelineModel:
    """Read and validate a pipeline file; errors name the file, the line and the field."""
    path = Path(path)
    located = load_yaml(path)
    return pipeline_from_data(located.data, base_dir=path.parent, source=str(path), locate=located.locate)
