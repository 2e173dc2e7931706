"""Stages → generated Dockerfiles and build contexts.

Each stage is a tiny Dockerfile ``FROM <previous stage>`` plus its own steps, built and tagged
``envcache-stage:<chain key>`` in the engine. Stable things come first (base, conda, pip,
spark, config) so definitions that share a prefix share those stages. Everything a stage
installs is decided by the (variant-applied) definition; the chain keys come from
``envcache.definition.stage_chain``.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from envcache.builder import conda, maven
from envcache.builder.engines.base import ImageInfo
from envcache.builder.helper import HelperServer
from envcache.builder.keys import RECIPE_VERSION
from envcache.errors import InvalidInput
from envcache.definition.model import Definition


STAGE_REPO = "envcache-stage"
#: Where each stage writes what it installed (read back by ingest as the image's lock).
LOCK_DIR = "/opt/envcache/lock"
#: The file under ``LOCK_DIR`` per lock kind (the stage that writes it).
LOCK_FILES = {"conda": "conda.json", "pip": "pip-freeze.txt", "spark": "spark.json"}
DEFAULT_SPARK_JARS = "/opt/spark/jars"


def stage_tag(key: str) -> str:
    return f"{STAGE_REPO}:{key}"


def quote(value: str) -> str:
    """A Dockerfile ENV/LABEL value: double-quoted, with ``$`` not expanded."""
    if "\n" in value or "\r" in value:
        raise InvalidInput(f"environment variable or label value {value[:40]!r} contains a line break")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


@dataclass
class StageRecipe:
    """What the engine needs to build one stage."""

    dockerfile: str
    network: bool = False


def base_recipe(view: Definition, base_ref: str) -> StageRecipe:
    if view.docker.base_dockerfile:
        text = view.docker.base_dockerfile
        return StageRecipe(text if text.endswith("\n") else text + "\n", network=True)
    return StageRecipe(f"FROM {base_ref}\n")


def cuda_version(variant: str, parent_info: ImageInfo | None) -> str | None:
    """The CUDA version a GPU image offers: its base image's ``CUDA_VERSION`` (NVIDIA's and
    Azure ML's CUDA images set it), as major.minor."""
    if variant != "gpu" or parent_info is None:
        return None
    match = re.match(r"\d+(\.\d+)?", parent_info.env().get("CUDA_VERSION", ""))
    return match.group(0) if match else None


async def conda_recipe(view: Definition, variant: str, parent: str, parent_info: ImageInfo | None,
                       context: Path) -> StageRecipe:
    deps = view.python.conda_dependencies
    root = context / "root"
    prefix = root / conda.PREFIX.lstrip("/")
    lock = await conda.install_prefix(list(deps.channels), list(deps.conda_packages), prefix,
                                      cuda=cuda_version(variant, parent_info))
    conda.write_lock(lock, root / LOCK_DIR.lstrip("/") / LOCK_FILES["conda"])
    # The prefix's PATH entry is set by the config stage (one ENV for all); the pip stage puts
    # it first on PATH for its own RUN.
    return StageRecipe(f"FROM {parent}\nCOPY root/ /\n")


def pip_recipe(view: Definition, parent: str, helper: HelperServer, ca_bundle: Path | None) -> StageRecipe:
    deps = view.python.conda_dependencies
    # Options first, one per line, then one requirement per line: a requirements file is the
    # one form pip accepts for both, and it keeps index credentials out of the Dockerfile.
    lines = [" ".join(shlex.split(option)) for option in deps.pip_options] + list(deps.pip_packages)
    helper.add("requirements.txt", ("\n".join(lines) + "\n").encode())
    helper.add("ca.pem", ca_bundle.read_bytes() if ca_bundle else b"")
    candidates = " ".join(shlex.quote(c) for c in
                          dict.fromkeys([view.python.interpreter_path.strip() or "python", "python3", "python"]))
    run = " ".join([
        f'set -e; export PATH="{conda.PREFIX}/bin:$PATH";',
        f'PY=; for c in {candidates}; do if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi; done;',
        'if [ -z "$PY" ]; then echo "envcache: no Python interpreter in the image for the pip stage" >&2; exit 1; fi;',
        'CA="$(mktemp)"; trap \'rm -f "$CA"\' EXIT;',
        '"$PY" -c \'import sys, urllib.request as r; sys.stdout.buffer.write(r.urlopen(sys.argv[1]).read())\''
        f' "{helper.url}/ca.pem" > "$CA";',
        'if [ -s "$CA" ]; then export PIP_CERT="$CA"; fi;',
        "PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore",
        f'"$PY" -m pip install --no-input --progress-bar off -r "{helper.url}/requirements.txt";',
        f'mkdir -p {LOCK_DIR}; "$PY" -m pip freeze --all > {LOCK_DIR}/{LOCK_FILES["pip"]}',
    ])
    # The helper URL (random port and token, dead after the build) is written into the RUN
    # line rather than passed as an ARG: an ARG costs one more container on the classic builder.
    return StageRecipe(f"FROM {parent}\nRUN {run}\n", network=True)


async def spark_recipe(view: Definition, parent: str, parent_info: ImageInfo | None,
                       context: Path) -> StageRecipe:
    spark = view.spark
    root = context / "root"
    coordinates = [f"{p.group}:{p.artifact}:{p.version}" for p in spark.packages]
    jars_dir = DEFAULT_SPARK_JARS
    if parent_info is not None and parent_info.env().get("SPARK_HOME"):
        jars_dir = parent_info.env()["SPARK_HOME"].rstrip("/") + "/jars"
    if spark.precache_packages:
        jars = await maven.fetch_jars(spark.packages, spark.repositories, root / jars_dir.lstrip("/"))
        lock = [{**jar.as_dict(), "path": f"{jars_dir}/{jar.file_name}"} for jar in jars]
    else:
        lock = [{"coordinate": c, "precached": False} for c in coordinates]
    lock_path = root / LOCK_DIR.lstrip("/") / LOCK_FILES["spark"]
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path.write_text(json.dumps(lock, indent=1, sort_keys=True))
    return StageRecipe(f"FROM {parent}\nCOPY root/ /\n")


def config_recipe(view: Definition, parent: str, has_conda: bool) -> StageRecipe:
    """One ENV line (the conda prefix, then the definition's variables) and one LABEL line."""
    env: dict[str, str] = {}
    if has_conda:
        env["CONDA_PREFIX"] = conda.PREFIX
    for key, value in sorted(view.environment_variables.items()):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
            raise InvalidInput(f"environment_variables: {key!r} is not a valid variable name")
        env[str(key)] = str(value)
    lines = [f"FROM {parent}"]
    if env:
        pairs = [f"{key}={quote(value)}" for key, value in env.items()]
        if has_conda:
            # PATH must expand against the parent's PATH, so it is the one unquoted value.
            pairs.insert(1, f"PATH={conda.PREFIX}/bin:$PATH")
        lines.append("ENV " + " ".join(pairs))
    # One LABEL line: on the classic Docker builder every instruction after FROM costs a
    # container (a full rootfs copy on vfs), and API-level labels cost one per label.
    lines.append(f"LABEL envcache.interpreter_path={quote(view.python.interpreter_path.strip())} "
                 f"envcache.recipe_version={quote(str(RECIPE_VERSION))}")
    return StageRecipe("\n".join(lines) + "\n")


def write_context(context: Path, recipe: StageRecipe) -> None:
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(recipe.dockerfile)


def unpinned_requirements(view: Definition) -> list[str]:
    """Requirements that do not name one exact version: their resolution can drift, so the
    lock recorded at build time is what they resolved to *then*."""
    from packaging.requirements import InvalidRequirement, Requirement

    deps = view.python.conda_dependencies
    unpinned: list[str] = []
    for entry in deps.pip_packages:
        try:
            req = Requirement(entry)
        except InvalidRequirement:
            continue
        if req.url:
            continue
        specs = list(req.specifier)
        if not (len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version):
            unpinned.append(f"pip:{entry}")
    for entry in deps.conda_packages:
        spec = entry.split("::")[-1].strip()
        parts = re.split(r"\s+|(?==)", spec, maxsplit=1)
        rest = parts[1].strip() if len(parts) > 1 else ""
        exact = rest.startswith("==") or (rest.startswith("=") and not rest.endswith("*") and rest.count("=") >= 2)
        if not exact:
            unpinned.append(f"conda:{entry}")
    return unpinned
