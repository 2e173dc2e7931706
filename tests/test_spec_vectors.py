"""Golden vectors: hash values are a compatibility promise.

``tests/vectors/`` holds definitions in every input format and ``expected.json`` their spec
hashes, per-variant hashes and stage chain keys. If this test fails, a release would silently
miss every cached image. If the change is intended, bump ``CANONICAL_VERSION`` and regenerate:
``python -m tests.test_spec_vectors --regenerate``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from envcache.builder.stages import stage_chain
from envcache.definition import CANONICAL_VERSION, for_variant, load_definition, spec_hash

VECTORS = Path(__file__).parent / "vectors"
EXPECTED = VECTORS / "expected.json"
PATHS = ["minimal.yaml", "full.yaml", "dockerfile.yaml", "user_managed.json", "azure_dir", "environment.yml",
         "conda_export.yml", "requirements/requirements.txt"]
ROOT_KEY = "sha256:root|recipe-1"
# Golden equivalences: each key's hash is pinned, and every path listed under it writes the same
# environment another way (README, "Canonical rules") and must hash the same: a wheel pinned by its
# digest hashes the same from any daemon or mirror.
EQUIVALENT = {"identity.yaml": ["identity_respelled.yaml", "azure_registry"], "wheels.yaml": ["wheels_elsewhere.yaml"]}


def compute() -> dict[str, Any]:
    full = load_definition(VECTORS / "full.yaml")
    return {
        "canonical_version": CANONICAL_VERSION,
        "spec_hash": {path: spec_hash(load_definition(VECTORS / path)) for path in PATHS},
        "variant_hash": {f"full.yaml:{v}": spec_hash(for_variant(full, v)) for v in ("cpu", "gpu")},
        "stage_keys": {f"full.yaml:{v}": [[s.kind, s.key] for s in stage_chain(full, v, ROOT_KEY)]
                       for v in ("cpu", "gpu")},
        "equivalent": {path: spec_hash(load_definition(VECTORS / path)) for path in EQUIVALENT},
    }


def test_golden_vectors_are_stable() -> None:
    expected = json.loads(EXPECTED.read_text())
    actual = compute()
    assert actual["canonical_version"] == expected["canonical_version"]
    for section in ("spec_hash", "variant_hash", "stage_keys", "equivalent"):
        assert actual[section] == expected[section], section


def test_respelled_vectors_hash_like_their_golden_case() -> None:
    expected = json.loads(EXPECTED.read_text())["equivalent"]
    for golden, respellings in EQUIVALENT.items():
        for path in respellings:
            assert spec_hash(load_definition(VECTORS / path)) == expected[golden], path


def test_vectors_cover_every_format_and_are_distinct() -> None:
    hashes = compute()["spec_hash"]
    assert len(set(hashes.values())) == len(PATHS)


if __name__ == "__main__" and sys.argv[1:] == ["--regenerate"]:
    EXPECTED.write_text(json.dumps(compute(), indent=2) + "\n")
    print(f"wrote {EXPECTED}")
