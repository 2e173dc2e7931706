"""Registry authentication: HTTP basic and the distribution bearer-token flow.

Registries answer an unauthenticated request with ``401`` and a ``WWW-Authenticate`` challenge.
``Basic`` means "send the credentials"; ``Bearer realm=...,service=...,scope=...`` means "get a
token for this scope from the realm and retry". Tokens are cached per scope so a pull of forty
blobs asks the token server once, not forty times.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Challenge:
    scheme: str               # "basic" | "bearer" (lower-cased)
    params: dict[str, str]    # realm, service, scope, error ...


def parse_challenge(header: str) -> Challenge | None:
    """Parse one ``WWW-Authenticate`` value; ``None`` when it is not a scheme we speak."""
    header = header.strip()
    scheme, _, rest = header.partition(" ")
    scheme = scheme.lower()
    if scheme not in ("basic", "bearer"):
        return None
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace('\\"', '"')
              for m in _PARAM.finditer(rest)}
    return Challenge(scheme, params)


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass
class CachedToken:
    token: str
    expires: float            # monotonic deadline

    @property
    def fresh(self) -> bool:
        return time.monotonic() < self.expires


def token_from_response(data: object) -> CachedToken | None:
    """Read a token endpoint's JSON answer (``token`` or OAuth2 ``access_token``)."""
    if not isinstance(data, dict):
        return None
    token = data.get("token") or data.get("access_token")
    if not isinstance(token, str) or not token:
        return None
    expires_in = data.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, (int, float)) and expires_in > 0 else 60.0
    # Renew a little early so a token never expires between the check and the request.
    return CachedToken(token, time.monotonic() + max(lifetime - 10.0, lifetime / 2))
