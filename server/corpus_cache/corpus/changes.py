"""What changed between two snapshots: documents added, removed, edited. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from .documents import Snapshot


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
    before = {doc.path: doc.sha256 for doc in old.documents} if old is not None else {}
    after = {doc.path: doc.sha256 for doc in new.documents}
    added = tuple(path for path in after if path not in before)
    removed = tuple(path for path in before if path not in after)
    changed = tuple(path for path, sha in after.items() if before.get(path, sha) != sha)
    skipped_changed = (old.skipped if old is not None else ()) != new.skipped
    return SnapshotChanges(added, removed, changed, skipped_changed)
