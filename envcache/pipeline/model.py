"""The pipeline model: steps, their inputs and outputs, and the DAG that data flow makes of them.

Both front ends — the YAML file (:mod:`envcache.pipeline.yaml_format`) and the Python API with
Azure ML's names (:mod:`envcache.pipeline.azure`) — reduce a pipeline to the same plain data and
go through :func:`pipeline_from_data`, so there is one set of checks and one set of messages.
Every error names the field (``steps[1].inputs.raw``) and, for a file, its line.

An argument refers to a step's data with a placeholder, as Azure ML's YAML does:
``${{inputs.NAME}}`` and ``${{outputs.NAME}}``. The key hashes the placeholder, not the path it
becomes, so where the data is mounted never changes a key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from envcache.pipeline.errors import PipelineDefinitionError

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
PLACEHOLDER_RE = re.compile(r"\$\{\{\s*(inputs|outputs)\.([^}]*?)\s*\}\}")
VARIANTS = ("cpu", "gpu", "auto")
TOP_FIELDS = ("description", "defaults", "steps")
DEFAULT_FIELDS = ("source_directory", "environment", "variant", "allow_reuse", "compute_target")
STEP_FIELDS = ("name", "script_name", "source_directory", "arguments", "inputs", "outputs", "environment",
               "variant", "allow_reuse", "version", "compute_target", "hash_paths")


@dataclass(frozen=True)
class DataInput:
    """A file or directory on the submitting machine, hashed at submission."""

    name: str
    path: Path


@dataclass(frozen=True)
class OutputInput:
    """The output named ``output`` of an earlier step of the pipeline."""

    name: str
    output: str


StepInput = DataInput | OutputInput


@dataclass(frozen=True)
class Step:
    name: str
    script_name: str                      # relative to source_directory, "/"-separated
    source_directory: Path                # absolute
    arguments: tuple[str, ...] = ()       # placeholders kept as written (normalised spacing)
    inputs: tuple[StepInput, ...] = ()
    outputs: tuple[str, ...] = ()
    environment: str | None = None        # an environment definition file or registered name
    variant: str | None = None
    allow_reuse: bool = True
    version: str | None = None
    compute_target: str | None = None     # accepted for Azure compatibility; not hashed
    hash_paths: tuple[str, ...] = ()      # accepted for Azure compatibility; unnecessary

    def argv(self, input_paths: Mapping[str, str], output_paths: Mapping[str, str]) -> list[str]:
        """The arguments with each placeholder replaced by where that input/output is mounted."""
        tables = {"inputs": input_paths, "outputs": output_paths}
        return [PLACEHOLDER_RE.sub(lambda m: tables[m[1]][m[2]], arg) for arg in self.arguments]


@dataclass(frozen=True)
class PipelineModel:
    steps: tuple[Step, ...]               # every producer before its consumers
    description: str | None = None

    def producer(self, output: str) -> Step:
        return next(step for step in self.steps if output in step.outputs)

    def upstream(self, step: Step) -> tuple[str, ...]:
        """Names of the steps whose outputs ``step`` reads."""
        return tuple(dict.fromkeys(self.producer(i.output).name for i in step.inputs if isinstance(i, OutputInput)))


Locate = Callable[[str], "str | None"]


def pipeline_from_data(data: Any, *, base_dir: Path, source: str, locate: Locate | None = None) -> PipelineModel:
    """Validate plain pipeline data (as the YAML format documents it) into a model.

    Relative paths are taken from ``base_dir``; ``locate`` turns a field path into ``line N``.
    """
    fields = _Fields(source, locate or (lambda _field: None))
    if not isinstance(data, dict):
        raise fields.error("", "expected a mapping with a 'steps' list")
    fields.known(data, "", TOP_FIELDS)
    description = fields.optional_str(data.get("description"), "description")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise fields.error("defaults", "expected a mapping")
    fields.known(defaults, "defaults", DEFAULT_FIELDS)
    items = data.get("steps")
    if not isinstance(items, list) or not items:
        raise fields.error("steps", "expected a non-empty list of steps")
    steps = [_step(fields, item, f"steps[{index}]", defaults, Path(base_dir)) for index, item in enumerate(items)]
    return PipelineModel(_connect(fields, steps), description)


class _Fields:
    """Type checks that raise errors naming the field and its line."""

    def __init__(self, source: str, locate: Locate) -> None:
        self.source = source
        self.locate = locate

    def error(self, field: str, message: str) -> PipelineDefinitionError:
        return PipelineDefinitionError(f"{field}: {message}" if field else message, source=self.source,
                                       location=self.locate(field) if field else None)

    def known(self, mapping: dict[str, Any], field: str, allowed: tuple[str, ...]) -> None:
        for key in mapping:
            if key not in allowed:
                where = f"{field}.{key}" if field else str(key)
                raise self.error(where, f"unknown field; valid fields: {', '.join(allowed)}")

    def optional_str(self, value: Any, field: str) -> str | None:
        if value is not None and not isinstance(value, str):
            raise self.error(field, f"expected a string, got {_kind(value)}")
        return value

    def name(self, value: Any, field: str, what: str) -> str:
        if not isinstance(value, str) or not NAME_RE.match(value):
            raise self.error(field, f"{what} must be letters, digits and underscores, not starting with a digit; "
                                    f"got {value!r}")
        return value

    def relative_path(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, "expected a relative path")
        path = PurePosixPath(value.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or str(path) == ".":
            raise self.error(field, f"must be a path inside the source directory, got {value!r}")
        return str(path)


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", type(None): "nothing"}.get(type(value), type(value).__name__)


def _step(fields: _Fields, item: Any, field: str, defaults: dict[str, Any], base_dir: Path) -> Step:
    if not isinstance(item, dict):
        raise fields.error(field, "expected a mapping (a step)")
    fields.known(item, field, STEP_FIELDS)

    def pick(key: str) -> tuple[Any, str]:
        return (item[key], f"{field}.{key}") if key in item else (defaults.get(key), f"defaults.{key}")

    if "script_name" not in item:
        raise fields.error(field, "script_name is required")
    script_name = fields.relative_path(item["script_name"], f"{field}.script_name")
    name = item.get("name", script_name)
    if not isinstance(name, str) or not name.strip():
        raise fields.error(f"{field}.name", "expected a non-empty string")

    value, where = pick("source_directory")
    source_directory = Path(os.path.abspath(base_dir / (fields.optional_str(value, where) or ".")))
    if not source_directory.is_dir():
        raise fields.error(where, f"not a directory: {source_directory}")
    if not (source_directory / script_name).is_file():
        raise fields.error(f"{field}.script_name", f"{script_name} is not a file in {source_directory}")

    outputs = _outputs(fields, item.get("outputs", []), f"{field}.outputs")
    inputs = _inputs(fields, item.get("inputs", {}), f"{field}.inputs", base_dir)
    arguments = _arguments(fields, item.get("arguments", []), f"{field}.arguments",
                           {i.name for i in inputs}, set(outputs))

    variant, where = pick("variant")
    if variant is not None and variant not in VARIANTS:
        raise fields.error(where, f"expected one of {', '.join(VARIANTS)}, got {variant!r}")
    allow_reuse, where = pick("allow_reuse")
    if allow_reuse is None:
        allow_reuse = True
    elif not isinstance(allow_reuse, bool):
        raise fields.error(where, f"expected true or false, got {allow_reuse!r}")
    version = item.get("version")
    if isinstance(version, (int, float)) and not isinstance(version, bool):
        version = str(version)
    hash_paths = item.get("hash_paths", [])
    if not isinstance(hash_paths, list) or not all(isinstance(p, str) for p in hash_paths):
        raise fields.error(f"{field}.hash_paths", "expected a list of paths")
    environment, env_where = pick("environment")
    compute_target, target_where = pick("compute_target")
    return Step(
        name=name, script_name=script_name, source_directory=source_directory, arguments=arguments,
        inputs=inputs, outputs=outputs, environment=fields.optional_str(environment, env_where), variant=variant,
        allow_reuse=allow_reuse, version=fields.optional_str(version, f"{field}.version"),
        compute_target=fields.optional_str(compute_target, target_where), hash_paths=tuple(hash_paths),
    )


def _outputs(fields: _Fields, value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise fields.error(field, "expected a list of output names")
    names = [fields.name(name, f"{field}[{index}]", "an output name") for index, name in enumerate(value)]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise fields.error(f"{field}[{index}]", f"duplicate output name {name!r}")
    return tuple(names)


def _inputs(fields: _Fields, value: Any, field: str, base_dir: Path) -> tuple[StepInput, ...]:
    if not isinstance(value, dict):
        raise fields.error(field, "expected a mapping of input name to a path or {output: NAME}")
    inputs: list[StepInput] = []
    for name, spec in value.items():
        where = f"{field}.{name}"
        fields.name(name, where, "an input name")
        if isinstance(spec, dict) and set(spec) == {"output"}:
            inputs.append(OutputInput(name, fields.name(spec["output"], f"{where}.output", "an output name")))
            continue
        if isinstance(spec, dict) and set(spec) == {"path"}:
            spec, where = spec["path"], f"{where}.path"
        if not isinstance(spec, str) or not spec.strip():
            raise fields.error(where, "expected a path (a string), {path: PATH} or {output: NAME}")
        path = Path(os.path.abspath(base_dir / spec))
        if not path.exists():
            raise fields.error(where, f"no such file or directory: {path}")
        inputs.append(DataInput(name, path))
    return tuple(inputs)


def _arguments(fields: _Fields, value: Any, field: str, inputs: set[str], outputs: set[str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise fields.error(field, "expected a list")
    declared = {"inputs": inputs, "outputs": outputs}
    arguments = []
    for index, arg in enumerate(value):
        where = f"{field}[{index}]"
        if isinstance(arg, bool) or not isinstance(arg, (str, int, float)):
            raise fields.error(where, f"expected a string or a number, got {_kind(arg)}")
        text = str(arg)
        for match in PLACEHOLDER_RE.finditer(text):
            if match[2] not in declared[match[1]]:
                known = ", ".join(sorted(declared[match[1]])) or "none"
                raise fields.error(where, f"{match[0]} names no declared {match[1][:-1]} ({match[1]}: {known})")
        arguments.append(PLACEHOLDER_RE.sub(lambda m: f"${{{{{m[1]}.{m[2]}}}}}", text))
    return tuple(arguments)


def _connect(fields: _Fields, steps: list[Step]) -> tuple[Step, ...]:
    """Check names and data flow across steps; return the steps with producers first."""
    producers: dict[str, int] = {}
    for index, step in enumerate(steps):
        first = next(i for i, other in enumerate(steps) if other.name == step.name)
        if first != index:
            raise fields.error(f"steps[{index}].name", f"duplicate step name {step.name!r} (also steps[{first}])")
        for position, output in enumerate(step.outputs):
            if output in producers:
                raise fields.error(f"steps[{index}].outputs[{position}]",
                                   f"output {output!r} is also an output of step {steps[producers[output]].name!r}")
            producers[output] = index
    needs: dict[int, set[int]] = {}
    for index, step in enumerate(steps):
        needs[index] = set()
        for item in step.inputs:
            if isinstance(item, OutputInput):
                if item.output not in producers:
                    known = ", ".join(sorted(producers)) or "none"
                    raise fields.error(f"steps[{index}].inputs.{item.name}.output",
                                       f"no step has an output named {item.output!r} (outputs: {known})")
                needs[index].add(producers[item.output])
    order: list[int] = []
    while len(order) < len(steps):
        ready = [i for i in range(len(steps)) if i not in order and needs[i] <= set(order)]
        if not ready:
            raise fields.error("steps", f"the steps form a cycle: {_cycle(steps, needs, set(order))}")
        order.extend(ready)
    return tuple(steps[i] for i in order)


def _cycle(steps: list[Step], needs: dict[int, set[int]], done: set[int]) -> str:
    """One cycle among the steps not yet ordered, as ``a → b → a`` (each reads the next one's output)."""
    path = [min(set(range(len(steps))) - done)]
    while True:
        nxt = min(needs[path[-1]] - done)
        if nxt in path:
            cycle = path[path.index(nxt):] + [nxt]
            return " → ".join(steps[i].name for i in cycle)
        path.append(nxt)
