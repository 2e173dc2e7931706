"""pip ``requirements.txt`` files, read with pip-requirements-parser (pip's own grammar).

``-r`` includes are followed; ``-c`` constraints are folded into the requirement they
constrain (a definition has no separate constraint list, and a constraint on a package that is
not required would silently vanish, so that is an error that says what to do). Global options
(``--index-url`` …) become ``pip_options`` in file order; ``--hash`` stays with its requirement.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from envcache.errors import DefinitionError
from envcache.definition.canonical import canonical_pip_option, parse_pip_requirement
from envcache.definition.model import CondaDependencies, Definition, PythonSection
from envcache.definition.sources import read_text

T = TypeVar("T")


#: A definition reads at most this many requirements files (its own and every include) ...
MAX_FILES = 64
#: ... holding at most this many bytes in all. Far beyond any real definition; what they bound
#: is the work one request (or one ``envcache hash``) can cause.
MAX_BYTES = 8 * 1024 * 1024


class Includes:
    """The requirements files one definition has read so far, shared by all its includes.

    WHY: pip follows ``-r``/``-c`` blindly, so two files that include each other (or a file
    that includes itself twice) recurse until the stack runs out, and a diamond of includes
    (``a`` includes ``b`` and ``c``, both include ``d``, and so on 20 levels down) reads the
    bottom file a million times. The definition is a set of requirements plus ordered options,
    so a file read again adds nothing: each file is read once per role (requirement or
    constraint), at its first include; an include of a file that is still being read is a
    cycle and an error; and the number and size of the files are capped.
    """

    def __init__(self) -> None:
        self.read: set[tuple[str, bool]] = set()   # (real path, read as constraints)
        self.files = 0
        self.bytes = 0

    def first_visit(self, path: Path, constraint: bool) -> bool:
        """Count ``path`` against the caps; False when it was read in this role already."""
        key = (os.path.realpath(path), constraint)
        if key in self.read:
            return False
        self.read.add(key)
        self.files += 1
        try:
            self.bytes += path.stat().st_size
        except OSError:
            pass  # the parser reports the unreadable file
        if self.files > MAX_FILES:
            raise DefinitionError(f"the requirements files include more than {MAX_FILES} files", source=str(path))
        if self.bytes > MAX_BYTES:
            raise DefinitionError(f"the requirements files hold more than {MAX_BYTES} bytes", source=str(path))
        return True


def load_requirements(path: Path) -> Definition:
    packages, options = read_requirements(path)
    return Definition(python=PythonSection(conda_dependencies=CondaDependencies(pip_packages=packages, pip_options=options)))


def read_requirements(path: Path, includes: Includes | None = None) -> tuple[list[str], list[str]]:
    """Return (pip packages, pip options) of a requirements file and its includes.

    ``includes``: what the definition has read already (a conda file's ``pip:`` list may
    include several files); a file read before adds nothing.
    """
    lines: list[_Line] = []
    _read(str(path), False, includes or Includes(), [], lines)
    options: list[str] = []
    packages: list[str] = []
    markers: dict[str | None, list[str | None]] = {}  # name → markers of the requirements naming it
    constraints = []
    for item in lines:
        if isinstance(item, str):
            options.append(item)
            continue
        req, text, parsed_req = item
        if req.is_constraint:
            constraints.append(item)
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


#: What one line of a requirements file contributes: an option's text, or a requirement
#: (the parser's record, its text, and the text parsed).
_Line = str | tuple[Any, str, Any]


def _read(filename: str, constraint: bool, includes: Includes, stack: list[str], out: list[_Line]) -> None:
    """Read one file with pip's grammar (pip-requirements-parser), following its includes in
    place, as pip does: an include's lines come where the include is written."""
    from pip_requirements_parser import InstallRequirement, InvalidRequirementLine, OptionLine, RequirementsFile

    if not includes.first_visit(Path(filename), constraint):
        return
    read_text(Path(filename))  # a clear "file not found" / "not UTF-8" before the parser's own words
    stack.append(os.path.realpath(filename))
    try:
        for item in RequirementsFile.parse(filename=filename, include_nested=False, is_constraint=constraint):
            if isinstance(item, InvalidRequirementLine):
                message = _one_line(item.error_message).replace("pip_requirements_parser: error: ", "")
                message = message.replace("Invalid requirement: : ", f"invalid pip requirement {item.line.strip()!r}: ")
                raise DefinitionError(message, source=item.filename, location=f"line {item.line_number}")
            if isinstance(item, OptionLine):
                _option_line(filename, item, includes, stack, out)
            elif isinstance(item, InstallRequirement):
                text = _requirement_text(item.line)
                out.append((item, text, _checked(parse_pip_requirement, text, item.filename, item.line_number)))
    except DefinitionError:
        raise
    except Exception as exc:  # the parser raises plain exceptions for unreadable files
        raise DefinitionError(f"cannot read requirements: {_one_line(exc)}", source=filename) from None
    finally:
        stack.pop()


def _option_line(filename: str, line: Any, includes: Includes, stack: list[str], out: list[_Line]) -> None:
    """An include is followed where it is written; the line's other options come after it."""
    from pip_requirements_parser import dumps_global_options

    options = line.options
    nested = options.get("requirements") or options.get("constraints")
    if nested:
        # As pip: an include line reads only the first file it names (``-r a -r b`` reads a).
        target = os.path.join(os.path.dirname(filename), nested[0])  # joined as pip joins it
        where = f"line {line.line_number}"
        if not os.path.isfile(target):
            raise DefinitionError(f"included file not found: {nested[0]}", source=filename, location=where)
        if os.path.realpath(target) in stack:
            chain = stack[stack.index(os.path.realpath(target)):]
            names = " -> ".join(os.path.basename(p) for p in [*chain, target])
            raise DefinitionError(f"include cycle: {names}", source=filename, location=where)
        _read(target, not options.get("requirements"), includes, stack, out)
    given = {k: v for k, v in options.items() if k not in ("requirements", "constraints")}
    if given:
        text = dumps_global_options(given)
        _checked(canonical_pip_option, text, line.filename, line.line_number)
        out.append(text)


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
