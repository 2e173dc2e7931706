"""Errors a pipeline can raise to a user: a bad pipeline, a bad source tree, a failed step."""

from __future__ import annotations

from envcache.errors import DefinitionError, EnvcacheError, InvalidInput


class PipelineDefinitionError(DefinitionError):
    """A pipeline file or Python pipeline is invalid; the message starts with the field path."""


class TreeError(InvalidInput):
    """A source directory or input cannot be snapshotted (broken link, loop, unreadable file)."""


def with_log_tail(message: str, log_tail: str) -> str:
    """A step failure as the user reads it: the error, then the end of the step's log."""
    return message + ("\n--- end of its log ---\n" + log_tail.rstrip("\n") if log_tail.strip() else "")


class StepFailed(EnvcacheError):
    """A step ran and failed. Raised by a ``run_step`` implementation; ``log_tail`` is the end of
    its log, which the pipeline report carries so the user sees why without looking elsewhere."""

    def __init__(self, step: str, reason: str, log_tail: str = "") -> None:
        self.step = step
        self.reason = reason
        self.log_tail = log_tail
        super().__init__(with_log_tail(f"step {step!r} failed: {reason}", log_tail))


class PipelineFailed(EnvcacheError):
    """A pipeline run ended with a failed step; the message is that step's error, log tail included."""
