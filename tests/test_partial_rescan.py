"""A rescan of only the files the watcher named finds what a scan of the whole folder finds.

Random sequences of saves, deletes, renames, symlinks and hard links, on names that are
served, ignored by a .gitignore, secret by name or content, binary, empty, in a pruned
folder or in a folder left out: after each step, `scan(..., changed=those files)` from
the last result equals a whole scan.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from corpus_cache.corpus.scan import ScanOptions, ScanResult, scan
from support.secret_samples import SHAPES

FOLDERS = ["", "docs", "docs/deep", "ignored", ".ssh", "node_modules", "logs"]
NAMES = ["a.md", "b.txt", "c.log", ".env", "image.png", "notes", "line\nbreak.md"]
TEXTS = [
    b"# Title\n\nSome text.\n",
    b"Other text, longer than the first one.\n",
    b"",
    b"   \n",
    b"\x00\x01binary\x02",
    f"key = {SHAPES['aws-access-key-id'][0](1)}\n".encode(),
]

paths = st.builds(
    lambda folder, name: f"{folder}/{name}" if folder else name,
    st.sampled_from(FOLDERS),
    st.sampled_from(NAMES),
)
steps = st.one_of(
    st.tuples(st.just("write"), paths, st.sampled_from(TEXTS)),
    st.tuples(st.just("delete"), paths, st.just(b"")),
    st.tuples(st.just("rename"), paths, paths.map(str.encode)),
    st.tuples(st.just("symlink"), paths, paths.map(str.encode)),
    st.tuples(st.just("hard link"), paths, paths.map(str.encode)),
)


@contextmanager
def folder() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="partial-rescan-"))
    try:
        for name in FOLDERS:
            (root / name).mkdir(parents=True, exist_ok=True)
        (root / ".gitignore").write_text("*.log\nignored/\n")
        (root / "docs" / "a.md").write_text("# A\n\nThe first document.\n")
        (root / "docs" / "deep" / "b.txt").write_text("The second one.\n")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def apply(root: Path, kind: str, path: str, argument: bytes) -> set[str]:
    """Do one step; the files it touched, as a watcher names them."""
    target = root / path
    if kind == "write":
        if target.is_symlink():
            target.unlink()
        target.write_bytes(argument)
        return {path}
    if kind == "delete":
        if target.is_symlink() or target.exists():
            target.unlink()
        return {path}
    other = argument.decode()
    if kind == "rename":
        if not (target.is_symlink() or target.exists()):
            return set()
        os.replace(target, root / other)
        return {path, other}
    if (root / other).is_symlink() or (root / other).exists():
        (root / other).unlink()
    if kind == "symlink":
        os.symlink(os.path.relpath(target, (root / other).parent), root / other)
    elif target.exists() and not target.is_symlink():
        os.link(target, root / other)
    return {other}


def same(rescanned: ScanResult, whole: ScanResult) -> None:
    assert rescanned.documents == whole.documents
    assert rescanned.skipped == whole.skipped
    assert sorted(rescanned.links) == sorted(whole.links)
    assert rescanned.reused == whole.reused


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(steps, min_size=1, max_size=4), min_size=1, max_size=6))
def test_a_rescan_of_the_files_named_finds_what_a_whole_scan_finds(
    batches: list[list[tuple[str, str, bytes]]],
) -> None:
    options = ScanOptions()
    with folder() as root:
        result = scan(root, options)
        for batch in batches:
            changed: set[str] = set()
            for kind, path, argument in batch:
                changed |= apply(root, kind, path, argument)
            rescanned = scan(root, options, previous=result, changed=changed)
            whole = scan(root, options, previous={d.path: d for d in result.documents})
            same(rescanned, whole)
            result = rescanned


def test_a_rescan_reads_only_the_files_named(tmp_path: Path) -> None:
    for n in range(20):
        (tmp_path / f"doc-{n}.md").write_text(f"Document {n}.\n")
    first = scan(tmp_path)
    (tmp_path / "doc-3.md").write_text("Document 3, edited.\n")
    (tmp_path / "doc-4.md").unlink()
    (tmp_path / "new.md").write_text("A new one.\n")
    again = scan(tmp_path, previous=first, changed={"doc-3.md", "doc-4.md", "new.md"})
    assert again.reused == 18
    expected = {d.path for d in first.documents} - {"doc-4.md"} | {"new.md"}
    assert {d.path for d in again.documents} == expected
