"""CLI verbs of the daemon: ``serve`` (and, as the service grows, the client-side verbs)."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the daemon's sub-commands to the ``envcache`` parser."""
    _register_serve(sub, common)
    # Client-side verbs (resolve, ensure, warm, env, images, gc, status) are registered below
    # by the service helper, one _register_<verb>(sub, common) each.


# -- serve -------------------------------------------------------------------------------------
def _register_serve(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "serve", parents=[common],
        help="run the daemon (OCI registry under /v2/, JSON API under /api/v1/)",
        description="Run the envcache daemon. Listens on 127.0.0.1:5050 unless configured otherwise; "
                    "a non-loopback address needs auth tokens in the config file.",
    )
    parser.add_argument("--config", type=Path, help="TOML config file (see config/envcache.toml)")
    parser.add_argument("--data", type=Path, help="data directory (overrides server.data_dir)")
    parser.add_argument("--host", help="address to listen on (overrides server.host)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides server.port; 0 picks a free one)")
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
    check_bind(config)
    asyncio.run(_run(config))
    return 0


async def _run(config: Any) -> None:
    """Serve until SIGTERM/SIGINT, then shut down cleanly (store closed, sessions kept on disk)."""
    from aiohttp import web

    from envcache.service.app import create_app

    runner = web.AppRunner(create_app(config), access_log=None, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port)
    await site.start()
    port = runner.addresses[0][1]
    # One flushed line on stdout, so scripts and tests can wait for it and learn the port.
    print(f"envcache serving on http://{config.server.host}:{port} (data: {config.server.data_dir})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
