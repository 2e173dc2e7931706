"""CLI verbs for pipeline steps: ``pipeline run``, ``step show``, ``step outputs``.

``pipeline run`` freezes the pipeline here — every source directory and file input hashed once,
file digests cached between runs in the user cache directory — uploads only the files the daemon
does not have yet (a HEAD first; the registry verifies each upload against its digest, so a file
edited since it was hashed is refused, never filed under the old key), then submits the frozen
pipeline and follows the run.

Exit codes: 0 every step reused or ran, 1 a step failed (its error and log tail on stderr) or the
daemon is unreachable, 2 bad input (the file, line and field are named), 3 no such step key.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envcache.cli.output import emit, table
from envcache.wire import STEP_FILES_REPOSITORY, STEP_REPOSITORY

if TYPE_CHECKING:
    from envcache.client.sync import Client
    from envcache.pipeline import FrozenPipeline, Tree



def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``pipeline`` and ``step`` to the ``envcache`` parser."""
    daemon = argparse.ArgumentParser(add_help=False)
    daemon.add_argument("--url", help="daemon URL (default: $ENVCACHE_URL or http://127.0.0.1:5050)")
    daemon.add_argument("--token", help="auth token (default: $ENVCACHE_TOKEN)")
    parents = [common, daemon]

    pipeline = sub.add_parser("pipeline", help="run pipelines of steps, reusing results whose inputs did not change")
    actions = pipeline.add_subparsers(dest="pipeline_command", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("run", parents=parents, help="run a pipeline file; prints each step: reused / ran / failed")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--regenerate-outputs", action="store_true", help="run every step, even those stored")
    p.add_argument("--continue-on-step-failure", action="store_true",
                   help="keep starting steps that do not depend on a failed one")
    p.add_argument("--max-parallel", type=int, default=2, help="independent steps run at once (1-16, default 2)")
    p.set_defaults(handler=_run)

    step = sub.add_parser("step", help="stored step results")
    actions = step.add_subparsers(dest="step_command", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("show", parents=parents, help="a step result: inputs, outputs, snapshot listing, log")
    p.add_argument("key", metavar="KEY")
    p.set_defaults(handler=_show)
    p = actions.add_parser("outputs", parents=parents, help="write a step result's outputs under DEST/<output>")
    p.add_argument("key", metavar="KEY")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--output", help="only this output")
    p.set_defaults(handler=_outputs)


def _client(args: argparse.Namespace) -> Client:
    from envcache.client.sync import Client

    return Client(args.url, args.token)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "envcache", "pipeline-digests")


def _environment(value: str | None, base_dir: Path, where: str) -> dict[str, Any]:
    """A step's environment as the API's subject: a definition file's raw files, or a registered name."""
    from envcache.errors import InvalidInput
    from envcache.wire import DefinitionFiles

    if value is None:
        raise InvalidInput(f"{where}: every step needs an environment (a definition file or a registered name); "
                           "set it on the step or under defaults")
    path = base_dir / value
    if path.exists():
        files = DefinitionFiles.from_path(str(path))
        if files is not None:
            return {"document": files.to_json()}
        from envcache.definition import definition_to_dict, load_definition

        return {"definition": definition_to_dict(load_definition(path))}
    return {"environment": {"name": value}}


def _listing(tree: Tree) -> dict[str, Any]:
    return {"kind": tree.kind, "files": [[f.path, f.mode, f.size, f.sha256] for f in tree.files]}


def _request(frozen: FrozenPipeline, base_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from envcache.pipeline import DataInput

    steps = []
    for index, step in enumerate(frozen.pipeline.steps):
        inputs = {item.name: {"tree": _listing(frozen.data[item.path])} if isinstance(item, DataInput)
                  else {"output": item.output} for item in step.inputs}
        steps.append({
            "name": step.name, "script_name": step.script_name, "snapshot": _listing(frozen.snapshots[step.name]),
            "environment": _environment(step.environment, base_dir, f"steps[{index}].environment"),
            "arguments": list(step.arguments), "inputs": inputs, "outputs": list(step.outputs),
            "variant": step.variant, "allow_reuse": step.allow_reuse, "version": step.version,
        })
    return {"steps": steps, "description": frozen.pipeline.description,
            "regenerate_outputs": args.regenerate_outputs, "continue_on_step_failure": args.continue_on_step_failure,
            "max_parallel": args.max_parallel}


def _files(frozen: FrozenPipeline) -> dict[str, Path]:
    """Each file digest the submission needs → one local file with that content."""
    found: dict[str, Path] = {}
    for tree in [*frozen.snapshots.values(), *frozen.data.values()]:
        for entry in tree.files:
            found.setdefault(f"sha256:{entry.sha256}", tree.root if tree.kind == "file" else tree.root / entry.path)
    return found


def _blob_call(client: Client, method: str, path: str, data: Any = None) -> int:
    """One registry request; the HTTP status (errors raised as the daemon's message)."""
    import urllib.error
    import urllib.request

    from envcache.client.base import error_for, headers, unavailable

    request = urllib.request.Request(client.url + path, data=data, method=method, headers=headers(client.token))
    try:
        with urllib.request.urlopen(request, timeout=client.timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        if exc.code == 404 and method == "HEAD":
            return 404
        raise error_for(exc.code, exc.read()) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise unavailable(client.url, getattr(exc, "reason", exc)) from None


def _upload(client: Client, files: dict[str, Path]) -> int:
    """Upload what the daemon lacks; returns how many files were sent."""
    from envcache.errors import InvalidInput

    sent = 0
    for digest, path in sorted(files.items()):
        if _blob_call(client, "HEAD", f"/v2/{STEP_FILES_REPOSITORY}/blobs/{digest}") == 200:
            continue
        with open(path, "rb") as handle:
            try:
                _blob_call(client, "POST", f"/v2/{STEP_FILES_REPOSITORY}/blobs/uploads/?digest={digest}", handle.read())
            except InvalidInput as exc:
                raise InvalidInput(f"{path}: changed after it was hashed; run again ({exc})") from None
        sent += 1
    return sent


def _run(args: argparse.Namespace) -> int:
    from envcache.errors import InvalidInput
    from envcache.pipeline import DigestCache, freeze, load_pipeline

    if not 1 <= args.max_parallel <= 16:
        raise InvalidInput(f"--max-parallel: {args.max_parallel}; use 1 to 16")
    path = Path(args.file)
    model = load_pipeline(path)
    frozen = freeze(model, cache=DigestCache(_cache_dir()))
    body = _request(frozen, path.parent, args)
    client = _client(args)
    uploaded = _upload(client, _files(frozen))
    run = client.submit_pipeline(body)
    delay = 0.05
    while run["state"] == "running":
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
        run = client.pipeline_run(run["id"])
    report = run.get("report") or {"ok": False, "seconds": 0.0, "steps": []}
    rows = [[s["name"], s["status"], f"{s['seconds']:.1f}", s["key"] or "-"] for s in report["steps"]]
    emit(args, table(["STEP", "STATUS", "SECONDS", "KEY"], rows), {**run, "uploaded_files": uploaded})
    for step in report["steps"]:
        if step["status"] == "failed":
            print(f"envcache: {step['error']}", file=sys.stderr)
            if step["log_tail"]:
                print("--- end of its log ---\n" + step["log_tail"].rstrip("\n"), file=sys.stderr)
    if run.get("error"):
        print(f"envcache: {run['error']}", file=sys.stderr)
    return 0 if run["state"] == "succeeded" else 1


def _step(args: argparse.Namespace) -> dict[str, Any]:
    from envcache.errors import NotFound

    found = _client(args).step(args.key)
    if found is None:
        raise NotFound(f"no stored step result with key {args.key!r}")
    return found


def _show(args: argparse.Namespace) -> int:
    found = _step(args)
    record = found["record"]
    lines = [f"step {found['step']}  key {found['key']}", f"artifact {found['image']}  {found['digest']}",
             f"script {record.get('script_name')} {' '.join(record.get('arguments', []))}",
             f"image {record.get('image_key')} ({record.get('variant')})", "inputs:"]
    lines += [f"  {name}  {digest}" for name, digest in sorted(record.get("inputs", {}).items())]
    lines.append("outputs:")
    lines += [f"  {name}  {output['tree']}" for name, output in sorted(found["outputs"].items())]
    lines.append(f"snapshot {record.get('snapshot')}:")
    lines += [f"  {size:>10}  {path}" for path, _mode, size, _sha in found["snapshot"]]
    lines += ["log:", *("  | " + line for line in found["log"].splitlines())]
    emit(args, "\n".join(lines), found)
    return 0


def _outputs(args: argparse.Namespace) -> int:
    import io
    import tarfile
    import urllib.request

    from envcache.client.base import headers
    from envcache.errors import NotFound

    found = _step(args)
    client = _client(args)
    wanted = {name: output for name, output in found["outputs"].items() if args.output in (None, name)}
    if not wanted:
        raise NotFound(f"step {args.key} has no output named {args.output!r} (outputs: {', '.join(found['outputs'])})")
    for name, output in sorted(wanted.items()):
        request = urllib.request.Request(f"{client.url}/v2/{STEP_REPOSITORY}/blobs/{output['blob']}",
                                         headers=headers(client.token))
        with urllib.request.urlopen(request, timeout=client.timeout) as response:
            data = response.read()
        target = Path(args.dest, name)
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            tar.extractall(target, filter="data")
    emit(args, "\n".join(str(Path(args.dest, name)) for name in sorted(wanted)),
         {name: str(Path(args.dest, name)) for name in sorted(wanted)})
    return 0
