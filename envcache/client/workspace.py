"""What the facade's ``workspace`` arguments accept: where an envcache daemon answers.

Azure's calls take a ``Workspace``; all envcache needs of one is the daemon's address (and a
token when the daemon has auth on). So ``workspace`` may be a :class:`~envcache.Client`, a URL
string, ``None`` (``$ENVCACHE_URL``, else the default address), or any object with a ``url``
attribute and optionally a ``token`` one (:func:`~envcache.client.connection.connect`). :class:`Workspace`
is such an object, with Azure's ``Workspace.from_config()``, so ``ws = Workspace.from_config()``
ports unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from envcache.client.connection import connect
from envcache.client.facade import Environment
from envcache.errors import InvalidInput, UnsupportedFeature
from envcache.wire import daemon_url

CONFIG_KEY = "envcache_url"
_CONFIG_NAMES = (Path(".azureml") / "config.json", Path("config.json"))


class Workspace:
    """Azure's ``Workspace``, reduced to what envcache has of one: a daemon's address.

    ``url`` defaults to ``$ENVCACHE_URL`` or http://127.0.0.1:5050, ``token`` to
    ``$ENVCACHE_TOKEN``.
    """

    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = daemon_url(url)
        self.token = token or os.environ.get("ENVCACHE_TOKEN")

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None, auth: Any = None) -> Workspace:
        """Azure's search for ``config.json``: ``path`` (a file, or a directory searched for
        ``.azureml/config.json`` then ``config.json``, and so its parents), default the current
        directory. The daemon's address is its ``"envcache_url"`` key; Azure's keys are ignored, so
        one file can serve both. Without a file, or without the key, ``$ENVCACHE_URL`` or the
        default address is used. Tokens stay out of the file: set ``$ENVCACHE_TOKEN``.
        """
        if auth is not None:
            raise UnsupportedFeature("Workspace.from_config(auth=…): Azure authentication objects are not used by "
                                     "envcache; a daemon with auth on takes a token from $ENVCACHE_TOKEN")
        found = _find_config(Path(path) if path is not None else None)
        if found is None:
            return cls()
        try:
            data = json.loads(found.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"{found}: not a readable JSON config ({exc})") from None
        url = data.get(CONFIG_KEY) if isinstance(data, dict) else None
        if url is not None and not isinstance(url, str):
            raise InvalidInput(f"{found}: {CONFIG_KEY!r} must be a URL string")
        return cls(url)

    @property
    def environments(self) -> dict[str, Environment]:
        """Azure's ``ws.environments``: the latest version of every environment, by name."""
        return Environment.list(self)

    def get_details(self) -> dict[str, Any]:
        """The daemon's address and its health document (Azure's lists subscription details)."""
        return {"url": self.url, **connect(self).health()}

    def __repr__(self) -> str:
        return f"Workspace(url={self.url!r})"


def _find_config(path: Path | None) -> Path | None:
    if path is not None and path.is_file():
        return path
    if path is not None and not path.is_dir():
        raise InvalidInput(f"Workspace.from_config: {path} is neither a config file nor a directory")
    start = (path or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        for name in _CONFIG_NAMES:
            if (directory / name).is_file():
                return directory / name
    return None
