"""``POST /api/v1/gc``: mark and sweep the daemon's store (write scope).

Runs inside the daemon, which owns the data directory: upload sessions receiving bytes right
now are left alone, and the store's transaction keeps other writers out between mark and sweep.
"""

from __future__ import annotations

import logging

from aiohttp import web

from envcache.service import requests
from envcache.service.schemas import GcRequest
from envcache.service.views.common import Route, daemon, json_response
from envcache.store.gc import DEFAULT_GRACE, GcAborted, GcReport, run_gc

log = logging.getLogger(__name__)


async def gc_handler(request: web.Request) -> web.Response:
    """Body optional: ``{"dry_run", "keep_days", "grace_seconds"}`` → the GcReport."""
    parts = daemon(request)
    body, _ = await requests.read(request, GcRequest)
    store = parts.store
    if not store.owner:
        raise GcAborted(f"this daemon does not own {store.data_dir} (another process holds its lock); "
                        "run gc where the lock is held")
    await parts.ensurer.flush_last_used()  # --keep-days decides on last_used: count recent hits
    report = await run_gc(store, dry_run=body.dry_run, keep_days=body.keep_days,
                          grace=DEFAULT_GRACE if body.grace_seconds is None else body.grace_seconds,
                          upload_ttl=float(parts.config.registry.upload_session_ttl), upload_busy=parts.uploads.busy,
                          phase=log.info)  # the daemon's log says where a long gc is (with this request's id)
    if not body.dry_run:
        await parts.uploads.forget_ended(store)
    return json_response(report.to_dict())


ROUTES = [Route("POST", "/api/v1/gc", gc_handler,
                "Mark and sweep the store: untagged manifests, unreferenced blobs, idle uploads (write scope)",
                body=GcRequest, responses={"200": GcReport, "409": "the store is not this daemon's to collect"})]
