"""``envcache upstream list|check``, ``envcache push KEY`` and ``envcache pull KEY``.

These work on the daemon's data directory directly (SQLite in WAL mode tolerates a running
daemon beside them), so a CI job can warm or publish without going through the HTTP API.
Heavy imports stay inside the handlers so ``envcache --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from envcache.cli.output import Progress, emit, exit_status
from envcache.definition.model import VARIANTS, Variant
from envcache.errors import InvalidInput, NotFound
from envcache.oci import image_tag, parse_image_tag

if TYPE_CHECKING:
    from envcache.store import Store
    from envcache.upstream.config import Upstream

T = TypeVar("T")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    def config_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", type=Path, help="daemon TOML config with [[upstreams]] tables")
        parser.add_argument("--data", type=Path, help="data directory (overrides server.data_dir)")

    up = sub.add_parser("upstream", parents=[common], help="shared upstream registries",
                        description="The shared registries this daemon pulls from and pushes to ([[upstreams]] "
                                    "in the daemon config).",
                        epilog=exit_status(s0="success", s1="an upstream failed", s2="bad input"))
    up_sub = up.add_subparsers(dest="upstream_command", metavar="ACTION")
    up_sub.required = True
    p = up_sub.add_parser("list", parents=[common], help="configured upstreams and recent pushes",
                          description="List the configured upstreams and the state of recent pushes.",
                          epilog=exit_status(s0="listed", s2="bad config"))
    config_args(p)
    p.set_defaults(handler=_list)
    p = up_sub.add_parser("check", parents=[common],
                          help="reachability, auth and what is cached on each upstream",
                          description="Check each upstream: does it answer, do the credentials work for its "
                                      "repositories, and how many images and stages it holds.",
                          epilog=exit_status(s0="every upstream ok", s1="an upstream failed", s2="bad config"))
    config_args(p)
    p.set_defaults(handler=_check)

    for verb, helptext, statuses in (
            ("push", "push a cached image (and its stages) to the push upstreams",
             exit_status(s0="pushed", s1="a push failed", s2="bad input", s3="not in the local store")),
            ("pull", "pull an image from the pull upstreams into the local store",
             exit_status(s0="pulled", s2="bad input", s3="not found on any upstream"))):
        p = sub.add_parser(verb, parents=[common], help=helptext, epilog=statuses,
                           description=f"{helptext[0].upper()}{helptext[1:]}, on the data directory "
                                       "directly; bytes moved are reported on stderr as they go.")
        p.add_argument("key", metavar="KEY", help="image key, or the full tag KEY-VARIANT")
        p.add_argument("--variant", choices=VARIANTS, default=None,
                       help="variant (default: the only one cached for KEY, else cpu)")
        p.add_argument("--upstream", metavar="URL", help="only this upstream (its url as configured)")
        config_args(p)
        p.set_defaults(handler=_push if verb == "push" else _pull)


def load_settings(config_path: Path | None, data: Path | None) -> tuple[Path, list[Upstream]]:
    """(data dir, upstreams) from the daemon config, read exactly as ``envcache serve`` reads it."""
    from envcache.service.config import load_config

    config = load_config(config_path)
    return Path(data or config.server.data_dir), list(config.upstreams)


async def _with_store(data_dir: Path, work: Callable[[Store], Awaitable[T]]) -> T:
    from envcache.store import open_store

    store = await open_store(data_dir)
    try:
        return await work(store)
    finally:
        await store.close()


def _list(args: argparse.Namespace) -> int:
    import asyncio

    from envcache.upstream.push import push_status

    data_dir, upstreams = load_settings(args.config, args.data)
    pushes = asyncio.run(_with_store(data_dir, lambda store: push_status(store.pushes, limit=20)))
    lines = [f"{u.url}  prefix={u.prefix}  mode={u.mode}  auth={u.describe()['auth']}" for u in upstreams] \
        or ["no upstreams configured (add [[upstreams]] tables to the daemon config)"]
    counts = pushes["counts"]
    lines.append("pushes: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    for row in pushes["recent"]:
        if row["state"] != "done":
            lines.append(f"  {row['state']}: {row['repository']}:{row['tag']} -> {row['upstream']} "
                         f"(attempts {row['attempts']}){': ' + row['error'] if row['error'] else ''}")
    emit(args, "\n".join(lines), {"upstreams": [u.describe() for u in upstreams], "pushes": pushes})
    return 0


def _check(args: argparse.Namespace) -> int:
    import asyncio

    _, upstreams = load_settings(args.config, args.data)
    results = asyncio.run(_check_all(upstreams))
    lines = []
    for r in results:
        state = "ok" if r["ok"] else "FAILED"
        detail = r.get("error") or f"{r['env_tags']} images, {r['stage_tags']} stages under {r['prefix']}/"
        lines.append(f"{r['url']}: {state} ({detail})")
    emit(args, "\n".join(lines) or "no upstreams configured", {"upstreams": results})
    return 0 if all(r["ok"] for r in results) else 1


async def _check_all(upstreams: list[Any]) -> list[dict[str, Any]]:
    from envcache.errors import EnvcacheError
    from envcache.upstream.client import RegistryClient

    results = []
    for upstream in upstreams:
        result: dict[str, Any] = {"url": upstream.url, "prefix": upstream.prefix, "mode": upstream.mode}
        async with RegistryClient(upstream) as client:
            try:
                # Listing a real repository exercises the whole auth flow (token scopes included).
                result["env_tags"] = len(await client.list_tags(upstream.repo("env")))
                result["stage_tags"] = len(await client.list_tags(upstream.repo("stage")))
                result["ok"] = True
            except EnvcacheError as exc:
                result.update(ok=False, error=str(exc))
        results.append(result)
    return results


def _select(upstreams: list[Upstream], url: str | None, push: bool) -> list[Upstream]:
    chosen = [u for u in upstreams if (u.can_push if push else u.can_pull) and (url is None or u.url == url.rstrip("/"))]
    if not chosen:
        raise InvalidInput(f"no {'push' if push else 'pull'} upstream configured"
                           + (f" with url {url}" if url else "") + " (see [[upstreams]] in the config)")
    return chosen


async def _tag_for(store: Store, key: str, variant: str | None) -> str:
    """Resolve KEY (+variant) to the local tag, consulting the image index when it can."""
    if variant:
        return image_tag(key, variant)
    if parse_image_tag(key)[1] in VARIANTS:
        return key
    return await store.images.tag_of(key) or image_tag(key, Variant.CPU)


def _push(args: argparse.Namespace) -> int:
    import asyncio

    from envcache.progress import Ticker, size
    from envcache.upstream.source import ENV_REPO, UpstreamSource

    data_dir, upstreams = load_settings(args.config, args.data)
    chosen = _select(upstreams, args.upstream, push=True)

    progress = Progress()

    async def run(store: Store) -> list[dict[str, Any]]:
        source = UpstreamSource(store, chosen, push_attempts=3, push_backoff=0.5)
        try:
            tag = await _tag_for(store, args.key, args.variant)
            if await store.get_manifest(ENV_REPO, tag, with_body=False) is None:
                raise NotFound(f"image {ENV_REPO}:{tag} is not in the local store")
            ids = await source.push_after_build(ENV_REPO, tag)
            async with Ticker(progress.status, lambda ticker: f"push: {ENV_REPO}:{tag}: {size(source.bytes_sent())} "
                                                              f"sent ({ticker.elapsed:.0f}s)"):
                await source.pushes.drain()
            progress.done()
            fields = ("upstream", "repository", "tag", "remote_repository", "state", "attempts", "error", "bytes",
                      "mounted")
            return [{k: row[k] for k in fields} for row in await store.pushes.by_ids(ids)]
        finally:
            await source.aclose()

    rows = asyncio.run(_with_store(data_dir, run))
    lines = [f"{r['state']}: {r['repository']}:{r['tag']} -> {r['upstream']}/{r['remote_repository']} "
             f"({r['bytes']} bytes sent, {r['mounted']} mounted)" + (f": {r['error']}" if r["error"] else "")
             for r in rows]
    emit(args, "\n".join(lines), {"pushes": rows})
    return 0 if all(r["state"] == "done" for r in rows) else 1


def _pull(args: argparse.Namespace) -> int:
    import asyncio

    from envcache.upstream.source import UpstreamSource

    data_dir, upstreams = load_settings(args.config, args.data)
    chosen = _select(upstreams, args.upstream, push=False)

    async def run(store: Store) -> tuple[Any, list[str]]:
        source = UpstreamSource(store, chosen)
        try:
            key, variant = parse_image_tag(await _tag_for(store, args.key, args.variant))
            # Bytes received so far, every few seconds, on stderr.
            return await source.try_pull(key, variant or Variant.CPU, log_fn=Progress().line), source.last_errors
        finally:
            await source.aclose()

    hit, errors = asyncio.run(_with_store(data_dir, run))
    if hit is None:
        detail = f" (upstream errors: {'; '.join(errors)})" if errors else ""
        raise NotFound(f"image {args.key}: not found on any pull upstream{detail}")
    emit(args, f"pulled {hit.repository}:{hit.tag} {hit.manifest_digest} from {hit.upstream} "
               f"({hit.stats.get('bytes_copied', 0)} bytes copied)",
         {"repository": hit.repository, "tag": hit.tag, "digest": hit.manifest_digest,
          "upstream": hit.upstream, "stats": hit.stats})
    return 0
