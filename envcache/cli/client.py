"""CLI verbs that talk to a running daemon: resolve, ensure, warm, env …, images, status.

These are what build scripts and CI call, often on every job, so the module imports only the
standard-library client at start-up. ``resolve`` and ``ensure`` send the definition's raw files
and the daemon loads them (:mod:`envcache.wire`), so a hit imports no parser here;
``warm`` and ``env register`` load definitions locally (a bad file is reported per item).

``resolve``/``ensure`` take a PATH or a registered environment as ``NAME[:VERSION]`` (the latest
version without one); a path that exists always wins, so a file named like an environment is
never mistaken for it. ``warm --registered`` warms every registered environment's latest
version (curated ones excepted), in both variants unless ``--variants`` says otherwise.

Exit codes: 0 ok, 1 failure (daemon unreachable, build failed), 2 bad input, 3 not found /
cache miss (``resolve``), so ``envcache resolve env.yml || make-image`` works in a Makefile.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

from envcache.cli.output import HelpFormatter, Progress, emit, exit_status, table
from envcache.errors import EnvcacheError
from envcache.wire import VARIANT_CHOICES

TYPE_CHECKING = False  # typing is not imported at run time: README, "The fast hit path"
if TYPE_CHECKING:
    from typing import Any

    from envcache.client.sync import Client

_DEFINITION_SUFFIXES = (".yml", ".yaml", ".json", ".txt")
_AZURE_JSON = "azureml_environment.json"
# A registered environment: the daemon's name rule (letters, digits, - _ .; not starting with -
# or .), then an optional :VERSION.
_ENVIRONMENT = r"(?P<name>[A-Za-z0-9_][A-Za-z0-9._-]{0,254})(?::(?P<version>[0-9]{1,19}))?"


def daemon_options() -> argparse.ArgumentParser:
    """``--url`` and ``--token``: the parent parser of every verb that talks to a daemon."""
    daemon = argparse.ArgumentParser(add_help=False, formatter_class=HelpFormatter)
    daemon.add_argument("--url", help="daemon URL (default: $ENVCACHE_URL or http://127.0.0.1:5050)")
    daemon.add_argument("--token", help="auth token (default: $ENVCACHE_TOKEN)")
    return daemon


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the client-side verbs to the ``envcache`` parser."""
    daemon = daemon_options()
    fmt = argparse.ArgumentParser(add_help=False, formatter_class=HelpFormatter)
    fmt.add_argument("--format", help="definition format (default: detected from the path)")
    variant = argparse.ArgumentParser(add_help=False, formatter_class=HelpFormatter)
    variant.add_argument("--variant", choices=VARIANT_CHOICES, default="auto", help="image variant (default: auto)")
    parents = [common, daemon]

    daemon_down = "the daemon does not answer, or refused the request"
    p = sub.add_parser("resolve", parents=[*parents, fmt, variant],
                       help="print the cached image for a definition; exit 3 on a miss (never builds)",
                       description="Look a definition up in the daemon's cache and print the image reference. "
                                   "Never builds: on a miss it exits 3 and says which ensure would build it, so "
                                   "'envcache resolve env.yml || envcache ensure env.yml' works in a Makefile.",
                       epilog=exit_status(s0="hit: the image reference is on stdout", s1=daemon_down,
                                          s2="bad input (the definition, an argument)", s3="miss: no cached image"))
    p.add_argument("path", metavar="PATH|NAME[:VERSION]", help="a definition, or a registered environment")
    p.set_defaults(handler=_resolve)

    p = sub.add_parser("ensure", parents=[*parents, fmt, variant],
                       help="get the image for a definition, building it on a miss; prints the image ref last",
                       description="Get the image for a definition: a hit answers at once; a miss pulls it from an "
                                   "upstream or builds it, streaming the build log to stderr. stdout gets only "
                                   "the image reference, so IMAGE=$(envcache ensure env.yml) composes.",
                       epilog=exit_status(s0="the image reference is on stdout (hit, pulled or built)",
                                          s1=f"the build failed (its error lines are printed last), or {daemon_down}",
                                          s2="bad input (the definition, an argument)"))
    p.add_argument("path", metavar="PATH|NAME[:VERSION]", help="a definition, or a registered environment")
    p.add_argument("--refresh", action="store_true", help="rebuild to pick up new versions of unpinned requirements")
    p.add_argument("--quiet", "-q", action="store_true", help="do not stream the build log")
    p.set_defaults(handler=_ensure)

    p = sub.add_parser("warm", parents=parents, help="ensure many definitions (files or directories), e.g. in CI",
                       description="Ensure every definition under the given files and directories, in the given "
                                   "variants, a few at a time. A line on stderr as each item starts and ends (on "
                                   "a terminal, a status line while builds run); then a table, or the report "
                                   "with --json. A broken definition fails its item, not the run. "
                                   "--registered adds every registered environment's latest version.",
                       epilog=exit_status(s0="every item is cached", s1=f"an item failed, or {daemon_down}",
                                          s2="bad arguments, or no definitions found"))
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--registered", action="store_true",
                   help="also every registered environment (latest versions; not the curated ones)")
    p.add_argument("--variants", help="comma-separated variants, e.g. cpu,gpu (default: auto; cpu,gpu with "
                                      "--registered)")
    p.add_argument("--concurrency", type=int, default=4, help="definitions ensured at once (default: 4)")
    p.add_argument("--refresh", action="store_true", help="rebuild images with unpinned requirements")
    p.set_defaults(handler=_warm)

    found = exit_status(s0="done", s1=daemon_down, s2="bad input", s3="no such environment or version")
    env = sub.add_parser("env", help="registered environments (named, versioned definitions)",
                         description="Registered environments: definitions kept by the daemon under a name, "
                                     "with a new version whenever their content changes.", epilog=found)
    env_sub = env.add_subparsers(dest="env_command", metavar="ACTION")
    env_sub.required = True
    p = env_sub.add_parser("register", parents=[*parents, fmt], help="register a definition under a name",
                           description="Register a definition under a name: version 1, or a new version when "
                                       "the content changed (registering the same content again changes nothing).",
                           epilog=exit_status(s0="registered (or unchanged)", s1=daemon_down,
                                              s2="bad input (the definition, a reserved name)"))
    p.add_argument("name")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(handler=_env_register)
    p = env_sub.add_parser("list", parents=parents, help="list environments (latest versions)",
                           description="List registered and curated environments, latest versions.",
                           epilog=exit_status(s0="listed", s1=daemon_down))
    p.set_defaults(handler=_env_list)
    p = env_sub.add_parser("show", parents=parents, help="show one environment version",
                           description="Show one version of an environment (the latest by default) as YAML.",
                           epilog=found)
    p.add_argument("name")
    p.add_argument("--version", type=int, help="version (default: latest)")
    p.set_defaults(handler=_env_show)
    p = env_sub.add_parser("download", parents=parents, help="write a version as an Azure ML directory",
                           description="Write one version of an environment as an Azure ML environment directory.",
                           epilog=found)
    p.add_argument("name")
    p.add_argument("directory")
    p.add_argument("--version", type=int, help="version (default: latest)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=_env_download)
    p = env_sub.add_parser("scaffold", parents=[common], help="write a new, empty Azure ML environment directory",
                           description="Write a new, empty Azure ML environment directory to start from. Offline.",
                           epilog=exit_status(s0="written", s2="the directory is not empty"))
    p.add_argument("name")
    p.add_argument("directory")
    p.set_defaults(handler=_env_scaffold)

    p = sub.add_parser("images", parents=parents, help="list cached images, or one key's image and its history",
                       description="List the daemon's cached images, most recently used first; with KEY, that "
                                   "image (and with --history, the images refreshes replaced).",
                       epilog=exit_status(s0="listed", s1=daemon_down, s3="no image with that key"))
    p.add_argument("key", nargs="?", metavar="KEY", help="an image key (or KEY-VARIANT): show that image")
    p.add_argument("--history", action="store_true",
                   help="with KEY: also the images refreshes replaced (pullable by digest until gc expires them)")
    p.set_defaults(handler=_images)
    p = sub.add_parser("status", parents=parents, help="is the daemon up, and what is it doing",
                       description="Is the daemon up: its version, builds running and queued, and the build "
                                   "engine it would use now (which one, its version, whether it answers).",
                       epilog=exit_status(s0="the daemon answers", s1="nothing answers at the URL"))
    p.set_defaults(handler=_status)


def _client(args: argparse.Namespace) -> Client:
    from envcache.client.sync import Client

    return Client(args.url, args.token)


def _document(path: str, fmt: str | None) -> dict[str, Any]:
    from envcache.definition import definition_to_dict, load_definition

    return definition_to_dict(load_definition(path, fmt))


def _files_or_document(path: str, fmt: str | None) -> Any:
    """The definition's raw files for the daemon to load (the fast hit path), else the loaded document."""
    from envcache.wire import DefinitionFiles

    return DefinitionFiles.from_path(path, fmt) or _document(path, fmt)


def _subject(args: argparse.Namespace) -> dict[str, Any]:
    """``definition``/``environment`` keyword arguments for PATH or NAME[:VERSION] (a path that
    exists wins; ``--format`` always means a path)."""
    if args.format is None and not Path(args.path).exists():
        found = re.fullmatch(_ENVIRONMENT, args.path)
        if found is not None:
            version = found["version"]
            return {"environment": (found["name"], int(version) if version else None)}
    return {"definition": _files_or_document(args.path, args.format)}


def _asking(args: argparse.Namespace, subject: dict[str, Any], call: Any) -> Any:
    """``call()``, with a missing registered environment said in the CLI's words."""
    from envcache.errors import NotFound

    try:
        return call()
    except NotFound as exc:
        if "environment" not in subject:
            raise
        raise NotFound(f"{args.path}: no such file, and {exc.message}") from None


def _resolve(args: argparse.Namespace) -> int:
    from envcache.errors import NotFound

    subject = _subject(args)
    answer = _asking(args, subject, lambda: _client(args).resolve(variant=args.variant, **subject))
    if answer is None:
        if args.json:
            emit(args, "", {"status": "miss", "path": args.path, "variant": args.variant})
            return 3
        raise NotFound(f"{args.path}: no cached image ({args.variant}); run `{_ensure_command(args)}`")
    emit(args, answer["image"]["image"], answer)
    return 0


def _ensure_command(args: argparse.Namespace) -> str:
    """The ``ensure`` that builds what this ``resolve`` missed: same path, variant, format, daemon."""
    import shlex

    words = ["envcache", "ensure", args.path]
    if args.variant != "auto":
        words += ["--variant", args.variant]
    if args.format:
        words += ["--format", args.format]
    if args.url:
        words += ["--url", args.url]
    return shlex.join(words)


def _ensure(args: argparse.Namespace) -> int:
    from envcache.client.base import BuildFailure

    began = time.monotonic()
    quiet = args.quiet or args.json
    # Progress and the build log go to stderr; stdout gets only the image ref (or the JSON).
    # Each log line is printed when the next one arrives: the build's last line may be its
    # failure verdict, which the final error says once, with the build id.
    held: list[str] = []

    def flush() -> None:
        while held:
            print(f"  | {held.pop()}", file=sys.stderr, flush=True)

    def show(line: str) -> None:
        flush()
        held.append(line)

    subject = _subject(args)
    try:
        answer = _asking(args, subject, lambda: _client(args).ensure_image(
            variant=args.variant, refresh=args.refresh, on_log=None if quiet else show, **subject))
    except BuildFailure as failure:
        if quiet:
            raise  # the verdict, then the step's error lines: last, once
        if held == [f"envcache: {failure.verdict}"]:
            held.clear()
        flush()
        # The error lines were just streamed, right above: the verdict alone ends the output.
        raise EnvcacheError(f"build {failure.build['id']}: {failure.verdict}") from None
    flush()
    if not quiet:
        print(f"envcache: {answer['status']} in {time.monotonic() - began:.1f}s", file=sys.stderr)
        changes = (answer.get("build") or {}).get("changes")
        if args.refresh and changes is not None:
            print("envcache: refresh: " + ("; ".join(changes) if changes else
                                           "nothing changed (every package resolved to its locked version)"),
                  file=sys.stderr)
    emit(args, answer["image"]["image"], answer)
    return 0


def collect_definitions(paths: list[str]) -> list[tuple[str, Path]]:
    """(label, path) for every definition under ``paths``: files, Azure dirs, directory trees."""
    found: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not (path / _AZURE_JSON).is_file():
            for child in sorted(path.rglob("*")):
                if child.is_dir() and (child / _AZURE_JSON).is_file():
                    found.append((str(child), child))
                elif (child.is_file() and child.suffix.lower() in _DEFINITION_SUFFIXES
                      and not (child.parent / _AZURE_JSON).is_file()):
                    found.append((str(child), child))
        else:
            found.append((raw, path))
    return found


def _warm(args: argparse.Namespace) -> int:
    from envcache.errors import EnvcacheError, InvalidInput

    if not args.paths and not args.registered:
        raise InvalidInput("warm: give definition paths, --registered, or both")
    chosen = args.variants or ("cpu,gpu" if args.registered else "auto")
    variants = [v.strip() for v in chosen.split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANT_CHOICES):
        raise InvalidInput(f"--variants: {chosen!r}; use a comma-separated list of {', '.join(VARIANT_CHOICES)}")
    if not 1 <= args.concurrency <= 64:
        raise InvalidInput("--concurrency must be from 1 to 64")
    progress = Progress()
    items, results = [], []
    if args.registered:  # pinned to the versions that are latest now, so the report names them
        items = [{"label": f"{r['name']}:{r['version']}", "environment": {"name": r["name"], "version": r["version"]}}
                 for r in _client(args).environments()["environments"] if not r["curated"]]
    for label, path in collect_definitions(args.paths):
        try:
            items.append({"label": label, "definition": _document(str(path), None)})
        except EnvcacheError as exc:  # report it with the others, keep warming the rest
            for v in variants:
                results.append({"label": label, "variant": v, "outcome": "failed", "error": exc.message, "seconds": 0.0})
                progress.line(f"warm: {label} ({v}): failed: {exc.message.splitlines()[0]}")
    if not items and not results:
        if args.paths:
            raise InvalidInput(f"no definitions found under {', '.join(args.paths)}")
        emit(args, "nothing to warm: no environments are registered", {"results": [], "summary": {}, "ok": True})
        return 0
    if items:
        for event in _client(args).warm_events(items, variants, args.concurrency, refresh=args.refresh):
            if event["event"] == "report":
                results = event["report"]["results"] + results
            else:
                _show_warm_event(progress, event)
    progress.done()
    summary = dict(Counter(result["outcome"] for result in results))
    ok = "failed" not in summary
    totals = ", ".join(f"{count} {outcome}" for outcome, count in sorted(summary.items()))
    emit(args, f"{_warm_table(results, sys.stdout.isatty())}\n{totals}", {"results": results, "summary": summary,
                                                                          "ok": ok})
    return 0 if ok else 1


def _show_warm_event(progress: Progress, event: dict[str, Any]) -> None:
    """One of the daemon's warm events on stderr: items starting and ending stay, what is running
    is the status."""
    if event["event"] == "started":
        progress.line(f"warm: {event['label']} ({event['variant']}): started")
    elif event["event"] == "finished":
        result = event["result"]
        what = result["image"]["image"] if result.get("image") else (result.get("error") or "").splitlines()[0]
        progress.line(f"warm: {result['label']} ({result['variant']}): {result['outcome']} in "
                      f"{result['seconds']:.1f}s: {what}")
    elif event["event"] == "running":
        running = ", ".join(f"{item['label']} ({item['variant']}) {item['seconds']:.0f}s" for item in event["items"])
        progress.status(f"warm: running: {running}")


#: Lines of one item's error the table shows; the rest is in ``--json``.
_ERROR_LINES = 8


def _warm_table(results: list[dict[str, Any]], wrap: bool) -> str:
    """The summary table. An error is shown whole-word: wrapped to the terminal (on one), never
    cut mid-word; a long one ends with a pointer to --json."""
    import shutil
    import textwrap

    header = ["DEFINITION", "VARIANT", "OUTCOME", "SECONDS", "IMAGE / ERROR"]
    firsts = [[r["label"], r["variant"], r["outcome"], f"{r.get('seconds', 0):.1f}"] for r in results]
    indent = sum(max(len(row[i]) for row in [header, *firsts]) + 2 for i in range(4))
    width = max(30, shutil.get_terminal_size().columns - indent) if wrap else 0
    rows = []
    for first, result in zip(firsts, results):
        if result.get("image"):
            rows.append([*first, result["image"]["image"]])
            continue
        lines = [piece for line in (result.get("error") or "").splitlines()
                 for piece in (textwrap.wrap(line, width, subsequent_indent="  ") if width else [line])] or [""]
        if len(lines) > _ERROR_LINES:
            lines = [*lines[:_ERROR_LINES - 1], f"… {len(lines) - _ERROR_LINES + 1} more line(s): see --json"]
        rows += [[*first, lines[0]], *[["", "", "", "", line] for line in lines[1:]]]
    return table(header, rows)


def _env_register(args: argparse.Namespace) -> int:
    answer = _client(args).register_environment(args.name, _document(args.path, args.format))
    record = answer["environment"]
    verb = "registered" if answer["created"] else "unchanged, already"
    emit(args, f"{verb} {record['name']} version {record['version']} ({record['spec_hash']})", answer)
    return 0


def _env_list(args: argparse.Namespace) -> int:
    records = _client(args).environments()["environments"]
    rows = [[r["name"], str(r["version"]), r["spec_hash"], "curated" if r["curated"] else ""] for r in records]
    emit(args, table(["NAME", "VERSION", "SPEC HASH", ""], rows), records)
    return 0


def _env_show(args: argparse.Namespace) -> int:
    import yaml

    from envcache.definition import definition_from_dict, definition_to_dict

    record = _client(args).environment(args.name, args.version)
    # The definition format's own order (README, "The definition format"), whichever order the
    # daemon kept it in: registered versions come back sorted, curated ones as written.
    shown = definition_to_dict(definition_from_dict(record["definition"], source=args.name), redact=True)
    text = f"# {record['name']} version {record['version']} ({record['spec_hash']})\n" + yaml.safe_dump(
        shown, sort_keys=False)
    emit(args, text.rstrip(), record)
    return 0


def _env_download(args: argparse.Namespace) -> int:
    from envcache.errors import InvalidInput
    from envcache.definition.files import atomic_write

    answer = _client(args).download_environment(args.name, args.version)
    out = Path(args.directory)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InvalidInput(f"{out} is not empty (use --overwrite)")
    for relative, text in answer["files"].items():
        target = out / relative
        if ".." in Path(relative).parts or Path(relative).is_absolute():
            raise InvalidInput(f"refusing to write outside {out}: {relative}")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, text)
    emit(args, f"wrote {answer['name']} version {answer['version']} to {out}", answer)
    return 0


def _env_scaffold(args: argparse.Namespace) -> int:
    from envcache.errors import InvalidInput
    from envcache.definition import Definition, write_azure_dir

    out = Path(args.directory)
    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"{out} is not empty")
    write_azure_dir(Definition(name=args.name), out)
    emit(args, f"wrote a new environment {args.name} to {out}", {"name": args.name, "directory": str(out)})
    return 0


def _images(args: argparse.Namespace) -> int:
    if args.key:
        return _image(args)
    images = _client(args).images()["images"]
    rows = [[i["image"], i["variant"], f"{i['size'] / 1e6:.1f} MB", time.strftime("%Y-%m-%d %H:%M", time.localtime(i["last_used"]))]
            for i in images]
    emit(args, table(["IMAGE", "VARIANT", "SIZE", "LAST USED"], rows), images)
    return 0


def _image(args: argparse.Namespace) -> int:
    """One key: its image, and with ``--history`` the images refreshes replaced."""
    client = _client(args)
    if not args.history:
        image = client.image(args.key)
        emit(args, f"{image['image']}  {image['digest']}", image)
        return 0
    history = client.image_history(args.key)
    current = history["current"]
    rows = [[current["image"], current["digest"], _when(current["created"]), "current"]]
    rows += [[old["image"], old["digest"], _when(old["created"]), f"replaced {_when(old['replaced'])}"]
             for old in history["replaced"]]
    emit(args, table(["IMAGE", "DIGEST", "CREATED", ""], rows), history)
    return 0


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def _status(args: argparse.Namespace) -> int:
    client = _client(args)
    health = client.health()
    text = (f"envcache daemon {health['version']} at {client.url}: {health['status']}, "
            f"{health['builds_running']} build(s) running, {health['queue_depth']} queued")
    engine = health.get("engine") or {}  # a daemon older than this client does not say
    if engine.get("summary"):
        text += f"\n{engine['summary']}"
    emit(args, text, {**health, "url": client.url})
    return 0
