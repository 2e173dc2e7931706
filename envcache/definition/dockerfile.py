"""Dockerfile normalisation for the canonical form.

Two Dockerfiles that differ only in layout (line endings, continuation lines, comments, blank
lines, keyword case, runs of spaces) build the same image, so they must hash the same. Anything
else (the text of a step, the order of steps) is kept. Parser directives (``# syntax=``,
``# escape=``, ``# check=``) change how the file is read, so they are kept; the escape
directive is honoured when joining continuation lines. Heredoc bodies (``RUN <<EOF``) are file
content and are kept verbatim.
"""

from __future__ import annotations

import re
import shlex
from functools import lru_cache

_DIRECTIVE = re.compile(r"^#\s*([A-Za-z]+)\s*=\s*(.*?)\s*$")
_KNOWN_DIRECTIVES = {"syntax", "escape", "check"}


def normalise_dockerfile(text: str) -> list[str]:
    """Return the Dockerfile as a list of normalised lines: directives first, then one entry
    per instruction (heredoc bodies appended to their instruction with ``\\n``)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    directives, index = _directives(lines)
    escape = "\\"
    for directive in directives:
        key, _, value = directive[2:].partition("=")
        if key == "escape" and value in ("\\", "`"):
            escape = value
    steps: list[str] = []
    current = ""
    in_instruction = False
    while index < len(lines):
        raw = lines[index]
        index += 1
        stripped = raw.strip()
        if not in_instruction and (not stripped or stripped.startswith("#")):
            continue
        if in_instruction and stripped.startswith("#"):
            continue  # Docker drops comment lines inside continuations too
        if in_instruction and not stripped:
            continue  # empty continuation lines are ignored by the builder
        body = raw.rstrip()
        if body.endswith(escape):
            current += body[:-1]
            in_instruction = True
            continue
        current += body
        in_instruction = False
        step = _normalise_instruction(current, escape)
        current = ""
        heredocs = _heredoc_terminators(step, escape) if _takes_heredoc(step) else []
        for terminator in heredocs:
            body_lines: list[str] = []
            while index < len(lines):
                line = lines[index]
                index += 1
                if line.strip() == terminator:
                    break
                body_lines.append(line)
            step += "\n" + "\n".join(body_lines) + "\n" + terminator
        steps.append(step)
    if current:
        steps.append(_normalise_instruction(current, escape))
    return directives + steps


_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def dockerfile_base_image(text: str) -> str | None:
    """The image the first ``FROM`` names, or None without one.

    ``ARG`` defaults declared before it are substituted (``ARG BASE=ubuntu:22.04`` then
    ``FROM $BASE``), as Docker does for a build without build arguments, which is how envcache
    builds. Anything else (``${BASE:-x}``, an ARG without a default) stays as written.
    """
    defaults: dict[str, str] = {}
    for step in normalise_dockerfile(text):
        keyword, _, rest = step.partition(" ")
        if keyword == "ARG":
            try:
                words = shlex.split(rest)
            except ValueError:
                words = []
            for word in words:
                name, equals, value = word.partition("=")
                if equals:
                    defaults[name] = value
                else:
                    defaults.pop(name, None)
        elif keyword == "FROM":
            image = next((word for word in rest.split() if not word.startswith("--")), None)
            if image is None:
                return None
            return _VARIABLE.sub(lambda m: defaults.get(m.group(1) or m.group(2), m.group(0)), image)
    return None


def _directives(lines: list[str]) -> tuple[list[str], int]:
    """Parser directives must come first; the first other line (even blank) ends them."""
    found: list[str] = []
    for index, line in enumerate(lines):
        match = _DIRECTIVE.match(line.strip())
        if not match or match.group(1).lower() not in _KNOWN_DIRECTIVES:
            return found, index
        found.append(f"# {match.group(1).lower()}={match.group(2)}")
    return found, len(lines)


def _takes_heredoc(step: str) -> bool:
    return step.split(" ", 1)[0] in {"RUN", "COPY", "ADD"}


def _heredoc_terminators(step: str, escape: str) -> list[str]:
    """Terminators of the ``<<WORD`` markers outside quotes (``echo "a <<b"`` is no heredoc)."""
    return [token.group(2) for token in _token_pattern(escape).finditer(step) if token.group(2)]


def _normalise_instruction(line: str, escape: str) -> str:
    """Upper-case the keyword; collapse whitespace outside quotes; strip the ends."""
    keyword, _, rest = line.strip().partition(" ")
    if "\t" in keyword:
        keyword, _, tail = keyword.partition("\t")
        rest = tail + " " + rest
    return (keyword.upper() + " " + _collapse(rest.strip(), escape)).strip()


def _collapse(text: str, escape: str) -> str:
    """Each run of blanks outside quotes becomes one space (``text`` comes stripped); quoted text
    and escaped characters stay as written."""
    return "".join(" " if token.group(3) else token.group(0) for token in _token_pattern(escape).finditer(text))


@lru_cache(maxsize=2)
def _token_pattern(escape: str) -> re.Pattern[str]:
    r"""One instruction's tokens, as the builder reads quotes: an escaped character, a quoted
    string (escapes inside it too; unterminated runs to the end), a heredoc marker (group 2 is
    its word), a run of blanks (group 3), or any other single character. Both the heredoc scan
    and the whitespace collapse walk these, so they agree on what is quoted."""
    esc = re.escape(escape)
    return re.compile(
        rf"{esc}.|\"(?:{esc}.|[^\"{esc}])*\"?|'(?:{esc}.|[^'{esc}])*'?"
        r"|<<-?([\"']?)([A-Za-z_][A-Za-z0-9_]*)\1|([ \t]+)|.",
        re.DOTALL)
