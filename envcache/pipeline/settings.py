"""The pipeline settings the daemon's config composes (``[pipeline]`` in config/envcache.toml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PipelineSettings:
    #: Seconds one step may run before its container is stopped and the step fails.
    step_timeout: int = 86400
