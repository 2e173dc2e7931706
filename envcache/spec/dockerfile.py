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

_DIRECTIVE = re.compile(r"^#\s*([A-Za-z]+)\s*=\s*(.*?)\s*$")
_KNOWN_DIRECTIVES = {"syntax", "escape", "check"}
_HEREDOC = re.compile(r"<<(-?)(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")


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
    found: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(step):
        ch = step[i]
        if ch == escape:
            i += 2
            continue
        if quote is None and ch in "'\"":
            quote = ch
        elif ch == quote:
            quote = None
        elif quote is None and step.startswith("<<", i):
            match = _HEREDOC.match(step, i)
            if match:
                found.append(match.group(3))
                i = match.end()
                continue
        i += 1
    return found


def _normalise_instruction(line: str, escape: str) -> str:
    """Upper-case the keyword; collapse whitespace outside quotes; strip the ends."""
    keyword, _, rest = line.strip().partition(" ")
    if "\t" in keyword:
        keyword, _, tail = keyword.partition("\t")
        rest = tail + " " + rest
    return (keyword.upper() + " " + _collapse(rest.strip(), escape)).strip()


def _collapse(text: str, escape: str) -> str:
    out: list[str] = []
    quote: str | None = None
    pending_space = False
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is None and ch in " \t":
            pending_space = True
            i += 1
            continue
        if pending_space:
            out.append(" ")
            pending_space = False
        if ch == escape and i + 1 < len(text):
            out.append(text[i:i + 2])
            i += 2
            continue
        if quote is None and ch in "'\"":
            quote = ch
        elif ch == quote:
            quote = None
        out.append(ch)
        i += 1
    return "".join(out)
