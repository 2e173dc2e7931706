"""OCI distribution-spec error responses.

Every failure under /v2/ answers with the spec's body, ``{"errors": [{"code", "message",
"detail"}]}``, and one of the spec's codes, so clients (docker, skopeo, oras) show the user
the real reason instead of a generic failure.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


class RegistryError(Exception):
    """Raised by handlers; turned into the spec's error response by the dispatcher."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def response(self, *, head: bool = False) -> web.Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        body = json.dumps({"errors": [error]}).encode()
        headers = {**API_VERSION_HEADER, **self.headers}
        if head:  # HEAD answers carry no body, only the status (and the headers)
            return web.Response(status=self.status, headers=headers)
        return web.Response(status=self.status, body=body, content_type="application/json", headers=headers)


def blob_unknown(digest: str) -> RegistryError:
    return RegistryError(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})


def upload_unknown(session_id: str) -> RegistryError:
    return RegistryError(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", {"uuid": session_id})


def manifest_unknown(reference: str) -> RegistryError:
    return RegistryError(404, "MANIFEST_UNKNOWN", "manifest unknown", {"reference": reference})


def digest_invalid(message: str) -> RegistryError:
    return RegistryError(400, "DIGEST_INVALID", message)


def name_invalid(message: str) -> RegistryError:
    return RegistryError(400, "NAME_INVALID", message)


def name_unknown(name: str) -> RegistryError:
    return RegistryError(404, "NAME_UNKNOWN", "repository name not known to registry", {"name": name})
