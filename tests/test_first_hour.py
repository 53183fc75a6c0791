"""A newcomer's first hour, scripted: the README's commands on an empty folder, a one-file
folder, a folder that does not exist and the sample handbook, checking what a person reads:
no traceback, no negative saving left unexplained, offline figures never mixed with billed
ones. The commands run as `corpus-cache` runs them (its `main`), without an API key."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from corpus_cache.cli.main import main

HANDBOOK = Path(__file__).parent.parent / "corpora" / "handbook"
QUESTION = "When are production deploys frozen every week?"
FOLLOW_UP = "Who is notified when a page goes 30 minutes without acknowledgement?"


def folder(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / kind
    if kind == "empty":
        path.mkdir()
    elif kind == "one-file":
        path.mkdir()
        (path / "notes.md").write_text("# Notes\n\nProduction deploys freeze on Fridays.\n")
    elif kind == "handbook":
        shutil.copytree(HANDBOOK, path)
    return path  # "missing": nothing there


def command(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def read_like_a_person(text: str) -> None:
    """What no output may show."""
    assert "Traceback" not in text
    assert "IndexError" not in text
    assert "1 documents" not in text
    assert "(s)" not in text
    negative = re.search(r"-\$\d", text)
    if negative:  # a loss is said, and explained, where it is shown
        assert "Saved is negative" in text or "more than uncached" in text, text


@pytest.mark.parametrize("kind", ["empty", "one-file", "missing", "handbook"])
def test_the_readme_commands_read_well_on_any_folder(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = str(folder(kind, tmp_path))
    outputs: list[str] = []

    code, out, err = command(["plan", "--corpus", corpus], capsys)
    outputs += [out, err]
    if kind == "missing":
        assert code == 2
        assert "corpus folder not found" in err
    else:
        assert code == 0, err
        assert "Corpus " in out

    asks = [QUESTION, FOLLOW_UP] if kind == "handbook" else [QUESTION]
    for question in asks:
        code, out, err = command(["ask", "--corpus", corpus, question], capsys)
        outputs += [out, err]
        if kind in ("empty", "missing"):
            assert code == 2
            assert ("holds no documents" if kind == "empty" else "not found") in err
        else:
            assert code == 0, err
            assert "answered by offline emulator (extractive, not Claude)" in out

    code, out, err = command(["stats", "--corpus", corpus], capsys)
    outputs += [out, err]
    assert code == 0
    if kind in ("one-file", "handbook"):
        assert "Offline emulator (not billed" in out
        assert "Claude API (billed)" not in out  # no key: nothing billed, nothing mixed in
    code, out, err = command(["stats", "--corpus", corpus, "--json"], capsys)
    backends = json.loads(out)["backends"] if out else {}
    assert "anthropic" not in backends

    page = tmp_path / "report.html"
    code, out, err = command(["report", "--html", str(page), "--corpus", corpus], capsys)
    outputs += [out, err]
    if kind == "missing":
        assert code == 2
    else:
        assert code == 0, err
        html = page.read_text()
        if kind != "empty":  # offline requests only: drawn apart, nothing on a billed chart
            assert 'data-chart="cumulative-spend"' not in html
            assert 'data-chart="offline-cumulative-spend"' in html

    for text in outputs:
        read_like_a_person(text)

    if kind == "handbook":
        figures = json.loads(command(["stats", "--corpus", corpus, "--json"], capsys)[1])
        offline = figures["backends"]["offline-emulator"]["periods"]["all time"]
        assert offline["saved_usd"] > 0  # the second question read what the first wrote
        (shard,) = figures["shards"]
        assert shard["warm"] is True
