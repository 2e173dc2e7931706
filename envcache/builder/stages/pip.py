"""The pip stage: resolved once in a throw-away container of the parent image, then installed
exactly from the lock inside the image, with index credentials and the host's CA bundle served
over loopback for this one build (never in a layer, a hash or the log).

The work inside the image is :mod:`pip_step <envcache.builder.stages.pip_step>`, a plain script
the image's Python fetches from the build's helper server and runs.

A wheel pinned by its digest that the store holds is served from the store too: the RUN step
fetches it into :data:`WHEEL_DIR` and pip installs it from there, still checking the digest.
So the build needs no route to the host a definition's URL names, and what pip records
(``direct_url.json``, the lock's URL) is the same path on every daemon, as the stage key is.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from envcache.builder import conda
from envcache.builder.errors import BuildFailed
from envcache.builder.helper import HelperServer
from envcache.builder.lock import pip_entries, pip_requirements
from envcache.builder.stages.stage import SOURCE_DATE_EPOCH, Entry, RecipeContext, Stage, StageRecipe
from envcache.definition.canonical import parse_pip_requirement, pip_content

#: Where the RUN step puts the pinned wheels it installs (pip_step removes it before the layer
#: is committed).
WHEEL_DIR = "/tmp/envcache-wheels"
_FETCH = "'import sys, urllib.request as r; sys.stdout.buffer.write(r.urlopen(sys.argv[1]).read())'"

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
        helper, fetches, packages = await self._serve(ctx)
        helper.add("requirements.txt", ("\n".join([*self._options(), *packages]) + "\n").encode())
        await ctx.engine.run(ctx.parent, ["/bin/sh", "-c", self._shell(helper, "resolve", fetches)], network=True,
                             log=ctx.log, step="pip")
        return pip_entries(_report(helper))

    async def recipe(self, ctx: RecipeContext) -> StageRecipe:
        helper, fetches, _packages = await self._serve(ctx)
        lines = [*self._options(), *pip_requirements(ctx.part)]
        helper.add("requirements.txt", ("\n".join(lines) + "\n").encode())
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
        # builder); ingest takes it out of the stored config's history, the log shows neither.
        run = self._shell(helper, "install", fetches)
        shown = f"<pip install of the lock ({len(ctx.part)} packages): a script written by envcache>"
        return StageRecipe(f"FROM {ctx.parent}\nRUN {run}\n", network=True, after=after,
                           display={run: shown, helper.url: "<envcache build helper>"})

    def _options(self) -> list[str]:
        """pip's options, one per line, as a requirements file takes them."""
        return [" ".join(shlex.split(option)) for option in self.view.python.conda_dependencies.pip_options]

    async def _serve(self, ctx: RecipeContext) -> tuple[HelperServer, list[str], list[str]]:
        """The build's helper, serving the CA bundle, the pip step and the pinned wheels the
        store holds → (helper, shell lines fetching those wheels into :data:`WHEEL_DIR`, the
        definition's requirements with those wheels pointing there)."""
        helper = ctx.helper
        assert helper is not None, "the pip stage needs the build's helper server"
        if not helper.url:
            await helper.start()
        fetches: list[str] = []
        packages: list[str] = []
        for entry in self.view.python.conda_dependencies.pip_packages:
            req = parse_pip_requirement(entry)
            wheel = req.wheel
            path = await ctx.wheel_file(wheel.digest) if wheel is not None and ctx.wheel_file else None
            if wheel is None or path is None:
                packages.append(entry)  # pip fetches it as written (a pinned wheel: from its URL, digest checked)
                continue
            local = f"{WHEEL_DIR}/{wheel.sha256}/{wheel.filename}"
            url = helper.add(f"wheels/{wheel.sha256}/{quote(wheel.filename)}", path)
            fetches.append(f'mkdir -p {WHEEL_DIR}/{wheel.sha256}; "$PY" -c {_FETCH} "{url}" > {shlex.quote(local)};')
            packages.append(replace(req, url=f"file://{quote(local)}#sha256={wheel.sha256}").render())
        helper.add("ca.pem", ctx.ca_bundle.read_bytes() if ctx.ca_bundle else b"")
        helper.add("pip_step.py", STEP_SCRIPT.read_bytes())
        helper.received.pop("report", None)
        return helper, fetches, packages

    def _shell(self, helper: HelperServer, mode: str, fetches: list[str]) -> str:
        """Find the image's Python (the interpreter path, else ``python3``, else ``python``,
        with the conda prefix first on PATH), fetch the served wheels, and run the pip step."""
        candidates = " ".join(shlex.quote(c) for c in
                              dict.fromkeys([self.view.python.interpreter_path.strip() or "python", "python3", "python"]))
        return " ".join([
            f'set -e; export PATH="{conda.PREFIX}/bin:$PATH";',
            f'PY=; for c in {candidates}; do if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi; done;',
            'if [ -z "$PY" ]; then echo "envcache: no Python interpreter in the image for the pip stage" >&2; exit 1; fi;',
            *fetches,
            # No bytecode written before the step takes its start time: its mtime would escape the clamp.
            'PYTHONDONTWRITEBYTECODE=1 "$PY" -c',
            '\'import sys, urllib.request as r; exec(r.urlopen(sys.argv[1] + "/pip_step.py").read())\'',
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
