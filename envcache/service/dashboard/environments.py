"""``/ui/environments``: registered environments (paged by name), one environment's versions
with their images per variant, and the diff between two versions."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiohttp import web

from envcache.definition import VARIANTS, canonical_form, definition_from_dict, for_variant, spec_hash
from envcache.definition.diff import explain
from envcache.errors import InvalidInput
from envcache.service import requests
from envcache.service.dashboard.render import PAGE_SIZE, Route, page, pages
from envcache.service.environments import EnvironmentRecord
from envcache.service.views.common import daemon
from envcache.store import StoredImage


#: Environment versions whose variant hashes are kept (about 200 bytes each).
MEMO_LIMIT = 100_000


@dataclass
class Row:
    """One environment version as a table row: its newest image per variant, and when any of
    them was last used."""

    record: EnvironmentRecord
    images: dict[str, StoredImage] = field(default_factory=dict)

    @property
    def last_used(self) -> float | None:
        return max((image.last_used for image in self.images.values()), default=None)


def variant_hashes(request: web.Request, record: EnvironmentRecord) -> dict[str, str]:
    """variant → the spec hash of the version as built for it (what images are filed under)."""
    memo = pages(request).variant_hashes
    found = memo.get(record.spec_hash)
    if found is None:
        if len(memo) >= MEMO_LIMIT:
            memo.clear()   # bounded: recomputing costs a canonicalisation per row, nothing more
        definition = record.as_definition()
        found = memo[record.spec_hash] = {v: spec_hash(for_variant(definition, v)) for v in VARIANTS}
    return found


async def rows(request: web.Request, records: list[EnvironmentRecord]) -> list[Row]:
    """``records`` with their images, in one store query."""
    hashes = {record.spec_hash: variant_hashes(request, record) for record in records}
    wanted = {h for per_variant in hashes.values() for h in per_variant.values()}
    newest: dict[tuple[str, str], StoredImage] = {}
    for image in await daemon(request).store.images.by_spec_hashes(sorted(wanted)):  # most recently used first
        newest.setdefault((image.spec_hash, image.variant), image)
    out = []
    for record in records:
        row = Row(record)
        for variant, digest in hashes[record.spec_hash].items():
            if (digest, variant) in newest:
                row.images[variant] = newest[(digest, variant)]
        out.append(row)
    return out


async def listing(request: web.Request) -> web.Response:
    parts = daemon(request)
    query = request.query.get("q", "").strip()[:200]
    after, before = request.query.get("after") or None, request.query.get("before") or None
    found = await parts.store.environments.page(PAGE_SIZE + 1, after=after, before=before, contains=query)
    if before is not None and after is None:
        has_prev, has_next = len(found) > PAGE_SIZE, True
        found = found[-PAGE_SIZE:]
    else:
        has_prev, has_next = after is not None, len(found) > PAGE_SIZE
        found = found[:PAGE_SIZE]
    first_page = after is None and before is None
    curated = [r for r in parts.environments.curated() if query.lower() in r.name.lower()] if first_page else []
    return page(
        request, "environments.html", section="environments", query=query,
        curated=await rows(request, curated),
        rows=await rows(request, [EnvironmentRecord.of(v) for v in found]),
        total=await parts.store.environments.count(query),
        prev_cursor=found[0].name if has_prev and found else None,
        next_cursor=found[-1].name if has_next and found else None,
    )


async def detail(request: web.Request) -> web.Response:
    parts = daemon(request)
    name = request.match_info["name"]
    versions = await parts.environments.versions(name)
    wanted = requests.positive_int(request.query.get("version"), "version")
    shown = next((v for v in versions if v.version == wanted), None) if wanted else versions[-1]
    if shown is None:
        raise InvalidInput(f"environment {name!r} has no version {wanted}")
    newest_first = list(reversed(versions))
    return page(
        request, "environment.html", section="environments", name=name, shown=shown,
        rows=await rows(request, newest_first), latest=versions[-1],
        definition=as_yaml(shown.definition),
    )


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (Dockerfiles) as ``|`` blocks, the way people write them."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def _pruned(value: Any) -> Any:
    """Without the fields left at nothing (None, empty lists and tables): what was written."""
    if isinstance(value, dict):
        kept = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def as_yaml(definition: dict[str, Any]) -> str:
    """A stored definition as envcache YAML, empty fields left out."""
    return yaml.dump(_pruned(definition), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


_VERB = re.compile(r"^(?:variant \w+: )?[^:]* (added|removed)(?::|$)")


def _kind(line: str) -> str:
    """How a line of ``explain`` reads (``[variant gpu: ]pip package added: …``): something
    added, removed, or changed."""
    found = _VERB.match(line)
    return found.group(1) if found else "changed"


async def diff(request: web.Request) -> web.Response:
    parts = daemon(request)
    name = request.match_info["name"]
    versions = {v.version: v for v in await parts.environments.versions(name)}
    numbers = sorted(versions)
    old = requests.positive_int(request.query.get("from"), "from") or (numbers[-2] if len(numbers) > 1 else numbers[0])
    new = requests.positive_int(request.query.get("to"), "to") or numbers[-1]
    for number, label in ((old, "from"), (new, "to")):
        if number not in versions:
            raise InvalidInput(f"{label}: environment {name!r} has no version {number}")
    a, b = (canonical_form(definition_from_dict(versions[n].definition)) for n in (old, new))
    text_a, text_b = (json.dumps(form, indent=2, sort_keys=True).splitlines() for form in (a, b))
    unified = list(difflib.unified_diff(text_a, text_b, f"version {old}", f"version {new}", lineterm="", n=3))
    return page(
        request, "diff.html", section="environments", name=name, numbers=numbers,
        old=versions[old], new=versions[new],
        changes=[{"kind": _kind(line), "text": line} for line in explain(a, b)],
        unified=[_unified_line(line) for line in unified[2:]],
    )


def _unified_line(line: str) -> dict[str, Any]:
    kind = {"+": "added", "-": "removed", "@": "hunk"}.get(line[:1], "same")
    return {"kind": kind, "text": line}


ROUTES: list[Route] = [
    ("GET", "/ui/environments", listing),
    ("GET", "/ui/environments/{name}", detail),
    ("GET", "/ui/environments/{name}/diff", diff),
]
