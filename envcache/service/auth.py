"""Tokens with read/write scopes, for the JSON API and the /v2 registry alike.

Loopback needs no auth (only local users can connect, as with the Docker socket). Any other
address serves images to the network, so the daemon refuses to start there without tokens.

Clients speak what they already speak: ``Authorization: Bearer <token>`` (the client
library, curl), HTTP Basic with the token as password (skopeo ``--creds``, oras), and the
Docker token flow — the registry answers 401 with ``WWW-Authenticate: Bearer realm=…/auth/token``,
``docker login`` fetches a token there with Basic credentials and uses it as Bearer — which is
what makes ``docker login`` + ``docker pull`` work unchanged.

Browsers get the dashboard (``/ui/``) by signing in once: its login form checks the token and
sets it as an HttpOnly, SameSite=Strict cookie. The cookie is honoured for reads only (GET and
HEAD), so no cross-site form can make it write anything, and a dashboard request without a
valid token is sent to the login form instead of a JSON 401.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from envcache.errors import InvalidInput
from envcache.service.config import Config, check_bind, check_token
from envcache.service.logs import set_token_name

READ, WRITE = "read", "write"
#: The dashboard's login form.
LOGIN = "/ui/login"
# Endpoints anyone may call: liveness probes, the API description, the way in and out of the
# dashboard (and its redirect from ``/``) carry no data.
_PUBLIC = {"/api/v1/health", "/api/v1/openapi.json", "/auth/token", "/", LOGIN, "/ui/logout"}
# The dashboard's stylesheet, script and chart library carry no data either.
_PUBLIC_PREFIX = "/ui/static/"
#: The cookie the dashboard's login form sets (the token itself; HttpOnly, SameSite=Strict).
COOKIE = "envcache_token"
# JSON API calls that only read, although they are POSTs (a lookup carries a body).
_READ_POSTS = {"/api/v1/resolve"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _tokens(config: Config) -> dict[str, tuple[str, set[str]]]:
    """token → (name, scopes), from ``config.auth.tokens``; an unnamed token is ``token-<n>``
    (its place in the list, from 1), the name the access log shows instead of the token.

    Checked again here because a Config can be built in code (embedders, tests), not only
    through ``config_from_dict``, and a bad token must stop the daemon, not weaken it.
    """
    result: dict[str, tuple[str, set[str]]] = {}
    for number, item in enumerate(config.auth.tokens, start=1):
        check_token(item.token, f"auth.tokens[{number - 1}]")
        bad = set(item.scopes) - {READ, WRITE}
        if bad:
            raise InvalidInput(f"auth.tokens: unknown scope(s) {sorted(bad)}; valid scopes are 'read' and 'write'")
        result[item.token] = (item.name or f"token-{number}", set(item.scopes))
    return result


def required_scope(request: web.Request) -> str | None:
    """The scope a request needs, or None for public endpoints."""
    path = request.path
    if path in _PUBLIC or path.startswith(_PUBLIC_PREFIX):
        return None
    if request.method in ("GET", "HEAD", "OPTIONS") or path in _READ_POSTS:
        return READ
    return WRITE


def presented_token(request: web.Request) -> str | None:
    """The token from a Bearer header, or the password of Basic credentials, or — for a read
    only — the dashboard's cookie."""
    header = request.headers.get("Authorization", "")
    if not header and request.method in ("GET", "HEAD"):
        return request.cookies.get(COOKIE) or None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


class TokenAuth:
    """The token check shared by the JSON API and /v2, and the Docker token-flow endpoint."""

    def __init__(self, tokens: dict[str, tuple[str, set[str]]]) -> None:
        self._tokens = tokens

    def lookup(self, token: str | None) -> tuple[str, set[str]] | None:
        """(name, scopes) of a valid token (compared in constant time), None for an invalid one."""
        if not token:
            return None
        found: tuple[str, set[str]] | None = None
        for known, entry in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = entry
        return found

    def _deny(self, request: web.Request, status: int, message: str) -> web.Response:
        if request.path.startswith("/ui/"):  # a browser: to the login form, and back here after it
            denied = "&denied=1" if status == 403 else ""
            raise web.HTTPSeeOther(f"{LOGIN}?next={quote(request.path_qs, safe='')}{denied}")
        headers = {}
        if status == 401:
            if request.path.startswith("/v2"):
                realm = f"{request.scheme}://{request.host}/auth/token"
                headers["WWW-Authenticate"] = f'Bearer realm="{realm}",service="envcache"'
            else:
                headers["WWW-Authenticate"] = 'Bearer realm="envcache"'
        if request.path.startswith("/v2"):
            code = "UNAUTHORIZED" if status == 401 else "DENIED"
            body = {"errors": [{"code": code, "message": message, "detail": None}]}
        else:
            body = {"error": {"status": status, "message": message}}
        return web.json_response(body, status=status, headers=headers)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        scope = required_scope(request)
        if scope is None:
            return await handler(request)
        found = self.lookup(presented_token(request))
        if found is None:
            return self._deny(request, 401, "authentication required: present a valid token")
        name, scopes = found
        set_token_name(request, name)
        if scope not in scopes:
            return self._deny(request, 403, f"this token lacks the {scope!r} scope")
        return await handler(request)

    async def token_endpoint(self, request: web.Request) -> web.Response:
        """The Docker token flow's realm: Basic credentials in, a Bearer token out."""
        token = presented_token(request)
        if self.lookup(token) is None:
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "invalid credentials: use the token as password"}]},
                status=401, headers={"WWW-Authenticate": 'Basic realm="envcache"'},
            )
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {"token": token, "access_token": token, "expires_in": 3600, "issued_at": issued}
        return web.Response(text=json.dumps(body), content_type="application/json")


AUTH = web.AppKey("envcache_auth", TokenAuth)


def setup(app: web.Application, config: Config) -> None:
    """Refuse an unsafe bind, then (only when tokens are configured) guard every request."""
    check_bind(config)
    tokens = _tokens(config)
    if not tokens:
        return
    guard = TokenAuth(tokens)
    app[AUTH] = guard
    app.middlewares.append(guard.middleware)
    app.router.add_get("/auth/token", guard.token_endpoint)
