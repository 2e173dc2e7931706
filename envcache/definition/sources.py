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


MAX_YAML_NODES = 100_000  # far beyond any real definition; a "billion laughs" file is far beyond it


def check_yaml_aliases(field: str, text: str) -> None:
    """Refuse YAML whose aliases loop back into themselves or expand past :data:`MAX_YAML_NODES`.

    WHY: the loaders walk the parsed data as a tree, so a recursive alias (``a: &a [*a]``) or a
    few nested aliases ("billion laughs", billions of nodes) would tie up the daemon's event
    loop for every client. A definition never needs that; the node graph is checked here at the
    boundary, counting each shared node once per use, before anything walks it. Only files
    that use both anchors and aliases pay.
    """
    if "&" not in text or "*" not in text:
        return
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return  # not (single-document) YAML: the loaders report it with its line
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise DefinitionError(f"{field}: a YAML alias refers to the node that contains it (a recursive alias)")
        active.add(key)
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else [])
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_YAML_NODES:
                raise DefinitionError(f"{field}: YAML aliases expand to more than {MAX_YAML_NODES} nodes")
        active.discard(key)
        sizes[key] = total
        return total

    try:
        if root is not None:
            size(root)
    except RecursionError:
        raise DefinitionError(f"{field}: YAML nested too deeply") from None
