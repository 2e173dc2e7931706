"""Reading YAML and JSON files so that errors can point at a line.

PyYAML's node marks give the line of every value; we keep a map from field path
(``python.conda_dependencies.pip_packages[3]``) to ``line N`` so later validation, which only sees
plain data, can still tell the user where to look.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from envcache.errors import DefinitionError


class Located:
    """Plain data loaded from a file plus the line of each field path."""

    def __init__(self, data: Any, lines: dict[str, int], source: str) -> None:
        self.data = data
        self.lines = lines
        self.source = source

    def locate(self, path: str) -> str | None:
        # Fall back to the nearest parent that has a line (a missing key has none of its own).
        while path:
            if path in self.lines:
                return f"line {self.lines[path]}"
            path = _parent(path)
        return None


def _parent(path: str) -> str:
    if path.endswith("]"):
        return path[:path.rindex("[")]
    return path.rsplit(".", 1)[0] if "." in path else ""


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DefinitionError("file not found", source=str(path)) from None
    except IsADirectoryError:
        raise DefinitionError("is a directory, expected a file", source=str(path)) from None
    except UnicodeDecodeError as exc:
        raise DefinitionError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=str(path)) from None
    except OSError as exc:
        raise DefinitionError(f"cannot read: {exc.strerror}", source=str(path)) from None


def load_yaml(path: Path) -> Located:
    text = read_text(path)
    source = str(path)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        raise DefinitionError(f"invalid YAML: {exc.problem or exc.context}", source=source, location=where) from None
    except yaml.YAMLError as exc:
        raise DefinitionError(f"invalid YAML: {exc}", source=source) from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    if node is not None:
        _walk(node, "", lines)
    return Located(data, lines, source)


def _walk(node: yaml.Node, path: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = f"{path}.{key_node.value}" if path else str(key_node.value)
            lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            lines[child] = item.start_mark.line + 1
            _walk(item, child, lines)


def load_json(path: Path) -> Located:
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DefinitionError(f"invalid JSON: {exc.msg}", source=str(path),
                              location=f"line {exc.lineno}, column {exc.colno}") from None
    return Located(data, {}, str(path))
