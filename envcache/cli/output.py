"""How verbs print: text for people, or one JSON document with ``--json``; progress on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO


def emit(args: argparse.Namespace, text: str, data: Any) -> None:
    """Print ``data`` as JSON when ``--json`` was given, else the human ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text)


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def exit_status(**statuses: str) -> str:
    """The epilog every ``--help`` ends with: ``exit_status(s0="printed", s2="bad input")``."""
    return "exit status:\n" + "\n".join(f"  {name[1:]}  {text}" for name, text in statuses.items())


class Progress:
    """Progress on stderr, apart from the result on stdout: lines that stay (an item started or
    ended) and a status that changes (what is running, bytes so far). On a terminal the status
    is one line rewritten in place under the lines that stay; elsewhere (a CI log, a file) each
    status is a line of its own, so the log shows the work went on."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._status = ""

    def line(self, text: str) -> None:
        """A line that stays."""
        self._write(f"{self._clear()}{text}\n{self._status}")

    def status(self, text: str) -> None:
        """The current status: in place on a terminal, else a line."""
        if self.tty:
            import os

            columns = os.get_terminal_size(self.stream.fileno()).columns or 80
            text = text[:columns - 1]  # one row, or \r cannot take it back
            self._write(f"{self._clear()}{text}")
            self._status = text
        else:
            self._write(f"{text}\n")

    def done(self) -> None:
        """Take the status line away (before the result is printed)."""
        self._write(self._clear())
        self._status = ""

    def _clear(self) -> str:
        return "\r\033[K" if self.tty and self._status else ""

    def _write(self, text: str) -> None:
        if text:
            self.stream.write(text)
            self.stream.flush()
