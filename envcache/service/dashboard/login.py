"""``/ui/login`` and ``/ui/logout``: how a browser gets past the tokens.

A browser cannot send a Bearer header, and HTTP Basic's prompt can neither say what to type nor
sign out. So the dashboard asks for the token once, checks it (it needs the read scope), and
keeps it in an HttpOnly, SameSite=Strict cookie for the browser session; the auth middleware
honours that cookie for reads only (:mod:`envcache.service.auth`). Curl and scripts still use
``Authorization`` on the same pages.
"""

from __future__ import annotations

from aiohttp import web

from envcache.service.auth import AUTH, COOKIE, LOGIN, READ
from envcache.service.dashboard.render import Route, page

HOME = "/ui/"


def _next(value: str | None) -> str:
    """Where to go after signing in: a dashboard page of this daemon, never another site."""
    return value if value and value.startswith(HOME) and "//" not in value and "\\" not in value else HOME


async def form(request: web.Request) -> web.StreamResponse:
    if request.app.get(AUTH) is None:
        raise web.HTTPSeeOther(HOME)  # no tokens configured: nothing to sign in to
    denied = request.query.get("denied") == "1"
    return page(request, "login.html", section="login", next=_next(request.query.get("next")),
                error="That token lacks the read scope the dashboard needs." if denied else None)


async def sign_in(request: web.Request) -> web.StreamResponse:
    guard = request.app.get(AUTH)
    if guard is None:
        raise web.HTTPSeeOther(HOME)
    data = await request.post()
    token = str(data.get("token", "")).strip()
    target = _next(str(data.get("next", "")))
    found = guard.lookup(token)
    if found is None or READ not in found[1]:
        message = "That token is not valid here." if found is None else "That token lacks the read scope."
        return page(request, "login.html", status=401, section="login", next=target, error=message)
    response = web.HTTPSeeOther(target)
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.secure, path="/")
    raise response


async def sign_out(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther(LOGIN)
    response.del_cookie(COOKIE, path="/")
    raise response


ROUTES: list[Route] = [
    ("GET", LOGIN, form),
    ("POST", LOGIN, sign_in),
    ("POST", "/ui/logout", sign_out),
]
