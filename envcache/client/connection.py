"""What the facade's ``workspace`` arguments accept: where an envcache daemon answers.

Azure's calls take a ``Workspace``; all envcache needs of one is the daemon's address (and a
token when the daemon has auth on). So ``workspace`` may be a :class:`~envcache.Client`, a URL
string, ``None`` (``$ENVCACHE_URL``, else the default address), or any object with a ``url``
attribute and optionally a ``token`` one — :class:`~envcache.client.workspace.Workspace` is such
an object. Kept apart from ``workspace`` so the facade can use it while ``Workspace.environments``
uses the facade (one direction, no cycle).
"""

from __future__ import annotations

from typing import Any

from envcache.client.sync import Client
from envcache.errors import InvalidInput


def connect(workspace: Any) -> Client:
    """The client for a ``workspace`` argument (see the module docstring for what it may be)."""
    if isinstance(workspace, Client):
        return workspace
    if workspace is None or isinstance(workspace, str):
        return Client(workspace)
    url = getattr(workspace, "url", None)
    if isinstance(url, str):
        return Client(url, getattr(workspace, "token", None))
    raise InvalidInput(f"workspace: expected an envcache Workspace or Client, a daemon URL, or an object with a "
                       f"'url' attribute (the daemon's address); got {type(workspace).__name__}")
