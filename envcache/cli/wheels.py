"""``envcache wheels add|list|show|rm``: private wheels on a running daemon.

``add`` prints only the requirement to put in a definition (one line per file) on stdout, so it
composes: ``echo "$(envcache wheels add dist/*.whl)" >> requirements.txt``.
Exit codes: 0 ok, 1 refused (a file name taken by other bytes, a wheel still pinned), 2 not a
wheel, 3 no such wheel.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from envcache.cli.client import daemon_options
from envcache.cli.output import HelpFormatter, emit, exit_status, table

if TYPE_CHECKING:
    from envcache.client.sync import Client


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parents = [common, daemon_options()]
    down = "the daemon does not answer, or refused the request"

    wheels = sub.add_parser("wheels", help="private wheels: upload once, pin by digest in definitions",
                            formatter_class=HelpFormatter,
                            description="Private wheels on the daemon: uploaded once, stored by sha256, served "
                                        "to builds from the daemon's own package index, and pinned in definitions "
                                        "by their digest.",
                            epilog=exit_status(s0="success", s1=down, s2="bad arguments"))
    actions = wheels.add_subparsers(dest="wheels_command", metavar="ACTION")
    actions.required = True
    p = actions.add_parser("add", parents=parents, help="upload wheel files; prints the requirement for each",
                           formatter_class=HelpFormatter,
                           description="Upload wheel files (checked: name, version and tags from the file name "
                                       "and METADATA). stdout gets one requirement per file, pinning its digest, "
                                       "to put in a definition.",
                           epilog=exit_status(s0="uploaded (or already there): the requirements are on stdout",
                                              s1=f"a file name already names other bytes, or {down}",
                                              s2="not a wheel (the reason is printed)"))
    p.add_argument("files", nargs="+", metavar="FILE.whl")
    p.set_defaults(handler=_add)
    p = actions.add_parser("list", parents=parents, help="the daemon's private wheels", formatter_class=HelpFormatter,
                           description="List the daemon's private wheels: file, project, version, size, digest "
                                       "and when each was uploaded.",
                           epilog=exit_status(s0="the list is on stdout", s1=down))
    p.set_defaults(handler=_list)
    p = actions.add_parser("show", parents=parents, help="one wheel, and what pins it", formatter_class=HelpFormatter,
                           description="Show one wheel (by file name or sha256 digest): its metadata, the "
                                       "requirement that pins it, and the environments and images that use it.",
                           epilog=exit_status(s0="shown", s1=down, s3="no such wheel"))
    p.add_argument("wheel", metavar="WHEEL", help="file name or sha256 digest")
    p.set_defaults(handler=_show)
    p = actions.add_parser("rm", parents=parents, formatter_class=HelpFormatter,
                           help="remove a wheel (refused while a registered environment uses it)",
                           description="Remove an uploaded wheel. Refused while a registered environment pins it; "
                                       "images that pin it keep it until gc finds nothing uses it any more.",
                           epilog=exit_status(s0="removed", s1=f"a registered environment still uses it, or {down}",
                                              s3="no such wheel"))
    p.add_argument("wheel", metavar="WHEEL", help="file name or sha256 digest")
    p.set_defaults(handler=_rm)


def _client(args: argparse.Namespace) -> Client:
    from envcache.client.sync import Client

    return Client(args.url, args.token)


def _add(args: argparse.Namespace) -> int:
    client = _client(args)
    answers = []
    for path in args.files:
        answer = client.upload_wheel(path)
        answers.append(answer)
        wheel = answer["wheel"]
        verb = "uploaded" if answer["created"] else "already uploaded:"
        if not args.json:
            print(f"envcache: {verb} {wheel['filename']} ({wheel['digest']})", file=sys.stderr)
    emit(args, "\n".join(a["wheel"]["requirement"] for a in answers), answers)
    return 0


def _list(args: argparse.Namespace) -> int:
    wheels = _client(args).wheels()["wheels"]
    rows = [[w["filename"], w["name"], w["version"], f"{w['size']:,}", w["digest"][:19],
             time.strftime("%Y-%m-%d %H:%M", time.localtime(w["created"]))] for w in wheels]
    emit(args, table(["FILE", "PROJECT", "VERSION", "BYTES", "DIGEST", "UPLOADED"], rows), wheels)
    return 0


def _show(args: argparse.Namespace) -> int:
    answer = _client(args).wheel(args.wheel)
    wheel, users = answer["wheel"], answer["used_by"]
    lines = [f"{wheel['filename']}  {wheel['digest']}",
             f"  project {wheel['name']} {wheel['version']}, tags {', '.join(wheel['tags'])}, "
             f"requires-python {wheel['requires_python'] or 'any'}, {wheel['size']:,} bytes",
             f"  requirement: {wheel['requirement']}",
             *_uses(users)]
    emit(args, "\n".join(lines), answer)
    return 0


def _rm(args: argparse.Namespace) -> int:
    answer = _client(args).remove_wheel(args.wheel)
    wheel = answer["wheel"]
    text = f"removed {wheel['filename']} ({wheel['digest']})"
    if answer["artifact_kept"]:
        text += "\n  its bytes stay while these pin it (gc removes them afterwards):\n" + "\n".join(
            _uses(answer["used_by"]))
    emit(args, text, answer)
    return 0


def _uses(users: dict[str, list[str]]) -> list[str]:
    found = [("registered environment (latest)", users["environments"]), ("older version", users["older_versions"]),
             ("cached image", users["images"])]
    lines = [f"  {what}: {item}" for what, items in found for item in items]
    return lines or ["  pinned by nothing registered or cached"]
