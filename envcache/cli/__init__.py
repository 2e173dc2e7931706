"""The ``envcache`` command.

One sub-command per verb; each is a small function that parses nothing itself (argparse does)
and prints either text for people or, with ``--json``, one JSON document for scripts
(:mod:`envcache.cli.output`). The verbs live in one module per group: ``definition`` (offline:
hash, canonical, diff, convert), ``daemon`` (serve, gc, fsck), ``client`` (talk to a running
daemon) and ``upstream``. Errors a user can cause are :class:`~envcache.errors.EnvcacheError`:
they print one line to stderr and exit with the error's status (2 for bad input, 3 for "not
found"), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from envcache.errors import EnvcacheError

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its message but make it one clear line."""

    def error(self, message: str) -> None:  # pragma: no cover - exercised via subprocess tests
        self.print_usage(sys.stderr)
        self.exit(2, f"envcache: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``envcache`` parser; with ``command``, only the module that owns that verb is loaded.

    WHY: ``envcache resolve`` runs on every CI job and Makefile step, so its start-up is the
    product's latency. Importing every concern's ``commands`` module (``serve`` pulls in asyncio)
    and building every sub-parser costs more than the lookup itself. An unknown verb, ``--help``
    or ``--version`` still builds the full parser, so help and "did you mean" stay complete.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser = _Parser(prog="envcache", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    owner = _COMMAND_OWNERS.get(command or "")
    for module in [owner] if owner else _COMMAND_MODULES:
        importlib.import_module(module).register(sub, common)
    return parser


def _version() -> str:
    from envcache import __version__

    return f"envcache {__version__}"


# Each group of verbs is a module with ``register(subparsers, common)``; handlers import heavy
# dependencies lazily so that ``envcache resolve`` on a cache hit starts fast. Which module
# registers each verb, so one invocation imports only what it runs; tests/test_service_cli.py
# checks this map against what the modules register.
_COMMAND_OWNERS = {
    **dict.fromkeys(("hash", "canonical", "diff", "convert"), "envcache.cli.definition"),
    **dict.fromkeys(("serve", "gc", "fsck"), "envcache.cli.daemon"),
    **dict.fromkeys(("resolve", "ensure", "warm", "env", "images", "status"), "envcache.cli.client"),
    **dict.fromkeys(("upstream", "push", "pull"), "envcache.cli.upstream"),
    **dict.fromkeys(("pipeline", "step"), "envcache.cli.pipeline"),
}
_COMMAND_MODULES = list(dict.fromkeys(_COMMAND_OWNERS.values()))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The verb comes first: the top level has no options that take values.
    command = argv[0] if argv and not argv[0].startswith("-") else None
    args = build_parser(command).parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except EnvcacheError as exc:
        print(f"envcache: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("envcache: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # last resort: a bug of ours must still not dump a traceback on users
        if os.environ.get("ENVCACHE_DEBUG"):
            raise
        print(f"envcache: internal error: {type(exc).__name__}: {exc} (set ENVCACHE_DEBUG=1 for details)",
              file=sys.stderr)
        return 1
