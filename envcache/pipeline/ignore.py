"""Which files of a source directory go into its snapshot: Azure ML's ignore-file rule.

Azure ML (the v1 SDK's ``get_project_ignore_file`` and the v2 SDK's ``get_ignore_file`` alike)
reads exactly one ignore file, in the root of the source directory: ``.amlignore`` if it exists,
otherwise ``.gitignore``. The other file is not merged in, and ignore files in subdirectories are
not read (they are ordinary files of the snapshot). Each file's path relative to the root is
matched against every pattern with gitignore syntax and the last matching pattern wins, so a
``!negation`` re-includes a file even inside an excluded directory (git itself would not). We
follow that rule exactly, with ``pathspec``'s gitignore implementation, because a snapshot must
be what Azure would upload: the same project hashes the same files here as there.

One addition: directories named ``.git`` are never part of a snapshot. They are version-control
state, not the working tree, and they change on every ``git status`` — hashing them would throw
away every reuse for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pathspec import GitIgnoreSpec

from envcache.pipeline.errors import TreeError

AMLIGNORE = ".amlignore"
GITIGNORE = ".gitignore"
ALWAYS_EXCLUDED_DIRS = frozenset({".git"})


@dataclass(frozen=True)
class IgnoreRules:
    """The patterns of one ignore file (or none), and the questions the tree walker asks them."""

    spec: GitIgnoreSpec | None = None  # None: nothing excluded (but .git)
    negates: bool = False              # a "!" pattern exists: no directory may be skipped whole

    def excludes_file(self, relpath: str) -> bool:
        return self.spec is not None and self.spec.match_file(relpath)

    def excludes_dir(self, relpath: str, name: str) -> bool:
        """True when no file below ``relpath`` can be included, so the walk may skip it unread.

        Without negations, a pattern that matches the directory (``build/``, ``build``, ``*.d``)
        also matches every path below it, so skipping is exact; with one, files are checked
        one by one, as Azure does.
        """
        if name in ALWAYS_EXCLUDED_DIRS:
            return True
        return self.spec is not None and not self.negates and self.spec.match_file(relpath + "/")


NO_RULES = IgnoreRules()


def ignore_rules(root: Path) -> IgnoreRules:
    """The rules for a source directory: its ``.amlignore``, else its ``.gitignore``, else none."""
    for name in (AMLIGNORE, GITIGNORE):
        path = root / name
        if path.is_file():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise TreeError(f"{path}: cannot read the ignore file: {exc}") from None
            return IgnoreRules(spec=GitIgnoreSpec.from_lines(lines), negates=any(line.startswith("!") for line in lines))
    return NO_RULES
