"""CLI verbs for an image's lock: ``lock show`` and ``lock export``.

The lock is what a key's image installed, per package with its artifact and sha256 (README,
"Locks"). Both verbs take an image key (``KEY`` or ``KEY-VARIANT``) or a definition (any format
``envcache hash`` reads): a definition is looked up in the daemon without building, like
``envcache resolve``. Exit codes: 0 ok, 2 bad input, 3 no image for the definition.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envcache.cli.output import emit, exit_status
from envcache.wire import VARIANT_CHOICES

if TYPE_CHECKING:
    from envcache.builder.lock import Lock

EXPORTS = ("requirements", "conda-lock")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``lock show`` and ``lock export`` to the ``envcache`` parser."""
    daemon = argparse.ArgumentParser(add_help=False)
    daemon.add_argument("--url", help="daemon URL (default: $ENVCACHE_URL or http://127.0.0.1:5050)")
    daemon.add_argument("--token", help="auth token (default: $ENVCACHE_TOKEN)")
    daemon.add_argument("--variant", choices=VARIANT_CHOICES, default="auto",
                        help="for a definition: the image variant (default: auto)")
    daemon.add_argument("--definition-format", metavar="FORMAT",
                        help="for a definition: its format (default: detected from the path)")
    daemon.add_argument("subject", metavar="KEY|DEFINITION", help="an image key (or KEY-VARIANT), or a definition")
    statuses = exit_status(s0="printed", s1="the daemon does not answer", s2="bad input",
                           s3="no image for that key or definition (lock never builds)")
    lock = sub.add_parser("lock", help="an image's lock: every package it installed, with artifact and sha256",
                          description="An image's lock: every package it installed, with its artifact and sha256.",
                          epilog=statuses)
    lock_sub = lock.add_subparsers(dest="lock_command", metavar="ACTION")
    lock_sub.required = True
    p = lock_sub.add_parser("show", parents=[common, daemon], help="the lock, one package per line (or --json)",
                            description="Show an image's lock, one package per line: kind, name, version, "
                                        "sha256 and artifact (--json: the lock document).", epilog=statuses)
    p.set_defaults(handler=_show)
    p = lock_sub.add_parser("export", parents=[daemon],
                            help="the lock as a hash-pinned requirements file or a conda-lock file",
                            description="Write an image's lock as a requirements file (name==version with "
                                        "--hash, for pip install --no-deps -r) or a conda-lock file.",
                            epilog=statuses)
    p.add_argument("--format", dest="export_format", choices=EXPORTS, default="requirements",
                   help="requirements (for pip install --no-deps -r) or conda-lock (default: requirements)")
    p.add_argument("--output", "-o", metavar="FILE", help="write here instead of standard output")
    p.set_defaults(handler=_export)


def _image(args: argparse.Namespace) -> dict[str, Any]:
    """The image document the subject names (looked up, never built)."""
    from envcache.client.sync import Client
    from envcache.errors import NotFound

    client = Client(args.url, args.token)
    if not Path(args.subject).exists():
        return client.image(args.subject)
    from envcache.cli.client import _files_or_document

    answer = client.resolve(_files_or_document(args.subject, args.definition_format), args.variant)
    if answer is None:
        raise NotFound(f"{args.subject}: no cached image ({args.variant}), so no lock yet; "
                       f"run `envcache ensure {args.subject}`")
    return answer["image"]


def _lock(image: dict[str, Any]) -> Lock:
    from envcache.builder.lock import Lock

    return Lock.from_json(image.get("lock"))


def _show(args: argparse.Namespace) -> int:
    from envcache.builder.lock import render

    image = _image(args)
    lock = _lock(image)
    emit(args, f"# lock of {image['image']} ({image['digest']})\n{render(lock)}", lock.to_json())
    return 0


def _export(args: argparse.Namespace) -> int:
    from envcache.builder.lock import export_conda_lock, export_requirements
    from envcache.definition.files import atomic_write

    lock = _lock(_image(args))
    text = export_requirements(lock) if args.export_format == "requirements" else export_conda_lock(lock)
    if args.output:
        atomic_write(Path(args.output), text)
    else:
        print(text, end="")
    return 0
