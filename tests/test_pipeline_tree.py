"""Snapshots and trees: what is hashed (Azure's ignore rule), how, and the digest cache."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pathspec import GitIgnoreSpec

from envcache.pipeline import DigestCache, TreeError, read_tree, snapshot

# Golden vector: a tree's digest is a compatibility promise (stored snapshots and step keys use
# it). The file digests are what ``sha256sum`` prints for the same files.
GOLDEN_LISTING = (b'{"files":[["a.txt","100644",6,"5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"],'
                  b'["bin/run.sh","100755",5,"86b0c5a1e2b73b08fd54c727f4458649ed9fe3ad1b6e8ac9460c070113509a1e"]],'
                  b'"kind":"dir"}')
GOLDEN_DIGEST = "sha256:48ee69f687c99fd362eb4243b1130c816ba8328e1543f7e413fbd29bf5b69f02"


def make(root: Path, files: dict[str, str]) -> Path:
    for relpath, text in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def paths(tree_root: Path) -> list[str]:
    return [entry.path for entry in snapshot(tree_root).files]


def test_golden_listing_and_digest(tmp_path: Path) -> None:
    root = make(tmp_path / "t", {"a.txt": "hello\n", "bin/run.sh": "echo\n"})
    (root / "bin/run.sh").chmod(0o755)
    tree = read_tree(root)
    assert tree.listing() == GOLDEN_LISTING
    assert tree.digest == GOLDEN_DIGEST == "sha256:" + hashlib.sha256(GOLDEN_LISTING).hexdigest()


def test_digest_ignores_mtimes_location_and_other_mode_bits(tmp_path: Path) -> None:
    one = make(tmp_path / "one", {"a.py": "x = 1\n", "pkg/b.py": "y = 2\n", "empty/.keep": ""})
    two = tmp_path / "elsewhere" / "two"
    shutil.copytree(one, two, copy_function=shutil.copyfile)   # new mtimes, new inodes
    os.utime(two / "a.py", ns=(1, 1))
    (two / "pkg/b.py").chmod(0o664)
    (tmp_path / "one/emptydir").mkdir()                        # empty directories are not content
    assert read_tree(one).digest == read_tree(two).digest


@pytest.mark.parametrize("change", ["content", "rename", "executable", "add"])
def test_digest_follows_names_content_and_the_executable_bit(tmp_path: Path, change: str) -> None:
    root = make(tmp_path / "t", {"a.py": "x = 1\n"})
    before = read_tree(root).digest
    if change == "content":
        (root / "a.py").write_text("x = 2\n")
    elif change == "rename":
        (root / "a.py").rename(root / "b.py")
    elif change == "executable":
        (root / "a.py").chmod(0o755)
    else:
        (root / "new.txt").write_text("")
    assert read_tree(root).digest != before


def test_amlignore_wins_over_gitignore_whole(tmp_path: Path) -> None:
    root = make(tmp_path / "t", {".amlignore": "*.log\n", ".gitignore": "*.csv\n", "a.log": "", "b.csv": "", "c.py": ""})
    assert paths(root) == [".amlignore", ".gitignore", "b.csv", "c.py"]
    (root / ".amlignore").unlink()
    assert paths(root) == [".gitignore", "a.log", "c.py"]
    (root / ".gitignore").unlink()
    assert paths(root) == ["a.log", "b.csv", "c.py"]


def test_only_the_root_ignore_file_is_read_as_azure_does(tmp_path: Path) -> None:
    root = make(tmp_path / "t", {"sub/.amlignore": "*.txt\n", "sub/.gitignore": "*.txt\n", "sub/a.txt": "", "b.txt": ""})
    assert paths(root) == ["b.txt", "sub/.amlignore", "sub/.gitignore", "sub/a.txt"]


def test_negation_reincludes_a_file_even_below_an_excluded_directory(tmp_path: Path) -> None:
    root = make(tmp_path / "t", {".amlignore": "# comment\ndata/\n*.bin\n!data/keep.csv\n!important.bin\n",
                                 "data/keep.csv": "", "data/drop.csv": "", "x.bin": "", "important.bin": "",
                                 "m.py": ""})
    assert paths(root) == [".amlignore", "data/keep.csv", "important.bin", "m.py"]


def test_git_directories_are_never_part_of_a_snapshot(tmp_path: Path) -> None:
    root = make(tmp_path / "t", {".git/HEAD": "ref\n", "lib/.git/config": "", "main.py": "", ".gitignore": ""})
    assert paths(root) == [".gitignore", "main.py"]


NAMES = st.sampled_from(["a", "b", "c.py", "d.log", "data", "x.bin"])
PATTERNS = st.sampled_from(["*.log", "data/", "data", "/a", "b/", "!data/c.py", "!*.log", "**/x.bin", "a/**",
                            "*.py", "!a/b", "c.py/", "#data"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.sets(st.lists(NAMES, min_size=1, max_size=3).map("/".join), min_size=1, max_size=12),
       patterns=st.lists(PATTERNS, max_size=5))
def test_the_walk_includes_exactly_the_files_azure_would(tmp_path_factory: pytest.TempPathFactory,
                                                        files: set[str], patterns: list[str]) -> None:
    """Skipping excluded directories unread must equal matching every file, Azure's definition."""
    root = tmp_path_factory.mktemp("walk")
    written = []
    for relpath in sorted(files, key=len):
        path = root / relpath
        if any(parent.is_file() for parent in path.parents) or path.is_dir():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(relpath)
        written.append(relpath)
    (root / ".amlignore").write_text("\n".join(patterns) + "\n")
    spec = GitIgnoreSpec.from_lines(patterns)
    expected = sorted(p for p in [*written, ".amlignore"] if not spec.match_file(p))
    assert paths(root) == expected


def test_symlinks_are_followed_and_loops_or_broken_links_are_errors(tmp_path: Path) -> None:
    shared = make(tmp_path / "shared", {"util.py": "U = 1\n"})
    root = make(tmp_path / "t", {"main.py": ""})
    (root / "lib").symlink_to(shared)
    (root / "alias.py").symlink_to(root / "main.py")
    tree = read_tree(root)
    assert [e.path for e in tree.files] == ["alias.py", "lib/util.py", "main.py"]
    (shared / "util.py").write_text("U = 2\n")
    assert read_tree(root).digest != tree.digest

    (root / "lib" / "back").symlink_to(root)
    with pytest.raises(TreeError, match="lib/back: symbolic link loop"):
        read_tree(root)
    (root / "lib" / "back").unlink()
    (root / "gone.txt").symlink_to(tmp_path / "missing")
    with pytest.raises(TreeError, match="gone.txt: broken symbolic link"):
        read_tree(root)
    (root / ".amlignore").write_text("gone.txt\n")
    assert "gone.txt" not in paths(root)


def test_special_files_and_non_utf8_names_are_refused(tmp_path: Path) -> None:
    root = make(tmp_path / "t", {"a": ""})
    os.mkfifo(root / "pipe")
    with pytest.raises(TreeError, match="pipe: not a regular file"):
        read_tree(root)
    (root / "pipe").unlink()
    os.close(os.open(os.fsencode(root) + b"/\xff.txt", os.O_CREAT | os.O_WRONLY))
    with pytest.raises(TreeError, match="not UTF-8"):
        read_tree(root)


def test_a_file_input_is_one_entry_named_by_the_file(tmp_path: Path) -> None:
    root = make(tmp_path / "t", {"raw.csv": "1\n"})
    single = read_tree(root / "raw.csv")
    assert single.kind == "file" and [e.path for e in single.files] == ["raw.csv"]
    assert single.digest != read_tree(root).digest       # a directory holding it is another input
    with pytest.raises(TreeError, match="No such file"):
        read_tree(root / "nope.csv")


def test_the_digest_cache_skips_unchanged_files_and_catches_every_change(tmp_path: Path) -> None:
    root = make(tmp_path / "t", {"a.txt": "aaaa", "b.txt": "bbbb", "c.txt": "cccc"})
    cache = DigestCache(tmp_path / "cache", racy_window_ns=0)
    cold = read_tree(root, cache=cache)
    assert cold.hashed_files == 3 and cold.hashed_bytes == 12
    warm = read_tree(root, cache=cache)
    assert warm.hashed_files == 0 and warm.digest == cold.digest

    a = root / "a.txt"
    stamp = a.stat()
    a.write_text("AAAA")                                       # same size, mtime put back: ctime moves
    os.utime(a, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    changed = read_tree(root, cache=cache)
    assert changed.hashed_files == 1 and changed.digest != cold.digest

    replacement = root / "b.new"
    replacement.write_text("BBBB")
    os.replace(replacement, root / "b.txt")                    # a new inode
    assert read_tree(root, cache=cache).hashed_files == 1
    assert read_tree(root, cache=cache).hashed_files == 0

    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"      # one file per root, no temp files left
    files[0].write_text("{not json")
    assert read_tree(root, cache=cache).hashed_files == 3      # a broken cache is an empty one


def test_files_written_just_before_hashing_are_not_trusted_next_time(tmp_path: Path) -> None:
    """A rewrite inside the timestamp granularity could keep the same stamp: never cache those."""
    root = make(tmp_path / "t", {"a.txt": "fresh"})
    cache = DigestCache(tmp_path / "cache")                    # the default 2 s window
    assert read_tree(root, cache=cache).hashed_files == 1
    assert read_tree(root, cache=cache).hashed_files == 1
    old = 1_600_000_000 * 10**9
    os.utime(root / "a.txt", ns=(old, old))                    # mtime is old, but ctime is now
    assert read_tree(root, cache=cache).hashed_files == 1
