"""``/ui/builds``: builds by state, newest first, and one build with its log — followed live
while it runs (the page's script reads the JSON API's streamed log), with the failing line
marked once it has failed."""

from __future__ import annotations

import re

from aiohttp import web

from envcache.errors import InvalidInput
from envcache.service.dashboard.render import PAGE_SIZE, Route, cursor, page, parse_cursor
from envcache.service.views.common import daemon

STATES = ("queued", "running", "succeeded", "failed")
#: A page shows the end of a long log; the whole log is one link away.
MAX_LINES = 5000
#: Lines of tool output that say what went wrong: pip's, conda's, apt's, the shell's.
_CAUSE = re.compile(
    r"^\s*(?:ERROR|FATAL|E)\b[:\s]|\berror:|no matching distribution|could not find a version"
    r"|packages? ?not ?found|traceback \(most recent call last\)|command not found|: not found$|permission denied",
    re.IGNORECASE)
#: The engine's own report that a step failed (it quotes the command, so it is second best).
_STEP_FAILED = re.compile(r"returned a non-zero code|exit code: [1-9]|did not complete successfully", re.IGNORECASE)
#: Lines that echo a Dockerfile instruction: a command as written, never its outcome.
_INSTRUCTION = re.compile(r"^(?:Step \d+/\d+ : |STEP \d+/\d+: |#\d+ \[)")
_SUMMARY = "envcache: build failed:"


def is_error(line: str) -> bool:
    return not _INSTRUCTION.match(line) and bool(_CAUSE.search(line) or _STEP_FAILED.search(line))


def failing_line(lines: list[str]) -> int | None:
    """Index of the line that says why a build failed: the first line of tool output that
    reports an error, else the engine's "step failed" line, else envcache's own summary; only
    lines before that summary count (it repeats the log's tail)."""
    end = next((i for i, line in enumerate(lines) if line.startswith(_SUMMARY)), len(lines))
    for pattern in (_CAUSE, _STEP_FAILED):
        found = next((i for i in range(end) if not _INSTRUCTION.match(lines[i]) and pattern.search(lines[i])), None)
        if found is not None:
            return found
    return end if end < len(lines) else None


async def listing(request: web.Request) -> web.Response:
    store = daemon(request).store
    state = request.query.get("state") or None
    if state is not None and state not in STATES:
        raise InvalidInput(f"state must be one of {', '.join(STATES)}, not {state[:40]!r}")
    before = parse_cursor(request.query.get("before"), "before")
    found = await store.builds.page(PAGE_SIZE + 1, state=state, before=before)
    more = len(found) > PAGE_SIZE
    found = found[:PAGE_SIZE]
    return page(request, "builds.html", section="builds", builds=found, state=state, states=STATES,
                counts=await store.builds.counts(), first_page=before is None,
                next_cursor=cursor(found[-1].created, found[-1].id) if more else None)


async def detail(request: web.Request) -> web.Response:
    build = await daemon(request).ensurer.get_build(request.match_info["id"])
    lines = build.lines
    hidden = max(0, len(lines) - MAX_LINES)
    failing = failing_line(lines) if build.state == "failed" else None
    return page(
        request, "build.html", section="builds", build=build, lines=lines[hidden:], hidden=hidden,
        total_lines=len(lines), failing=None if failing is None or failing < hidden else failing - hidden,
        errors={i - hidden for i, line in enumerate(lines) if i >= hidden and is_error(line)}
        if build.state == "failed" else set(),
        live=not build.done,
    )


ROUTES: list[Route] = [
    ("GET", "/ui/builds", listing),
    ("GET", "/ui/builds/{id}", detail),
]
