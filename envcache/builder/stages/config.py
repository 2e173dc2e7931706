"""The config stage: environment variables and labels — the parent's image config, rewritten.

No engine is involved: the stage is the parent's config with the variables and labels set, one
history entry, and ``created`` at SOURCE_DATE_EPOCH, written straight into the store with the
parent's layers. (Building it as ``ENV``/``LABEL`` lines costs a container per line on the classic
Docker builder — a full rootfs copy on vfs — and fails on buildah over a base whose config has no
``history``: "history lists N non-empty layers, but we have M layers on disk".)
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from envcache.builder import conda
from envcache.builder.keys import RECIPE_VERSION
from envcache.builder.stages.stage import CREATED, Stage
from envcache.definition.canonical import config_content
from envcache.errors import InvalidInput


class ConfigStage(Stage):
    kind = "config"

    def content(self) -> dict[str, Any]:
        return config_content(self.view)

    def variables(self, has_conda: bool) -> dict[str, str]:
        """The variables the image gets, in order (the conda prefix first, then the definition's)."""
        env: dict[str, str] = {}
        if has_conda:
            env["CONDA_PREFIX"] = conda.PREFIX
        for key, value in sorted(self.view.environment_variables.items()):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
                raise InvalidInput(f"environment_variables: {key!r} is not a valid variable name")
            env[str(key)] = str(value)
        return env

    def image_config(self, parent: bytes, *, has_conda: bool, interpreter: str,
                     labels: dict[str, str] | None = None) -> bytes:
        """The final image config: ``parent`` with the variables (values literal, ``$`` is not
        expanded; ``PATH`` gets the conda prefix in front of the parent's) and the labels set."""
        doc = json.loads(parent)
        config = copy.deepcopy(doc.get("config") or {})
        env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
        wanted = self.variables(has_conda)
        if has_conda:
            env["PATH"] = f"{conda.PREFIX}/bin:{env.get('PATH', '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')}"
        env.update(wanted)
        config["Env"] = [f"{key}={value}" for key, value in env.items()]
        config["Labels"] = {**(config.get("Labels") or {}), "envcache.interpreter_path": interpreter,
                            "envcache.recipe_version": str(RECIPE_VERSION), **(labels or {})}
        history = padded_history(doc)
        history.append({"created": CREATED, "created_by": f"envcache config: ENV {' '.join(wanted) or '(none)'}",
                        "empty_layer": True})
        doc.update(config=config, history=history, created=CREATED)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def padded_history(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The config's history with one entry for every layer it does not account for.

    A base image may have no ``history`` (valid per the OCI image spec; hand-made and some
    tool-made images), and engines then refuse to add to it. The missing entries are put first,
    where the base's layers are."""
    history = list(doc.get("history") or [])
    layers = len((doc.get("rootfs") or {}).get("diff_ids") or [])
    missing = layers - sum(1 for entry in history if not entry.get("empty_layer"))
    return [{"created": CREATED, "created_by": "envcache: history added (the base image had none)"}
            for _ in range(max(missing, 0))] + history
