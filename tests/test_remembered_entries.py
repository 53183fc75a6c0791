"""The cache entries an engine believes alive, kept in the state folder across a restart
and shared by the instances on it (engine/remembered.py, accounting/shared.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from corpus_cache.accounting.ledger import Ledger
from corpus_cache.accounting.shared import Shared
from corpus_cache.engine.remembered import RememberedEntries

BACKEND = "anthropic http://127.0.0.1:1 None"


@contextmanager
def remembered(state: Path, corpus: str = "/corpus", backend: str = BACKEND) -> Iterator[
    RememberedEntries
]:  # fmt: skip
    """An instance's remembered entries, with a ledger of its own on the state folder."""
    ledger = Ledger(state / "ledger.sqlite3")
    try:
        yield RememberedEntries(Shared(ledger), corpus, backend)
    finally:
        ledger.close()


def test_entries_come_back_for_the_same_backend_while_they_live(tmp_path: Path) -> None:
    with remembered(tmp_path) as kept:
        kept.load(now=0.0)
        kept.save({"a": (1_000.0, "5m"), "b": (5_000.0, "1h")}, now=0.0)
    with remembered(tmp_path) as again:
        assert again.load(now=2_000.0) == {"b": (5_000.0, "1h")}  # "a" expired meanwhile


def test_entries_another_backend_or_corpus_made_are_not_believed(tmp_path: Path) -> None:
    with remembered(tmp_path, backend="emulator A") as kept:
        kept.save({"a": (9_000.0, "5m")}, now=0.0)
    with remembered(tmp_path, backend="emulator B") as other:
        assert other.load(now=0.0) == {}
    with remembered(tmp_path, corpus="/other", backend="emulator A") as other:
        assert other.load(now=0.0) == {}


def test_an_unreadable_ledger_is_a_start_without_entries_not_a_failure(tmp_path: Path) -> None:
    (tmp_path / "ledger.sqlite3").write_text("not a database")
    with remembered(tmp_path) as kept:
        assert kept.load(now=0.0) == {}
        kept.save({"a": (9_000.0, "5m")}, now=0.0)  # logged, not raised
        assert kept.news() == {}


def test_what_one_instance_learns_of_an_entry_the_other_reads_as_news(tmp_path: Path) -> None:
    with remembered(tmp_path) as first, remembered(tmp_path) as second:
        first.load(now=0.0)
        second.load(now=0.0)
        first.save({"a": (300.0, "5m"), "b": (3_600.0, "1h")}, now=0.0)
        assert second.news() == {"a": (300.0, "5m"), "b": (3_600.0, "1h")}
        assert second.news() == {}  # read once
        second.save({"a": (400.0, "5m"), "b": (3_600.0, "1h")}, now=100.0)  # a read of "a"
        assert first.news() == {"a": (400.0, "5m")}
        first.save({"a": (400.0, "5m")}, now=150.0)  # "b" found gone by a miss
        assert second.news() == {"b": (0.0, "1h")}
