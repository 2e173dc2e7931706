"""CLI verbs of the daemon: ``serve`` (and, as the service grows, the client-side verbs)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the daemon's sub-commands to the ``envcache`` parser."""
