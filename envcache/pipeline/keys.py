"""The step key: what a step's result is filed under, and what decides whether it may be reused.

``xxh3-128`` over the canonical JSON (compact, key-sorted, UTF-8) of everything that determines
the result, like every other key in envcache:

- the environment's image key and variant (the step runs in that image);
- the snapshot digest of the source directory (every file not excluded, by path and content, so
  a helper module next to the script counts — Azure hashes only the script unless told more);
- the script name, the arguments in order, and the step's ``version`` label (Azure's marker
  for "the step changed");
- every input's name and content digest (a file or directory's tree digest, or the tree digest
  of an earlier step's output);
- the output names. Not the host paths: the same step writing elsewhere is the same step.

Not in the key: ``allow_reuse`` (it says whether to look the key up, not what the result is),
the step's display name, ``compute_target`` and ``hash_paths``. Key values are a compatibility
promise pinned by golden vectors; a change to this payload bumps ``STEP_KEY_VERSION``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import xxhash

STEP_KEY_VERSION = 1


def canonical_json(data: Any) -> bytes:
    """Compact, key-sorted JSON in UTF-8: the exact bytes that are hashed.

    The same rule as ``envcache.definition.canonical.dumps_canonical``, written out here because
    importing that module costs ~100 ms of requirement-parser imports.
    """
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def step_key(*, image_key: str, variant: str, snapshot: str, script_name: str, arguments: Iterable[str],
             inputs: Mapping[str, str], outputs: Iterable[str], version: str | None = None) -> str:
    """32 hex digits. ``inputs`` maps input name → digest; ``outputs`` are output names."""
    payload = {
        "step_key_version": STEP_KEY_VERSION,
        "image_key": image_key,
        "variant": variant,
        "snapshot": snapshot,
        "script_name": script_name,
        "arguments": list(arguments),
        "version": version,
        "inputs": sorted([name, digest] for name, digest in inputs.items()),
        "outputs": sorted(outputs),
    }
    return xxhash.xxh3_128_hexdigest(canonical_json(payload))
