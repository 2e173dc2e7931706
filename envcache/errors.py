"""Errors a user can cause, and how they are reported.

Every error that reaches the CLI or the HTTP API is an :class:`EnvcacheError`: it carries a
message written for the user, never a traceback. The CLI maps it to an exit status (2 for bad
input), the API to an HTTP status with a JSON body.
"""

from __future__ import annotations


class EnvcacheError(Exception):
    """Base of every error envcache reports to a user."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(EnvcacheError):
    """The user gave us something we cannot accept (a definition, an argument, a body)."""

    exit_code = 2
    http_status = 400


class DefinitionError(InvalidInput):
    """An environment definition is malformed or invalid.

    ``source`` is the file (or ``<api>``), ``location`` the line (``line 12``) or field path
    (``python.conda_dependencies.pip[3]``) so the user can find the mistake without guessing.
    """

    def __init__(self, message: str, *, source: str | None = None, location: str | None = None) -> None:
        self.source = source
        self.location = location
        where = ": ".join(part for part in (source, location) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.detail = message


class NotFound(EnvcacheError):
    """Something the user named does not exist (an image, a build, an environment version)."""

    exit_code = 3
    http_status = 404


class Conflict(EnvcacheError):
    """The request is sound but the daemon's state refuses it: a wheel file name already taken by
    other bytes, a wheel a registered environment still pins."""

    http_status = 409


class UnsupportedFeature(InvalidInput):
    """An Azure ML feature the Azure-style client facade does not provide (compute clusters,
    labels, R sections, …): the message names the feature and, where there is one, what to do
    instead — so ported code stops at a clear sentence, not at a TypeError or AttributeError."""
