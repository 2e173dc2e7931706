"""What the pipeline package borrows from the definition package, in one place.

Reading YAML so that errors point at a line, and atomic file writes, are already solved in
``envcache.definition``; this is the only module here that imports
it, so the rename touches one line. Both helpers are cheap to import (PyYAML and the standard
library only), unlike ``spec.canonical``, which pulls in the requirement parsers.
"""

from __future__ import annotations

from envcache.definition.files import atomic_write
from envcache.definition.sources import Located, load_yaml

__all__ = ["Located", "atomic_write", "load_yaml"]
