"""What changed between two snapshots: documents added, removed, edited. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .documents import Document, Snapshot


@dataclass(frozen=True)
class SnapshotChanges:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]  # same path, different text
    skipped_changed: bool  # what was left out, or why, is different

    @property
    def documents_changed(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    @property
    def list_changed(self) -> bool:
        """Documents appeared or disappeared: the list of document resources is different."""
        return bool(self.added or self.removed)

    @property
    def any(self) -> bool:
        return self.documents_changed or self.skipped_changed


def snapshot_changes(old: Snapshot | None, new: Snapshot) -> SnapshotChanges:
    """Compare by path and content hash; a touched file whose text is the same is unchanged."""
    before = old.documents if old is not None else ()
    added, removed, changed = document_changes(before, new.documents)
    skipped_changed = (old.skipped if old is not None else ()) != new.skipped
    return SnapshotChanges(added, removed, changed, skipped_changed)


def document_changes(
    old: Sequence[Document], new: Sequence[Document]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The paths added, removed, and changed (same path, different text) from `old` to
    `new`, both in path order as snapshots hold them. One pass side by side: after a
    save, all but a few documents are the very objects of the snapshot before."""
    added: list[str] = []
    removed: list[str] = []
    changed: list[str] = []
    # Equal runs at either end are skipped in C (tuples compare the same objects as equal
    # without looking into them); one save leaves one document between them.
    old, new = tuple(old), tuple(new)
    start = _common_prefix(old, new)
    end = _common_prefix(old[start:][::-1], new[start:][::-1])
    old, new = old[: len(old) - end], new[: len(new) - end]
    i = j = start
    while i < len(old) and j < len(new):
        before, after = old[i], new[j]
        if before is after:
            i, j = i + 1, j + 1
        elif before.path == after.path:
            if before.sha256 != after.sha256:
                changed.append(after.path)
            i, j = i + 1, j + 1
        elif before.path < after.path:
            removed.append(before.path)
            i += 1
        else:
            added.append(after.path)
            j += 1
    removed.extend(doc.path for doc in old[i:])
    added.extend(doc.path for doc in new[j:])
    return tuple(added), tuple(removed), tuple(changed)


def _common_prefix(old: tuple[Document, ...], new: tuple[Document, ...]) -> int:
    """How many leading documents the two have in common: a binary search over prefixes
    compared whole."""
    low, high = 0, min(len(old), len(new))
    while low < high:
        middle = (low + high + 1) // 2
        if old[:middle] == new[:middle]:
            low = middle
        else:
            high = middle - 1
    return low
