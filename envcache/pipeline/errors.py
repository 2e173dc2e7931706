"""Errors a pipeline can raise to a user: a bad pipeline, a bad source tree, a failed step."""

from __future__ import annotations

from envcache.errors import DefinitionError, EnvcacheError, InvalidInput


class PipelineDefinitionError(DefinitionError):
    """A pipeline file or Python pipeline is invalid; the message starts with the field path."""


class TreeError(InvalidInput):
    """A source directory or input cannot be snapshotted (broken link, loop, unreadable file)."""


class StepFailed(EnvcacheError):
    """A step ran and failed. Raised by a ``run_step`` implementation; ``log_tail`` is the end of
    its log, which the pipeline report carries so the user sees why without looking elsewhere."""

    def __init__(self, step: str, reason: str, log_tail: str = "") -> None:
        self.step = step
        self.reason = reason
        self.log_tail = log_tail
        message = f"step {step!r} failed: {reason}"
        if log_tail.strip():
            message += "\n--- end of its log ---\n" + log_tail.rstrip("\n")
        super().__init__(message)


class PipelineFailed(EnvcacheError):
    """A pipeline run ended with a failed step; the message is that step's error, log tail included."""
