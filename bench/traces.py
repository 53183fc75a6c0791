"""Traces: a day of use as JSON Lines, shared by the benchmarks.

One event a line, in time order (seconds from the start):
    {"t": 0.0, "op": "ask", "question": "..."}
    {"t": 61.5, "op": "edit", "path": "rel/path.md", "text": "full new content"}
    {"t": 90.0, "op": "create", "path": "rel/new.md", "text": "..."}
    {"t": 95.0, "op": "delete", "path": "rel/old.md"}

`python bench/traces.py --corpus corpora/handbook --kind edit-heavy --out trace.jsonl`
writes one. Kinds:
- edit-heavy: a working session. Questions about a minute apart; about one edit for every
  two questions, to one of three hot files (a user revising a few documents while asking).
  Saves have locality, as an editor's do: the next edit is to the file edited last with
  probability `--locality` (default 0.7), else to one of the hot files at random.
  `--locality 0` gives uniformly random edits.
- rare: a docs corpus that rarely changes. One edit per 50 questions; as in most document
  folders, the edits go to the few living documents (here two: a changelog-like page and
  a FAQ-like page), not to random pages.
- sparse: a day of occasional use, questions 10 to 50 minutes apart, an edit now and then.
- bursty: working sessions of 3 to 10 questions a minute or two apart, separated by
  breaks of 20 minutes to 2 hours; an edit every few questions.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FACTS = Path(__file__).parent.parent / "corpora" / "handbook.facts.json"


@dataclass(frozen=True)
class Event:
    t: float
    op: str
    question: str = ""
    path: str = ""
    text: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"t": round(self.t, 3), "op": self.op}
        if self.op == "ask":
            data["question"] = self.question
        else:
            data["path"] = self.path
            if self.op in ("edit", "create"):
                data["text"] = self.text
        return data


def load(path: Path) -> list[Event]:
    events = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        data = json.loads(line)
        if data.get("op") not in ("ask", "edit", "create", "delete"):
            raise ValueError(f"{path}:{number}: unknown op {data.get('op')!r}")
        events.append(Event(float(data["t"]), data["op"], data.get("question", ""),
                            data.get("path", ""), data.get("text", "")))  # fmt: skip
    return sorted(events, key=lambda e: e.t)


def save(events: Iterable[Event], path: Path) -> None:
    path.write_text("".join(json.dumps(e.to_json()) + "\n" for e in events))


def _questions(rng: random.Random) -> Iterator[str]:
    facts = json.loads(FACTS.read_text()) if FACTS.exists() else []
    pool = [f["question"] for f in facts] or ["What does this corpus say about deploys?"]
    while True:
        rng.shuffle(pool)
        yield from pool


def _revise(text: str, rng: random.Random, n: int) -> str:
    """An edit a person would make: a sentence added, or a line changed."""
    lines = text.splitlines()
    line = rng.randrange(len(lines)) if lines else 0
    note = f"Revision {n}: reviewed and updated on day {n // 7 + 1}, item {rng.randint(1, 99)}."
    if rng.random() < 0.5 and lines:
        lines[line] = lines[line] + " " + note
    else:
        lines.insert(line, note)
    return "\n".join(lines) + "\n"


def generate(
    corpus: Path, kind: str, questions: int, seed: int = 7, locality: float = 0.7
) -> list[Event]:
    rng = random.Random(seed)
    files = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*") if p.is_file())
    texts = {f: (corpus / f).read_text() for f in files}
    ask = _questions(rng)
    if kind == "edit-heavy":
        hot = rng.sample(files, 3)
        gap, edit_every = (40.0, 80.0), 2
    elif kind == "rare":
        hot = rng.sample(files, 2)
        gap, edit_every = (40.0, 80.0), 50
    elif kind == "sparse":
        hot = rng.sample(files, 4)
        gap, edit_every = (600.0, 3000.0), 6
    elif kind == "bursty":
        hot = rng.sample(files, 3)
        gap, edit_every = (40.0, 120.0), 4
    else:
        raise ValueError(f"unknown trace kind {kind!r}")
    if kind != "edit-heavy":
        locality = 0.0
    events: list[Event] = []
    t = 0.0
    edits = 0
    last = rng.choice(hot)
    burst_left = rng.randint(3, 10)
    for number in range(questions):
        events.append(Event(t, "ask", question=next(ask)))
        t += rng.uniform(*gap)
        if kind == "bursty":
            burst_left -= 1
            if burst_left == 0:
                t += rng.uniform(1_200.0, 7_200.0)
                burst_left = rng.randint(3, 10)
        if (number + 1) % edit_every == 0:
            path = last if rng.random() < locality else rng.choice(hot)
            last = path
            edits += 1
            texts[path] = _revise(texts[path], rng, edits)
            events.append(Event(t - rng.uniform(5, 20), "edit", path=path, text=texts[path]))
    return sorted(events, key=lambda e: e.t)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a trace of questions and edits.")
    parser.add_argument("--corpus", type=Path, default=Path("corpora/handbook"))
    parser.add_argument("--kind", choices=["edit-heavy", "rare", "sparse", "bursty"], required=True)
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--locality", type=float, default=0.7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    save(generate(args.corpus, args.kind, args.questions, args.seed, args.locality), args.out)


if __name__ == "__main__":
    main()
