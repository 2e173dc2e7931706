"""How verbs print: text for people, or one JSON document with ``--json``; progress on stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys

TYPE_CHECKING = False  # typing is not imported at run time: README, "The fast hit path"
if TYPE_CHECKING:
    from typing import Any, TextIO


class HelpFormatter(argparse.HelpFormatter):
    """Every parser's formatter: prose is wrapped to the terminal, indented lines (the exit-status
    list) stay as written.

    It also asks the terminal's width itself: argparse's own formatter imports ``shutil`` (and with
    it zlib, bz2 and lzma) for that, and argparse makes a formatter for every ``add_argument`` —
    start-up time on every cache hit, for a width that only ``--help`` uses.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for block in text.split("\n\n"):
            kept = [indent + line for line in block.splitlines() if line.startswith("  ")]
            prose = " ".join(line.strip() for line in block.splitlines() if not line.startswith("  "))
            paragraphs.append("\n".join([super()._fill_text(prose, width, indent), *kept] if prose else kept))
        return "\n\n".join(paragraphs)


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` finds it: $COLUMNS, else stdout's, else 80."""
    try:
        return int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (ValueError, OSError, AttributeError):
        return 80


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
