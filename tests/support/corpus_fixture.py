"""A small corpus written for tests, with facts to ask about."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from synthetic import document, write_folder

__all__ = ["FACTS", "write_corpus", "write_folder"]

FACTS = {
    "oncall.md": "The on-call rotation hands over every Tuesday at 09:30 Stockholm time.",
    "deploys.md": "Production deploys are frozen from 16:00 on Fridays until Monday morning.",
    "incidents.md": (
        "A SEV-1 is declared when more than 5% of shipments fail to book for ten minutes."
    ),
    "architecture/routing.md": "The routing engine is codenamed Kestrel and listens on port 7443.",
}


def write_corpus(root: Path, filler_sentences: int = 60) -> Path:
    for index, (rel, fact) in enumerate(sorted(FACTS.items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        filler = document(index, filler_sentences)
        path.write_text(f"# {rel}\n\n{filler}\n\n{fact}\n\n{document(index + 50, 12)}\n")
    return root
