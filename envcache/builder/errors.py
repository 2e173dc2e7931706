"""Errors a build can end with, each carrying what the user needs to act on it."""

from __future__ import annotations

from envcache.errors import EnvcacheError


class BuildFailed(EnvcacheError):
    """A build stopped: ``step`` names the stage (``base``, ``conda``, ``pip``, ``spark``,
    ``config``, ``ingest``…) and ``log_tail`` holds the last lines of its output, so the cause is
    visible without digging through the whole log. Nothing of a failed build is tagged."""

    exit_code = 1
    http_status = 500

    def __init__(self, step: str, message: str, log_tail: str = "") -> None:
        self.step = step
        self.log_tail = log_tail
        text = f"build failed in step {step}: {message}"
        if log_tail:
            text += "\n--- last lines of the log ---\n" + log_tail
        super().__init__(text)
        self.detail = message


class EngineUnavailable(EnvcacheError):
    """No container engine can be used: the message says what to install or configure."""

    exit_code = 1
    http_status = 503
