"""CLI verbs of the daemon: ``serve``, and ``gc``/``fsck`` over its data directory."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envcache.cli.output import Progress, emit, exit_status

if TYPE_CHECKING:
    from envcache.service.config import Config
    from envcache.store import Store


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the daemon's sub-commands to the ``envcache`` parser."""
    _register_serve(sub, common)
    _register_gc(sub, common)
    _register_fsck(sub, common)


# -- serve -------------------------------------------------------------------------------------
def _register_serve(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "serve", parents=[common],
        help="run the daemon (OCI registry under /v2/, JSON API under /api/v1/)",
        description="Run the envcache daemon. Listens on 127.0.0.1:5050 unless configured otherwise; "
                    "a non-loopback address needs auth tokens in the config file. Prints one line when it "
                    "listens (with --json, one JSON object): the URL, the data directory and the build "
                    "engine. The log (one line per request, and the daemon's messages) goes to stderr.",
        epilog=exit_status(s0="stopped cleanly (SIGTERM, Ctrl-C)", s1="could not start (data directory in use, …)",
                           s2="bad config or arguments"),
    )
    parser.add_argument("--config", type=Path, help="TOML config file (see config/envcache.toml)")
    parser.add_argument("--data", type=Path, help="data directory (overrides server.data_dir)")
    parser.add_argument("--host", help="address to listen on (overrides server.host)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides server.port; 0 picks a free one)")
    parser.add_argument("--log-format", choices=("json", "text"),
                        help="the log on stderr (or [log] file): one JSON object per line, or text (overrides log.format)")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from envcache.errors import InvalidInput
    from envcache.service.config import check_bind, load_config

    config = load_config(args.config)
    if args.data is not None:
        config.server.data_dir = args.data
    if args.host is not None:
        config.server.host = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise InvalidInput(f"--port must be between 0 and 65535, not {args.port}")
        config.server.port = args.port
    if args.log_format is not None:
        config.log.format = args.log_format
    check_bind(config)
    asyncio.run(_run(config, args.json))
    return 0


async def _run(config: Config, as_json: bool) -> None:
    """Serve until SIGTERM/SIGINT, then shut down cleanly (store closed, sessions kept on disk)."""
    from envcache import __version__
    from envcache.errors import EnvcacheError
    from envcache.service import logs
    from envcache.service.app import create_app
    from envcache.service.daemon import DAEMON
    from envcache.service.server import listen, serve

    access_log = logs.configure(config.log)
    # The port first: a conflict is one clear line, before the data directory is even created.
    listening = await listen(config.server)
    app = await create_app(config)
    if not app["store"].owner:
        # Two daemons (or a daemon and an offline gc) writing one data directory would sweep
        # each other's uploads; the first one keeps it.
        await app["store"].close()
        listening.server.close()
        data = config.server.data_dir
        raise EnvcacheError(f"{data} is in use by another envcache process (it holds {Path(data) / '.lock'}); "
                            "stop it or pass a different --data")
    runner, url = await serve(app, config.server, listening, access_log_class=logs.AccessLogger,
                              access_log=access_log, shutdown_timeout=5)
    _announce(Path(config.server.data_dir), url)
    engine = await app[DAEMON].engine.state()
    # One flushed line on stdout, so scripts and tests can wait for it and learn the port.
    if as_json:
        print(json.dumps({"serving": url, "version": __version__, "data": str(config.server.data_dir),
                          "engine": dataclasses.asdict(engine)}), flush=True)
    else:
        print(f"envcache serving on {url} (data: {config.server.data_dir}; {engine.describe()})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        (Path(config.server.data_dir) / URL_FILE).unlink(missing_ok=True)
        await runner.cleanup()


#: In the data directory: the URL its daemon serves on, so `envcache gc --data DIR` can say where
#: to send the work instead (README "On-disk layout").
URL_FILE = "daemon.url"


def _announce(data_dir: Path, url: str) -> None:
    """Write the URL a local client reaches the daemon at (a wildcard bind answers on loopback)."""
    from envcache.definition.files import atomic_write

    local = url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://:::", "://[::1]:").replace("://[::]:", "://[::1]:")
    atomic_write(data_dir / URL_FILE, local + "\n")


def _daemon_url(data_dir: Path) -> str:
    """The URL the daemon holding ``data_dir`` announced (a placeholder if it did not)."""
    try:
        return (data_dir / URL_FILE).read_text(encoding="utf-8").strip() or "http://HOST:PORT"
    except OSError:
        return "http://HOST:PORT"


# -- gc and fsck: maintenance of a data directory ---------------------------------------------
def _register_gc(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "gc", parents=[common],
        help="delete untagged manifests, unreferenced blobs, idle uploads (and unused images with --keep-days)",
        description="Mark and sweep a data directory: everything reachable from a tag or a cached image "
                    "stays, the rest goes once it is older than the grace period. Works on the data "
                    "directory directly while no daemon runs; with --url it asks a running daemon.",
        epilog=exit_status(s0="done", s1="refused (a daemon holds the data directory) or failed",
                           s2="bad arguments", s3="no data directory there"),
    )
    parser.add_argument("--dry-run", action="store_true", help="report what would be removed; change nothing")
    parser.add_argument("--keep-days", type=_non_negative, metavar="N",
                        help="first expire cached images not used for N days (their tags go, then the sweep)")
    parser.add_argument("--grace", type=_non_negative, default=3600.0, metavar="SECONDS",
                        help="keep anything touched more recently than this (default: 3600)")
    _data_args(parser)
    parser.add_argument("--url", help="run gc inside the daemon at this URL (POST /api/v1/gc) instead")
    parser.add_argument("--token", help="auth token for --url (default: $ENVCACHE_TOKEN)")
    parser.set_defaults(handler=_gc)


def _register_fsck(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "fsck", parents=[common],
        help="verify every blob file and repair the index from the files",
        description="Re-hash every blob, quarantine corrupt files (to <data>/quarantine/), and compare the "
                    "SQLite index with the files. Without --repair only reports.",
        epilog=exit_status(s0="nothing wrong, or everything found was repaired", s1="problems remain",
                           s2="bad arguments", s3="not an envcache data directory"),
    )
    parser.add_argument("--repair", action="store_true", help="fix the index (needs the daemon stopped)")
    _data_args(parser)
    parser.set_defaults(handler=_fsck)


def _data_args(parser: argparse.ArgumentParser) -> None:
    """``--config``/``--data``: which data directory a maintenance verb works on (see :func:`_data_dir`)."""
    parser.add_argument("--config", type=Path, help="TOML config file (for server.data_dir)")
    parser.add_argument("--data", type=Path, help="data directory (overrides server.data_dir)")


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _data_dir(args: argparse.Namespace) -> Path:
    from envcache.errors import NotFound
    from envcache.service.config import load_config

    data = args.data if args.data is not None else load_config(args.config).server.data_dir
    if not (Path(data) / "envcache.db").is_file():
        raise NotFound(f"no envcache data directory at {data} (no envcache.db there); pass --data DIR")
    return Path(data)


async def _open_owned(args: argparse.Namespace, verb: str) -> Store:
    """The store, opened only when no daemon holds the data directory's lock."""
    from envcache.store import open_store
    from envcache.store.gc import GcAborted

    data = _data_dir(args)
    store = await open_store(data)
    if not store.owner:
        await store.close()
        via = (f"run it through the daemon instead: `envcache gc --url {_daemon_url(data)}` "
               "(POST /api/v1/gc), or stop the daemon first" if verb == "gc" else "stop the daemon first")
        raise GcAborted(f"{data} is in use by a running envcache daemon (it holds {data / '.lock'}); "
                        f"refusing to {verb} it from outside: {via}")
    return store


def _gc(args: argparse.Namespace) -> int:
    from envcache.store.gc import GcReport, run_gc

    if args.url is not None:
        return _gc_remote(args)

    async def run() -> GcReport:
        store = await _open_owned(args, "gc")
        try:
            return await run_gc(store, dry_run=args.dry_run, keep_days=args.keep_days, grace=args.grace,
                                phase=Progress().line)
        finally:
            await store.close()

    report = asyncio.run(run())
    emit(args, report.summary(), report.to_dict())
    return 0


def _gc_remote(args: argparse.Namespace) -> int:
    from envcache.client.sync import Client
    from envcache.store.gc import GcReport

    body = {"dry_run": args.dry_run, "keep_days": args.keep_days, "grace_seconds": args.grace}
    data = Client(args.url, args.token)._request("POST", "/api/v1/gc", body)
    fields = {k: v for k, v in data.items() if k in GcReport.__dataclass_fields__}
    emit(args, GcReport(**fields).summary(), data)
    return 0


def _fsck(args: argparse.Namespace) -> int:
    from envcache.store import open_store
    from envcache.store.fsck import FsckReport, run_fsck

    async def run() -> FsckReport:
        # Read-only is safe beside a running daemon (a write in flight may show up as a finding).
        store = await (_open_owned(args, "repair") if args.repair else open_store(_data_dir(args)))
        try:
            return await run_fsck(store, repair=args.repair)
        finally:
            await store.close()

    report = asyncio.run(run())
    emit(args, report.summary(), report.to_dict())
    return 1 if report.unrepaired else 0
