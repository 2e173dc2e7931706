"""Submitting a frozen pipeline to an envcache daemon: what ``envcache pipeline run`` and the Python
API's :class:`DaemonWorkspace` both do.

The pipeline is hashed here (:func:`~envcache.pipeline.scheduler.freeze`); the daemon is asked
which file contents it lacks (a ``HEAD`` per digest on ``envcache/step-files``) and gets only
those, each verified against its digest on arrival — so a file edited after it was hashed is
refused, never filed under the old key. Then the frozen pipeline is posted and the run followed.
Standard library HTTP only (``urllib``), like the blocking client.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from envcache.errors import EnvcacheError, InvalidInput, NotFound
from envcache.pipeline.model import DataInput
from envcache.pipeline.scheduler import FrozenPipeline, PipelineReport
from envcache.pipeline.tree import Tree
from envcache.wire import STEP_FILES_REPOSITORY, DefinitionFiles, daemon_url, error_message


class DaemonUnreachable(EnvcacheError):
    exit_code = 1


class DaemonWorkspace:
    """Where pipelines run: an envcache daemon (``url`` defaults to ``$ENVCACHE_URL`` or
    http://127.0.0.1:5050, ``token`` to ``$ENVCACHE_TOKEN``). Pass it as Azure's ``workspace``."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 3600) -> None:
        self.url = daemon_url(url)
        self.token = token or os.environ.get("ENVCACHE_TOKEN")
        self.timeout = timeout

    def _headers(self) -> dict[str, str]:
        return {"User-Agent": "envcache-client", **({"Authorization": f"Bearer {self.token}"} if self.token else {})}

    def _call(self, method: str, path: str, data: bytes | None = None,
              content_type: str | None = None) -> tuple[int, bytes]:
        headers = {**self._headers(), **({"Content-Type": content_type} if content_type else {})}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DaemonUnreachable(f"no envcache daemon answers at {self.url} ({reason})") from None
        if method == "HEAD" and status == 404:
            return status, body
        message = (error_message(body) or (body.decode("utf-8", "replace")[:500] or f"HTTP {status}", {}))[0]
        raise (InvalidInput if status in (400, 413) else NotFound if status == 404 else EnvcacheError)(message)

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        return json.loads(self._call(method, path, data, "application/json" if data else None)[1])

    def upload(self, frozen: FrozenPipeline) -> int:
        """Send the daemon every file content it lacks; returns how many files were sent."""
        sent = 0
        for digest, path in sorted(_files(frozen).items()):
            if self._call("HEAD", f"/v2/{STEP_FILES_REPOSITORY}/blobs/{digest}")[0] == 200:
                continue
            try:
                self._call("POST", f"/v2/{STEP_FILES_REPOSITORY}/blobs/uploads/?digest={digest}", path.read_bytes(),
                           "application/octet-stream")
            except InvalidInput as exc:
                raise InvalidInput(f"{path}: changed after it was hashed; run again ({exc})") from None
            sent += 1
        return sent

    def start(self, frozen: FrozenPipeline, *, base_dir: Path, regenerate_outputs: bool = False,
              continue_on_step_failure: bool = False, max_parallel: int = 2) -> dict[str, Any]:
        """Upload what is missing and start the run; returns the run (``id``, ``state``, ``uploaded_files``)."""
        body = frozen_request(frozen, base_dir, regenerate_outputs=regenerate_outputs,
                              continue_on_step_failure=continue_on_step_failure, max_parallel=max_parallel)
        uploaded = self.upload(frozen)
        return {**self._json("POST", "/api/v1/pipeline-runs", body), "uploaded_files": uploaded}

    def follow_log(self, run: dict[str, Any], on_line: Callable[[str], None]) -> None:
        """Hand each line the run's steps print (``STEP | line``) to ``on_line`` until the run ends."""
        request = urllib.request.Request(f"{self.url}/api/v1/pipeline-runs/{run['id']}/log",
                                         headers=self._headers())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                for raw in response:
                    on_line(raw.decode("utf-8", "replace").rstrip("\n"))
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise DaemonUnreachable(f"lost the daemon at {self.url} while following run {run['id']} ({exc})") from None

    def wait(self, run: dict[str, Any]) -> dict[str, Any]:
        """Follow a run until it ends; returns it with its report."""
        delay = 0.05
        while run["state"] == "running":
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
            run = {**run, **self._json("GET", f"/api/v1/pipeline-runs/{run['id']}")}
        return run

    def run(self, frozen: FrozenPipeline, *, base_dir: Path, **options: Any) -> PipelineReport:
        """Start and follow a run: the Python API's submission (``Pipeline.submit``)."""
        run = self.wait(self.start(frozen, base_dir=base_dir, **options))
        if run.get("report") is None:
            raise EnvcacheError(run.get("error") or f"pipeline run {run['id']} ended without a report")
        return PipelineReport.from_dict(run["report"])


def _listing(tree: Tree) -> dict[str, Any]:
    return {"kind": tree.kind, "files": [[f.path, f.mode, f.size, f.sha256] for f in tree.files]}


def _files(frozen: FrozenPipeline) -> dict[str, Path]:
    """Each file digest the submission needs → one local file with that content."""
    found: dict[str, Path] = {}
    for tree in [*frozen.snapshots.values(), *frozen.data.values()]:
        for entry in tree.files:
            found.setdefault(f"sha256:{entry.sha256}", tree.root if tree.kind == "file" else tree.root / entry.path)
    return found


def environment_subject(value: str | None, base_dir: Path, where: str) -> dict[str, Any]:
    """A step's environment as the API's subject: a definition file (its raw files, or the loaded
    document when they cannot be sent raw), else the name of a registered environment."""
    if value is None:
        raise InvalidInput(f"{where}: every step needs an environment (a definition file or a registered name); "
                           "set it on the step or under defaults")
    path = base_dir / value
    if not path.exists():
        return {"environment": {"name": value}}
    files = DefinitionFiles.from_path(str(path))
    if files is not None:
        return {"document": files.to_json()}
    from envcache.definition import definition_to_dict, load_definition

    return {"definition": definition_to_dict(load_definition(path))}


def frozen_request(frozen: FrozenPipeline, base_dir: Path, *, regenerate_outputs: bool = False,
                   continue_on_step_failure: bool = False, max_parallel: int = 2) -> dict[str, Any]:
    """The body of ``POST /api/v1/pipeline-runs`` for a frozen pipeline."""
    steps = []
    for index, step in enumerate(frozen.pipeline.steps):
        inputs = {item.name: {"tree": _listing(frozen.data[item.path])} if isinstance(item, DataInput)
                  else {"output": item.output} for item in step.inputs}
        steps.append({
            "name": step.name, "script_name": step.script_name, "snapshot": _listing(frozen.snapshots[step.name]),
            "environment": environment_subject(step.environment, base_dir, f"steps[{index}].environment"),
            "arguments": list(step.arguments), "inputs": inputs, "outputs": list(step.outputs),
            "variant": step.variant, "allow_reuse": step.allow_reuse, "version": step.version,
        })
    return {"steps": steps, "description": frozen.pipeline.description, "regenerate_outputs": regenerate_outputs,
            "continue_on_step_failure": continue_on_step_failure, "max_parallel": max_parallel}
