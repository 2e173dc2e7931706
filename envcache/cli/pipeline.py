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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envcache.cli.client import daemon_options
from envcache.cli.output import HelpFormatter, emit, exit_status, table
from envcache.wire import STEP_REPOSITORY

if TYPE_CHECKING:
    from envcache.client.sync import Client



def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``pipeline`` and ``step`` to the ``envcache`` parser."""
    parents = [common, daemon_options()]
    down = "the daemon does not answer, or refused the request"
    unknown = "no stored step result with that key"

    pipeline = sub.add_parser("pipeline", help="run pipelines of steps, reusing results whose inputs did not change",
                              formatter_class=HelpFormatter,
                              description="Pipelines of steps: each step runs its script in its environment's "
                                          "image once, and is reused while nothing it depends on changed.",
                              epilog=exit_status(s0="success", s1=f"a step failed, or {down}", s2="bad input"))
    actions = pipeline.add_subparsers(dest="pipeline_command", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("run", parents=parents, help="run a pipeline file; prints each step: reused / ran / failed",
                           formatter_class=HelpFormatter,
                           description="Run a pipeline file on the daemon: each step is reused (its key is stored) "
                                       "or run in a container; stdout gets one line per step (status, seconds, "
                                       "key), stderr the steps' output as it comes.",
                           epilog=exit_status(s0="every step was reused or ran", s1=f"a step failed (its error and "
                                              f"log tail on stderr), or {down}",
                                              s2="bad pipeline file (file, line and field named)"))
    p.add_argument("file", metavar="FILE")
    p.add_argument("--regenerate-outputs", action="store_true", help="run every step, even those stored")
    p.add_argument("--continue-on-step-failure", action="store_true",
                   help="keep starting steps that do not depend on a failed one")
    p.add_argument("--max-parallel", type=int, default=2, help="independent steps run at once (1-16, default 2)")
    p.add_argument("--quiet", "-q", action="store_true", help="do not stream the steps' output")
    p.set_defaults(handler=_run)

    step = sub.add_parser("step", help="stored step results", formatter_class=HelpFormatter,
                          description="Stored pipeline step results (the artifacts envcache/step:KEY): what a "
                                      "step read, wrote and printed.",
                          epilog=exit_status(s0="success", s1=down, s3=unknown))
    actions = step.add_subparsers(dest="step_command", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("show", parents=parents, help="a step result: inputs, outputs, snapshot listing, log",
                           formatter_class=HelpFormatter,
                           description="Show a stored step result: script and arguments, image, inputs and "
                                       "outputs with their digests, the snapshot's files and the log.",
                           epilog=exit_status(s0="shown", s1=down, s3=unknown))
    p.add_argument("key", metavar="KEY")
    p.set_defaults(handler=_show)
    p = actions.add_parser("outputs", parents=parents, help="write a step result's outputs under DEST/<output>",
                           formatter_class=HelpFormatter,
                           description="Fetch a stored step result's outputs from the daemon and write each "
                                       "under DEST/<output name>.",
                           epilog=exit_status(s0="written; stdout lists the directories", s1=down,
                                              s3=f"{unknown}, or no output of that name"))
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


def _run(args: argparse.Namespace) -> int:
    from envcache.errors import InvalidInput
    from envcache.pipeline import DigestCache, freeze, load_pipeline
    from envcache.pipeline.submit import DaemonWorkspace

    if not 1 <= args.max_parallel <= 16:
        raise InvalidInput(f"--max-parallel: {args.max_parallel}; use 1 to 16")
    path = Path(args.file)
    frozen = freeze(load_pipeline(path), cache=DigestCache(_cache_dir()))
    workspace = DaemonWorkspace(args.url, args.token)
    run = workspace.start(frozen, base_dir=path.parent, regenerate_outputs=args.regenerate_outputs,
                          continue_on_step_failure=args.continue_on_step_failure, max_parallel=args.max_parallel)
    if not args.json and not args.quiet:  # the steps' output, as it comes, on stderr
        workspace.follow_log(run, lambda line: print(f"  | {line}", file=sys.stderr, flush=True))
    run = workspace.wait(run)
    report = run.get("report") or {"ok": False, "seconds": 0.0, "steps": []}
    rows = [[s["name"], s["status"], f"{s['seconds']:.1f}", s["key"] or "-"] for s in report["steps"]]
    emit(args, table(["STEP", "STATUS", "SECONDS", "KEY"], rows), run)
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
