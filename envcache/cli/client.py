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
from typing import TYPE_CHECKING, Any

from envcache.cli.output import emit, table
from envcache.wire import VARIANT_CHOICES

if TYPE_CHECKING:
    from envcache.client.sync import Client

_DEFINITION_SUFFIXES = (".yml", ".yaml", ".json", ".txt")
_AZURE_JSON = "azureml_environment.json"
# A registered environment: the daemon's name rule (letters, digits, - _ .; not starting with -
# or .), then an optional :VERSION.
_ENVIRONMENT = r"(?P<name>[A-Za-z0-9_][A-Za-z0-9._-]{0,254})(?::(?P<version>[0-9]{1,19}))?"


def daemon_options() -> argparse.ArgumentParser:
    """``--url`` and ``--token``: the parent parser of every verb that talks to a daemon."""
    daemon = argparse.ArgumentParser(add_help=False)
    daemon.add_argument("--url", help="daemon URL (default: $ENVCACHE_URL or http://127.0.0.1:5050)")
    daemon.add_argument("--token", help="auth token (default: $ENVCACHE_TOKEN)")
    return daemon


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the client-side verbs to the ``envcache`` parser."""
    daemon = daemon_options()
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("--format", help="definition format (default: detected from the path)")
    variant = argparse.ArgumentParser(add_help=False)
    variant.add_argument("--variant", choices=VARIANT_CHOICES, default="auto", help="image variant (default: auto)")
    parents = [common, daemon]

    p = sub.add_parser("resolve", parents=[*parents, fmt, variant],
                       help="print the cached image for a definition; exit 3 on a miss (never builds)")
    p.add_argument("path", metavar="PATH|NAME[:VERSION]", help="a definition, or a registered environment")
    p.set_defaults(handler=_resolve)

    p = sub.add_parser("ensure", parents=[*parents, fmt, variant],
                       help="get the image for a definition, building it on a miss; prints the image ref last")
    p.add_argument("path", metavar="PATH|NAME[:VERSION]", help="a definition, or a registered environment")
    p.add_argument("--refresh", action="store_true", help="rebuild to pick up new versions of unpinned requirements")
    p.add_argument("--quiet", "-q", action="store_true", help="do not stream the build log")
    p.set_defaults(handler=_ensure)

    p = sub.add_parser("warm", parents=parents, help="ensure many definitions (files or directories), e.g. in CI")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--registered", action="store_true",
                   help="also every registered environment (latest versions; not the curated ones)")
    p.add_argument("--variants", help="comma-separated variants, e.g. cpu,gpu (default: auto; cpu,gpu with "
                                      "--registered)")
    p.add_argument("--concurrency", type=int, default=4, help="definitions ensured at once (default: 4)")
    p.add_argument("--refresh", action="store_true", help="rebuild images with unpinned requirements")
    p.set_defaults(handler=_warm)

    env = sub.add_parser("env", help="registered environments (named, versioned definitions)")
    env_sub = env.add_subparsers(dest="env_command", metavar="ACTION")
    env_sub.required = True
    p = env_sub.add_parser("register", parents=[*parents, fmt], help="register a definition under a name")
    p.add_argument("name")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(handler=_env_register)
    p = env_sub.add_parser("list", parents=parents, help="list environments (latest versions)")
    p.set_defaults(handler=_env_list)
    p = env_sub.add_parser("show", parents=parents, help="show one environment version")
    p.add_argument("name")
    p.add_argument("--version", type=int, help="version (default: latest)")
    p.set_defaults(handler=_env_show)
    p = env_sub.add_parser("download", parents=parents, help="write a version as an Azure ML directory")
    p.add_argument("name")
    p.add_argument("directory")
    p.add_argument("--version", type=int, help="version (default: latest)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=_env_download)
    p = env_sub.add_parser("scaffold", parents=[common], help="write a new, empty Azure ML environment directory")
    p.add_argument("name")
    p.add_argument("directory")
    p.set_defaults(handler=_env_scaffold)

    p = sub.add_parser("images", parents=parents, help="list cached images")
    p.set_defaults(handler=_images)
    p = sub.add_parser("status", parents=parents, help="is the daemon up, and what is it doing")
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
        raise NotFound(f"{args.path}: no cached image ({args.variant}); run `envcache ensure {args.path}`")
    emit(args, answer["image"]["image"], answer)
    return 0


def _ensure(args: argparse.Namespace) -> int:
    began = time.monotonic()
    quiet = args.quiet or args.json
    # Progress and the build log go to stderr; stdout gets only the image ref (or the JSON).
    subject = _subject(args)
    answer = _asking(args, subject, lambda: _client(args).ensure_image(
        variant=args.variant, refresh=args.refresh,
        on_log=None if quiet else (lambda line: print(f"  | {line}", file=sys.stderr, flush=True)), **subject))
    if not quiet:
        print(f"envcache: {answer['status']} in {time.monotonic() - began:.1f}s", file=sys.stderr)
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
    items, failed = [], []
    if args.registered:  # pinned to the versions that are latest now, so the report names them
        items = [{"label": f"{r['name']}:{r['version']}", "environment": {"name": r["name"], "version": r["version"]}}
                 for r in _client(args).environments()["environments"] if not r["curated"]]
    for label, path in collect_definitions(args.paths):
        try:
            items.append({"label": label, "definition": _document(str(path), None)})
        except EnvcacheError as exc:  # report it with the others, keep warming the rest
            failed.extend({"label": label, "variant": v, "outcome": "failed", "error": exc.message, "seconds": 0.0}
                          for v in variants)
    results: list[dict[str, Any]] = list(failed)
    if items:
        report = _client(args).warm(items, variants, args.concurrency, refresh=args.refresh)
        results = report["results"] + failed
    if not results and args.paths:
        raise InvalidInput(f"no definitions found under {', '.join(args.paths)}")
    if not results:
        emit(args, "nothing to warm: no environments are registered", {"results": [], "summary": {}, "ok": True})
        return 0
    summary = dict(Counter(result["outcome"] for result in results))
    ok = "failed" not in summary
    text = table(["DEFINITION", "VARIANT", "OUTCOME", "SECONDS", "IMAGE / ERROR"],
                   [[r["label"], r["variant"], r["outcome"], f"{r.get('seconds', 0):.1f}",
                     r["image"]["image"] if r.get("image") else (r.get("error") or "").partition("\n")[0][:120]]
                    for r in results])
    totals = ", ".join(f"{count} {outcome}" for outcome, count in sorted(summary.items()))
    emit(args, f"{text}\n{totals}", {"results": results, "summary": summary, "ok": ok})
    return 0 if ok else 1


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

    record = _client(args).environment(args.name, args.version)
    text = f"# {record['name']} version {record['version']} ({record['spec_hash']})\n" + yaml.safe_dump(
        record["definition"], sort_keys=False)
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
    images = _client(args).images()["images"]
    rows = [[i["image"], i["variant"], f"{i['size'] / 1e6:.1f} MB", time.strftime("%Y-%m-%d %H:%M", time.localtime(i["last_used"]))]
            for i in images]
    emit(args, table(["IMAGE", "VARIANT", "SIZE", "LAST USED"], rows), images)
    return 0


def _status(args: argparse.Namespace) -> int:
    client = _client(args)
    health = client.health()
    text = (f"envcache daemon {health['version']} at {client.url}: {health['status']}, "
            f"{health['builds_running']} build(s) running, {health['queue_depth']} queued")
    emit(args, text, {**health, "url": client.url})
    return 0
