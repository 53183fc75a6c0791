"""Questions about a real documentation folder, for bench/routing.py's held-out check.

Each question is about one document drawn with a fixed seed, in one of three kinds, so
that routing is not measured only on questions that copy a heading word for word:

- `heading`: a section heading, verbatim: "What does the documentation say about
  Conditional GET middleware?" (the check as it was first written).
- `paraphrase`: the same heading's words as a user might type them: lower case, markup
  gone, in another order, one word left out when there are four or more, an inflection
  changed where the corpus has the other form ("creating" -> "create", "messages" ->
  "message"), inside one of several question phrasings.
- `passage`: a sentence of the document's body (not a heading), as some of its words in
  their order: "Where is it explained that cached page expires seconds setting?"

The documents are drawn from those with a usable heading (three words or more, not the
title), so the three kinds draw from the same documents. `half` splits the documents in
two by a hash of their path, to tune on one half and report on the other.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

KINDS = ("heading", "paraphrase", "passage")
UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Words a question's wording adds or a paraphrase leaves out: not evidence of a topic.
_FILLER = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with how what when where which who why do does "
    "can should i you your my we our from".split()
)
_PARAPHRASES = (
    "How do I {}?",
    "Where can I read about {}?",
    "Explain {}.",
    "What should I know about {}?",
    "I need help with {}",
)


def normalized(text: str) -> str:
    """Lower case, numbers as #, runs of white space as one space: so that a sentence
    repeated across release notes with another version number is the same sentence."""
    return " ".join(re.sub(r"\d+", "#", text.lower()).split())


@dataclass(frozen=True)
class Question:
    path: str  # the document it is about
    kind: str
    text: str
    evidence: str  # text (normalized) that, in another document, makes that one right too


def headings(text: str) -> list[str]:
    """Section titles: reStructuredText's (a line underlined) and Markdown's (#)."""
    lines = text.splitlines()
    found = []
    for above, line in itertools.pairwise(lines):
        title = above.strip()
        if (
            UNDERLINE.match(line)
            and title
            and not UNDERLINE.match(above)
            and len(line.strip()) >= len(title)
        ):
            found.append(title)
    found += [line.lstrip("#").strip() for line in lines if re.match(r"^#{1,6} ", line)]
    return found


def in_half(path: str, half: str) -> bool:
    if half == "all":
        return True
    odd = hashlib.sha256(path.encode()).digest()[0] % 2
    return odd == (half == "test")


def _inflected(word: str, vocabulary: frozenset[str]) -> str:
    """Another form of `word` that the corpus uses, if there is one: plural and singular,
    -ing and -ed and their stem."""
    forms = []
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            stem = word[: -len(suffix)]
            forms += [stem + "e", stem, stem[:-1]]
    if word.endswith("es"):
        forms.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss"):
        forms.append(word[:-1])
    else:
        forms += [word + "s", word + "ing"]
    return next((f for f in forms if len(f) > 2 and f in vocabulary), word)


def paraphrase(heading: str, rng: random.Random, vocabulary: frozenset[str]) -> str:
    words = [w.lower() for w in _WORD.findall(heading)]
    content = [w for w in words if w not in _FILLER] or words
    content = [_inflected(w, vocabulary) if rng.random() < 0.5 else w for w in content]
    rng.shuffle(content)
    if len(content) >= 4:
        content.pop(rng.randrange(len(content)))
    return rng.choice(_PARAPHRASES).format(" ".join(content))


def _sentences(text: str, titles: Sequence[str]) -> list[str]:
    """The document's prose sentences of eight words or more: not headings, directives,
    code or tables."""
    prose = []
    skip = set(titles)
    for line in text.splitlines():
        stripped = line.strip()
        if (
            not stripped
            or stripped in skip
            or UNDERLINE.match(stripped)
            or stripped.startswith(("..", ":", ">>>", "$", "|", "+", "#", "{", "<"))
            or line.startswith("    ")
        ):
            prose.append("\n")
            continue
        prose.append(stripped)
    joined = " ".join(prose)
    found = []
    for block in joined.split("\n"):
        for sentence in re.split(r"(?<=[.!?])\s+", block.strip()):
            if len(_WORD.findall(sentence)) >= 8:
                found.append(sentence.strip())
    return found


def from_passage(sentence: str, rng: random.Random) -> str:
    words = [w.lower() for w in _WORD.findall(sentence)]
    content = [w for w in words if w not in _FILLER and len(w) > 2]
    keep = sorted(rng.sample(range(len(content)), min(5, len(content))))
    return f"Where is it explained that {' '.join(content[i] for i in keep)}?"


def _question(
    rel: str,
    kind: str,
    heading: str,
    text: str,
    rng: random.Random,
    vocabulary: frozenset[str],
) -> Question:
    if kind == "paraphrase":
        return Question(rel, kind, paraphrase(heading, rng, vocabulary), normalized(heading))
    sentences = _sentences(text, headings(text)) if kind == "passage" else []
    if not sentences:
        verbatim = f"What does the documentation say about {heading}?"
        return Question(rel, "heading", verbatim, normalized(heading))
    sentence = rng.choice(sentences)
    return Question(rel, kind, from_passage(sentence, rng), normalized(sentence))


def generate(
    folder: Path,
    count: int,
    seed: int,
    kinds: Sequence[str] = KINDS,
    half: str = "all",
    per_document: int = 1,
) -> list[Question]:
    """Questions about `count` documents drawn with `seed`, `per_document` each (about
    different headings, where a document has as many), about as many of each kind."""
    rng = random.Random(seed)
    candidates = []
    texts: dict[str, str] = {}
    for path in sorted(p for p in folder.rglob("*") if p.suffix in (".txt", ".rst", ".md")):
        rel = path.relative_to(folder).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        titles = headings(text)
        usable = [t for t in titles[1:] if len(re.findall(r"[A-Za-z]+", t)) >= 3]
        if usable and in_half(rel, half):
            candidates.append((rel, usable))
            texts[rel] = text
    chosen = rng.sample(candidates, min(count, len(candidates)))
    vocabulary = frozenset(w.lower() for t in texts.values() for w in _WORD.findall(t))
    asked: list[Question] = []
    for i, (rel, titles) in enumerate(chosen):
        picked = [rng.choice(titles)]
        # Each question's own randomness, so that adding a kind does not move the others.
        own = random.Random(f"{seed}:{rel}")
        others = [t for t in titles if t != picked[0]]
        picked += own.sample(others, min(per_document - 1, len(others)))
        for j, heading in enumerate(picked):
            kind = kinds[(i + j) % len(kinds)]
            asked.append(_question(rel, kind, heading, texts[rel], own, vocabulary))
    return asked
