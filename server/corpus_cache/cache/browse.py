"""Looking through a corpus without an API call: a document by the path a user gives,
which block holds each document, the layout's blocks, and what the scan left out. Pure."""

from __future__ import annotations

from collections import Counter
from typing import Any

from corpus_cache.cache.live_corpus import Corpus, shown_sizes
from corpus_cache.corpus.documents import Document, Snapshot
from corpus_cache.corpus.paths import corpus_relative, normal_form
from corpus_cache.errors import NotInCorpusError


def find_document(snapshot: Snapshot, path: str) -> Document:
    """The document of `snapshot` at `path`, as list_documents shows it or relative to the
    corpus folder. Never reads the disk, so it cannot leave the corpus: only files the scan
    admitted are served."""
    exact = snapshot.get(path)
    if exact is not None:  # as list_documents shows it, even `~notes.md` or `c:report.md`
        return exact
    relative = corpus_relative(path)
    doc = snapshot.get(relative)
    if doc is None:  # the same name in another Unicode form (é as one or two characters)
        wanted = normal_form(relative)
        alike = [d for d in snapshot.documents if normal_form(d.path) == wanted]
        doc = alike[0] if len(alike) == 1 else None
    if doc is not None:
        return doc
    for skipped in snapshot.skipped:
        if skipped.path.rstrip("/") == relative:
            raise NotInCorpusError(f"{relative} is not served: {skipped.reason}")
    raise NotInCorpusError(
        f"{relative} is not a document of this corpus; list_documents shows the paths"
    )


def skipped_summary(snapshot: Snapshot) -> dict[str, int]:
    """How many files the scan left out, by kind of reason."""
    reasons = Counter(_reason_kind(s.reason) for s in snapshot.skipped)
    return dict(sorted(reasons.items()))


def block_of(corpus: Corpus) -> dict[str, tuple[int, int]]:
    """(shard, block) of each document, blocks numbered from 1 within their shard."""
    return {
        path: (shard.number, number)
        for shard in corpus.shards
        for number, block in enumerate(shard.plan.blocks, start=1)
        for path in block.paths
    }


def describe_layout(corpus: Corpus) -> list[dict[str, Any]]:
    """Each block of each shard: its documents, tokens and TTL. Tokens are shown as
    counted, or as estimated (`estimated`: the block's prefix holds an estimate)."""
    out: list[dict[str, Any]] = []
    for shard in corpus.shards:
        sizes, flags = shown_sizes(corpus, shard)
        prefix, start, estimated = shard.plan.instructions_tokens, 0, False
        for number, block in enumerate(shard.plan.blocks, start=1):
            end = start + len(block.paths)
            tokens = sum(sizes[start:end])
            prefix += tokens
            estimated = estimated or any(flags[start:end])
            out.append(
                {
                    "shard": shard.number,
                    "block": number,
                    "documents": len(block.paths),
                    "tokens": tokens,
                    "prefix_tokens": prefix,
                    "ttl": block.ttl,
                    "first": block.paths[0] if block.paths else None,
                    "last": block.paths[-1] if block.paths else None,
                    "estimated": estimated,
                }
            )
            start = end
    return out


def _reason_kind(reason: str) -> str:
    """A skip reason without its details, so that "cannot be read: Permission denied"
    and "secret file (never sent by default)" count as "cannot be read" and "secret file"."""
    return reason.split(" (")[0].split(":")[0]
