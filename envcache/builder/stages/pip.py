"""The pip stage: resolved once in a throw-away container of the parent image, then installed
exactly from the lock inside the image, with index credentials and the host's CA bundle served
over loopback for this one build (never in a layer, a hash or the log).

The work inside the image is :mod:`pip_step <envcache.builder.stages.pip_step>`, a plain script
the image's Python fetches from the build's helper server and runs.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from envcache.builder import conda
from envcache.builder.errors import BuildFailed
from envcache.builder.helper import HelperServer
from envcache.builder.lock import pip_entries, pip_requirements
from envcache.builder.stages.stage import SOURCE_DATE_EPOCH, Entry, RecipeContext, Stage, StageRecipe
from envcache.definition.canonical import pip_content

STEP_SCRIPT = Path(__file__).with_name("pip_step.py")
#: Annotation of the stored pip stage: the interpreter its pip ran with (what the image label says).
INTERPRETER = "envcache.interpreter"


class PipStage(Stage):
    kind = "pip"
    lock_file = "pip.json"
    resolves = True
    resolves_in_image = True   # pip resolves against the parent's Python and what it has installed

    def applies(self) -> bool:
        python = self.view.python
        return not python.user_managed_dependencies and bool(python.conda_dependencies.pip_packages)

    def content(self) -> dict[str, Any]:
        return pip_content(self.view)

    async def resolve(self, ctx: RecipeContext) -> list[Entry]:
        """``pip install --dry-run --report`` of the definition's requirements in a container of
        the parent image: what pip would install there now, artifacts and sha256 included."""
        assert ctx.engine is not None, "resolving pip needs the engine"
        helper = await self._serve(ctx, [*self._options(), *self.view.python.conda_dependencies.pip_packages])
        await ctx.engine.run(ctx.parent, ["/bin/sh", "-c", self._shell(helper, "resolve")], network=True,
                             log=ctx.log, step="pip")
        return pip_entries(_report(helper))

    async def recipe(self, ctx: RecipeContext) -> StageRecipe:
        helper = await self._serve(ctx, [*self._options(), *pip_requirements(ctx.part)])
        helper.add("pip-lock.json", json.dumps(ctx.part, indent=1, sort_keys=True).encode())

        def after() -> dict[str, str]:
            report = _report(helper)
            installed = pip_entries(report)
            if _identity(installed) != _identity(ctx.part):
                raise BuildFailed("pip", "pip installed something other than the lock: "
                                         f"{sorted(_identity(installed) ^ _identity(ctx.part))}")
            return {INTERPRETER: str(report.get("interpreter") or "")}

        # The helper URL (random port and token, dead after the build) is written into the RUN
        # line rather than passed as an ARG (an ARG costs one more container on the classic
        # builder); ingest takes it out of the stored config's history.
        return StageRecipe(f"FROM {ctx.parent}\nRUN {self._shell(helper, 'install')}\n", network=True, after=after)

    def _options(self) -> list[str]:
        """pip's options, one per line, as a requirements file takes them."""
        return [" ".join(shlex.split(option)) for option in self.view.python.conda_dependencies.pip_options]

    async def _serve(self, ctx: RecipeContext, lines: list[str]) -> HelperServer:
        helper = ctx.helper
        assert helper is not None, "the pip stage needs the build's helper server"
        if not helper.url:
            await helper.start()
        # A requirements file is the one form pip accepts for options and requirements (with
        # hashes) alike, and it keeps index credentials out of the Dockerfile.
        helper.add("requirements.txt", ("\n".join(lines) + "\n").encode())
        helper.add("ca.pem", ctx.ca_bundle.read_bytes() if ctx.ca_bundle else b"")
        helper.add("pip_step.py", STEP_SCRIPT.read_bytes())
        helper.received.pop("report", None)
        return helper

    def _shell(self, helper: HelperServer, mode: str) -> str:
        """Find the image's Python (the interpreter path, else ``python3``, else ``python``,
        with the conda prefix first on PATH) and run the pip step with it."""
        candidates = " ".join(shlex.quote(c) for c in
                              dict.fromkeys([self.view.python.interpreter_path.strip() or "python", "python3", "python"]))
        return " ".join([
            f'set -e; export PATH="{conda.PREFIX}/bin:$PATH";',
            f'PY=; for c in {candidates}; do if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi; done;',
            'if [ -z "$PY" ]; then echo "envcache: no Python interpreter in the image for the pip stage" >&2; exit 1; fi;',
            '"$PY" -c \'import sys, urllib.request as r; exec(r.urlopen(sys.argv[1] + "/pip_step.py").read())\'',
            f'"{helper.url}" {mode} {SOURCE_DATE_EPOCH} "$PY"',
        ])


def _report(helper: HelperServer) -> dict[str, Any]:
    """What the pip step sent back; its absence means the step did not get that far."""
    raw = helper.received.pop("report", None)
    if raw is None:
        raise BuildFailed("pip", "the pip step finished without reporting what it installed")
    return json.loads(raw)


def _identity(entries: list[Entry]) -> set[tuple[str, str, str | None]]:
    return {(e["name"], e["version"], e.get("sha256")) for e in entries}
