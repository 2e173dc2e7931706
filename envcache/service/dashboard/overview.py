"""``/ui/``: the daemon at a glance — counts, activity over time, where the storage goes, the
slowest and the latest builds."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from envcache.errors import InvalidInput
from envcache.service.activity import HOUR, LABELS, NAMES, WINDOWS
from envcache.service.dashboard.render import Route, page, pages
from envcache.service.views.common import daemon
from envcache.store.usage import StorageUsage

SLOWEST_DAYS = 30


def _storage_parts(usage: StorageUsage) -> list[dict[str, Any]]:
    """The stacked bar's segments, largest kinds first as the legend reads."""
    parts = [
        ("images", "Images", "cached environment images (and what they share)", usage.images),
        ("stages", "Stages", "build stages kept for reuse, not part of an image", usage.stages),
        ("other", "Other", "content pushed through /v2/ by other clients", usage.other),
        ("young", "Recent", "unreferenced, inside gc's grace period", usage.young),
        ("reclaimable", "Reclaimable", "unreferenced: the next gc frees it", usage.reclaimable),
    ]
    total = usage.total or 1
    return [{"kind": kind, "label": label, "help": help_, "bytes": size, "blobs": usage.blobs[kind],
             "percent": 100.0 * size / total} for kind, label, help_, size in parts]


async def overview(request: web.Request) -> web.Response:
    parts = daemon(request)
    store = parts.store
    label = request.query.get("window")
    window = WINDOWS.get(label or "24h")
    if window is None:
        raise InvalidInput(f"window must be one of {', '.join(WINDOWS)}, not {label[:40]!r}")
    series = await parts.metrics.activity.series(window)
    if label is None and series.active_since() >= series.times[-1] - HOUR:
        # Everything happened within the hour: a day-wide chart would squeeze it into one bucket.
        window = WINDOWS["1h"]
        series = await parts.metrics.activity.series(window)
    hits, misses = series.total("hit"), series.total("miss")
    image_count, image_bytes = await store.images.totals()
    usage = await pages(request).storage.usage(store)
    slowest = await store.builds.slowest(8, time.time() - SLOWEST_DAYS * 86400)
    longest = max((b.finished - b.started for b in slowest if b.finished and b.started), default=0.0)
    chart = {"times": series.times, "step": window.step,
             "series": [{"name": name, "label": LABELS[name], "values": series.values[name]} for name in NAMES]}
    return page(
        request, "overview.html", section="overview",
        environments=await store.environments.count() + len(parts.environments.curated()),
        images=image_count, image_bytes=image_bytes,
        hits=hits, misses=misses, hit_rate=(100.0 * hits / (hits + misses)) if hits + misses else None,
        pulls=series.total("pull"), built=series.total("built"), failed=series.total("failed"),
        running=parts.ensurer.running(), queued=parts.ensurer.queue_depth(),
        window=window, windows=list(WINDOWS), chart=chart,
        usage=usage, storage=_storage_parts(usage),
        slowest=slowest, longest=longest or 1.0, slowest_days=SLOWEST_DAYS,
        recent=await store.builds.page(8),
    )


ROUTES: list[Route] = [("GET", "/ui/", overview)]
