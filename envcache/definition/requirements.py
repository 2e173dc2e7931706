"""pip ``requirements.txt`` files, read with pip-requirements-parser (pip's own grammar).

``-r`` includes are followed; ``-c`` constraints are folded into the requirement they
constrain (a definition has no separate constraint list, and a constraint on a package that is
not required would silently vanish, so that is an error that says what to do). Global options
(``--index-url`` …) become ``pip_options`` in file order; ``--hash`` stays with its requirement.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from envcache.errors import DefinitionError
from envcache.definition.canonical import canonical_pip_option, parse_pip_requirement
from envcache.definition.model import CondaDependencies, Definition, PythonSection
from envcache.definition.sources import read_text

T = TypeVar("T")


def load_requirements(path: Path) -> Definition:
    packages, options = read_requirements(path)
    return Definition(python=PythonSection(conda_dependencies=CondaDependencies(pip_packages=packages, pip_options=options)))


def read_requirements(path: Path) -> tuple[list[str], list[str]]:
    """Return (pip packages, pip options) of a requirements file and its includes."""
    from pip_requirements_parser import RequirementsFile, dumps_global_options

    _check_includes(path, set())  # clear "file not found" with the including line, before the parser
    try:
        parsed = RequirementsFile.from_file(str(path), include_nested=True)
    except Exception as exc:  # the parser raises plain exceptions for unreadable includes
        raise DefinitionError(f"cannot read requirements: {_one_line(exc)}", source=str(path)) from None
    for invalid in parsed.invalid_lines:
        message = _one_line(invalid.error_message).replace("pip_requirements_parser: error: ", "")
        message = message.replace("Invalid requirement: : ", f"invalid pip requirement {invalid.line.strip()!r}: ")
        raise DefinitionError(message, source=invalid.filename, location=f"line {invalid.line_number}")
    options: list[str] = []
    for option in parsed.options:
        given = {k: v for k, v in option.options.items() if k not in ("requirements", "constraints")}
        if not given:
            continue
        text = dumps_global_options(given)
        _checked(canonical_pip_option, text, option.filename, option.line_number)
        options.append(text)
    packages: list[str] = []
    markers: dict[str | None, list[str | None]] = {}  # name → markers of the requirements naming it
    constraints = []
    for req in parsed.requirements:
        text = _requirement_text(req.line)
        parsed_req = _checked(parse_pip_requirement, text, req.filename, req.line_number)
        if req.is_constraint:
            constraints.append((req, text, parsed_req))
            continue
        markers.setdefault(parsed_req.name, []).append(parsed_req.marker)
        packages.append(text)
    for req, text, constraint in constraints:
        if constraint.name not in markers:
            raise DefinitionError(
                f"constraint {text!r} names a package that is not required; envcache definitions have no "
                f"separate constraint list: add it as a requirement or remove it",
                source=req.filename, location=f"line {req.line_number}")
        if constraint.marker:
            packages.append(text)
            continue
        # Restate the constraint under each requirement's marker, so it merges into that requirement
        # and never installs the package where the requirement's marker says not to.
        for marker in dict.fromkeys(markers[constraint.name]):
            packages.append(f"{text}; {marker}" if marker else text)
    return packages, options


_INCLUDE = re.compile(r"^\s*(?:-r|--requirement|-c|--constraint)(?:\s*=\s*|\s+)(\S+)")


def _check_includes(path: Path, seen: set[Path]) -> None:
    """Every ``-r``/``-c`` target must exist; report the including file and line if not."""
    resolved = path.resolve()
    if resolved in seen:
        return
    seen.add(resolved)
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        match = _INCLUDE.match(line)
        if match:
            target = path.parent / match.group(1)
            if not target.is_file():
                raise DefinitionError(f"included file not found: {match.group(1)}", source=str(path),
                                      location=f"line {number}")
            _check_includes(target, seen)


def _requirement_text(line: str) -> str:
    """The requirement as written, minus a trailing comment (``--hash`` options stay)."""
    text = " ".join(line.replace("\\\n", " ").split())
    return text.split(" #", 1)[0].strip()


def _checked(check: Callable[[str], T], text: str, filename: str, line: int) -> T:
    """``check(text)``, its ValueError reported at the file and line the text came from."""
    try:
        return check(text)
    except ValueError as exc:
        raise DefinitionError(str(exc), source=filename, location=f"line {line}") from None


def _one_line(message: object) -> str:
    text = str(message).strip()
    return text.splitlines()[0] if text else "unknown error"
