"""Errors a build can end with, each carrying what the user needs to act on it."""

from __future__ import annotations

import re

from envcache.errors import EnvcacheError

#: Engine housekeeping in a step's output: never the reason a build failed.
_NOISE = re.compile(r"\s*(Removing intermediate container |---> |Step \d+/\d+ : |STEP \d+/\d+: |COMMIT |"
                    r"The command .* returned a non-zero code|(error|Error:) building at STEP )")
#: Where a tool's own error report starts: pip's ``ERROR:``/``error:`` and its ``×`` boxes,
#: apt's ``E:``, a shell's ``not found``, Python's traceback.
_ERROR_START = re.compile(r"\s*(ERROR:|error:|Error:|×|E: |fatal:|Traceback |.*: not found$|.*command not found)")
#: Lines shown when the output has no error report of its own.
_LAST_LINES = 10


def error_lines(output: str) -> list[str]:
    """The lines of a step's output that say why it failed: from the first line of the tool's
    own error report (pip, conda, apt, the shell) to the end, else the last few lines; never the
    engine's echo of the step (which repeats the whole generated script)."""
    lines = [line for line in output.splitlines() if line.strip() and not _NOISE.match(line)]
    start = next((index for index, line in enumerate(lines) if _ERROR_START.match(line)), None)
    return lines[start:] if start is not None else lines[-_LAST_LINES:]


class BuildFailed(EnvcacheError):
    """A build stopped: ``step`` names the stage (``base``, ``conda``, ``pip``, ``spark``,
    ``config``, ``ingest``…) and ``log_tail`` holds the lines of its output that say why
    (:func:`error_lines`), so the cause is visible without digging through the whole log — and
    printed once, last, indented under the one-line verdict. Nothing of a failed build is tagged."""

    exit_code = 1
    http_status = 500

    def __init__(self, step: str, message: str, log_tail: str = "") -> None:
        self.step = step
        self.log_tail = "\n".join(error_lines(log_tail))
        self.verdict = f"build failed in step {step}: {message}"
        text = self.verdict
        if self.log_tail:
            text += "\n" + "\n".join(f"  {line}" for line in self.log_tail.splitlines())
        super().__init__(text)
        self.detail = message


class EngineUnavailable(EnvcacheError):
    """No container engine can be used: the message says what to install or configure."""

    exit_code = 1
    http_status = 503
