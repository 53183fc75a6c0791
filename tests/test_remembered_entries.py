"""The cache entries an engine believes alive, kept in the state folder across a restart
(engine/remembered.py)."""

from __future__ import annotations

from pathlib import Path

from corpus_cache.engine.remembered import RememberedEntries


def test_entries_come_back_for_the_same_backend_while_they_live(tmp_path: Path) -> None:
    kept = RememberedEntries(tmp_path, "/corpus", "anthropic http://127.0.0.1:1 None")
    kept.save({"a": (1_000.0, "5m"), "b": (5_000.0, "1h")})
    again = RememberedEntries(tmp_path, "/corpus", "anthropic http://127.0.0.1:1 None")
    assert again.load(now=2_000.0) == {"b": (5_000.0, "1h")}  # "a" expired meanwhile


def test_entries_another_backend_or_corpus_made_are_not_believed(tmp_path: Path) -> None:
    RememberedEntries(tmp_path, "/corpus", "emulator A").save({"a": (9_000.0, "5m")})
    assert RememberedEntries(tmp_path, "/corpus", "emulator B").load(now=0.0) == {}
    assert RememberedEntries(tmp_path, "/other", "emulator A").load(now=0.0) == {}


def test_an_unreadable_file_is_a_start_without_entries_not_a_failure(tmp_path: Path) -> None:
    kept = RememberedEntries(tmp_path, "/corpus", "x")
    kept.path.write_text("{not json")
    assert kept.load(now=0.0) == {}
    kept.path.write_text('{"backend": "x", "entries": {"a": ["soon", "5m"], "b": [9, "2h"]}}')
    assert kept.load(now=0.0) == {}
