"""A registry login: who pulls from one registry host.

A definition's ``docker.base_image_registry`` carries a username and password for the registry
its base image comes from. They decide who may pull, not what is pulled, so they never reach a
hash, a log or the store; this value carries them from the request to the few places that talk
to that registry (base-digest resolution, the pull-through copy, the engine's own pull), and
only for requests to its own host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envcache.oci.reference import registry_host


@dataclass(frozen=True)
class RegistryLogin:
    """Credentials for one registry host; the password never shows in ``repr``."""

    host: str
    username: str
    password: str = field(repr=False)

    def for_host(self, host: str) -> RegistryLogin | None:
        """This login when ``host`` is its registry, else None: credentials go to one host only."""
        return self if registry_host(host) == registry_host(self.host) else None
