"""CLI verbs over definitions: ``hash``, ``canonical``, ``diff``, ``convert``."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the definition sub-commands to the ``envcache`` parser."""
