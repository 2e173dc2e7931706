"""The pip stage: ``pip install`` inside the image, with index credentials and the host's CA
bundle served over loopback for this one build (never in a layer, a hash or the log).

A wheel pinned by its digest that the store holds is served from the store too: the RUN step
fetches it into :data:`WHEEL_DIR` and pip installs it from there, still checking the digest.
So the build needs no route to the host a definition's URL names, and what pip records
(``direct_url.json``, ``pip freeze``) is the same path on every daemon, as the stage key is.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from envcache.builder import conda
from envcache.builder.stages.stage import LOCK_DIR, RecipeContext, Stage, StageRecipe
from envcache.definition.canonical import parse_pip_requirement, pip_content

#: Where the RUN step puts the pinned wheels it installs (removed before the layer is committed).
WHEEL_DIR = "/tmp/envcache-wheels"
_FETCH = "'import sys, urllib.request as r; sys.stdout.buffer.write(r.urlopen(sys.argv[1]).read())'"


class PipStage(Stage):
    kind = "pip"
    lock_file = "pip-freeze.txt"

    def applies(self) -> bool:
        python = self.view.python
        return not python.user_managed_dependencies and bool(python.conda_dependencies.pip_packages)

    def content(self) -> dict[str, Any]:
        return pip_content(self.view)

    async def recipe(self, ctx: RecipeContext) -> StageRecipe:
        helper = ctx.helper
        assert helper is not None, "the pip stage needs the build's helper server"
        if not helper.url:
            await helper.start()
        deps = self.view.python.conda_dependencies
        # Options first, one per line, then one requirement per line: a requirements file is the
        # one form pip accepts for both, and it keeps index credentials out of the Dockerfile.
        lines = [" ".join(shlex.split(option)) for option in deps.pip_options]
        fetches: list[str] = []
        for entry in deps.pip_packages:
            req = parse_pip_requirement(entry)
            wheel = req.wheel
            path = await ctx.wheel_file(wheel.digest) if wheel is not None and ctx.wheel_file else None
            if wheel is None or path is None:
                lines.append(entry)  # pip fetches it as written (a pinned wheel: from its URL, digest checked)
                continue
            local = f"{WHEEL_DIR}/{wheel.sha256}/{wheel.filename}"
            url = helper.add(f"wheels/{wheel.sha256}/{quote(wheel.filename)}", path)
            fetches.append(f'mkdir -p {WHEEL_DIR}/{wheel.sha256}; "$PY" -c {_FETCH} "{url}" > {shlex.quote(local)};')
            lines.append(replace(req, url=f"file://{quote(local)}#sha256={wheel.sha256}").render())
        helper.add("requirements.txt", ("\n".join(lines) + "\n").encode())
        helper.add("ca.pem", ctx.ca_bundle.read_bytes() if ctx.ca_bundle else b"")
        candidates = " ".join(shlex.quote(c) for c in
                              dict.fromkeys([self.view.python.interpreter_path.strip() or "python", "python3", "python"]))
        run = " ".join([
            f'set -e; export PATH="{conda.PREFIX}/bin:$PATH";',
            f'PY=; for c in {candidates}; do if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi; done;',
            'if [ -z "$PY" ]; then echo "envcache: no Python interpreter in the image for the pip stage" >&2; exit 1; fi;',
            f'CA="$(mktemp)"; trap \'rm -rf "$CA" {WHEEL_DIR}\' EXIT;',
            f'"$PY" -c {_FETCH} "{helper.url}/ca.pem" > "$CA";',
            'if [ -s "$CA" ]; then export PIP_CERT="$CA"; fi;',
            *fetches,
            "PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore",
            f'"$PY" -m pip install --no-input --progress-bar off -r "{helper.url}/requirements.txt";',
            f'mkdir -p {LOCK_DIR}; "$PY" -m pip freeze --all > {LOCK_DIR}/{self.lock_file}',
        ])
        # The helper URL (random port and token, dead after the build) is written into the RUN
        # line rather than passed as an ARG: an ARG costs one more container on the classic builder.
        shown = f"<pip install -r requirements.txt ({len(lines)} lines): a script written by envcache>"
        return StageRecipe(f"FROM {ctx.parent}\nRUN {run}\n", network=True,
                           display={run: shown, helper.url: "<envcache build helper>"})

    def unpinned(self) -> list[str]:
        from packaging.requirements import InvalidRequirement, Requirement

        unpinned = []
        for entry in self.view.python.conda_dependencies.pip_packages:
            try:
                req = Requirement(entry)
            except InvalidRequirement:
                continue
            if req.url:
                continue
            specs = list(req.specifier)
            if not (len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version):
                unpinned.append(f"pip:{entry}")
        return unpinned
