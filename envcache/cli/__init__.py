"""The ``envcache`` command.

One sub-command per verb; each is a small function that parses nothing itself (argparse does)
and prints either text for people or, with ``--json``, one JSON document for scripts
(:mod:`envcache.cli.output`). The verbs live in one module per group: ``definition`` (offline:
hash, canonical, diff, convert), ``daemon`` (serve, gc, fsck), ``client`` (talk to a running
daemon), ``wheels`` (private wheels on a daemon) and ``upstream``. Errors a user can cause are :class:`~envcache.errors.EnvcacheError`:
they print one line to stderr and exit with the error's status (2 for bad input, 3 for "not
found"), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from envcache.cli.output import HelpFormatter, exit_status
from envcache.errors import EnvcacheError

TYPE_CHECKING = False  # typing is not imported at run time: README, "The fast hit path"
if TYPE_CHECKING:
    from typing import Any

Handler = Callable[[argparse.Namespace], int]

DESCRIPTION = """envcache answers "is there already an image for this environment?" and builds it
when there is not. Start the daemon with "envcache serve", then resolve or ensure definitions;
"envcache COMMAND --help" describes each command."""


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its message but make it one clear line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

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
    common = argparse.ArgumentParser(add_help=False, formatter_class=HelpFormatter)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser = _Parser(prog="envcache", description=DESCRIPTION,
                     epilog=exit_status(s0="success", s1="failure (daemon unreachable, build failed, …)",
                                        s2="bad input: an argument, a definition, a config file",
                                        s3="not found (resolve: a cache miss)"))
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    owner = _COMMAND_OWNERS.get(command or "")
    for module in [owner] if owner else _COMMAND_MODULES:
        importlib.import_module(module).register(_OneVerb(sub, command) if owner else sub, common)
    return parser


class _OneVerb:
    """The sub-parsers a verb module registers into when one known verb runs: only that verb's
    parser is built; its siblings get a :class:`_Unbuilt` (the client module's other verbs cost a
    cache hit about 4% of its time to build, and are never used)."""

    def __init__(self, sub: Any, verb: str | None) -> None:
        self._sub, self._verb = sub, verb

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        return self._sub.add_parser(name, **kwargs) if name == self._verb else _Unbuilt()


class _Unbuilt:
    """Takes whatever a verb module does to a parser it will not need, and keeps nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


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
    "lock": "envcache.cli.lock",
    "wheels": "envcache.cli.wheels",
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
