"""`corpus-cache plan`: the layout of a corpus, for people (a table) and scripts (JSON)."""

from __future__ import annotations

from typing import Any

from corpus_cache.cache.live_corpus import Corpus, shown_sizes
from corpus_cache.engine.core import Engine
from corpus_cache.models.pricing import project_question
from corpus_cache.plan.layout import Shard
from corpus_cache.plan.staging import Staging, about
from corpus_cache.wording import approximately, plural, tokens_figure

SHOWN_PER_BLOCK = 8
SHOWN_LEFT_OUT = 20


def plan_report(engine: Engine) -> dict[str, Any]:
    corpus = engine.current
    model = engine.model
    shards = []
    for shard in corpus.shards:
        plan = shard.plan
        cached = plan.blocks[-1].prefix_tokens if plan.cached else 0
        ttl = (plan.blocks[-1].ttl if plan.blocks else None) or "5m"
        cold, warm, uncached = project_question(cached, plan.total_tokens - cached, model, ttl=ttl)
        position = -1
        blocks = []
        # Figures as shown: a document not counted has its point estimate, and says so.
        sizes, estimated = shown_sizes(corpus, shard)
        prefix = plan.instructions_tokens
        for number, block in enumerate(plan.blocks, start=1):
            first = position + 1
            position += len(block.paths)
            documents = [
                {
                    "path": path, "tokens": sizes[first + i],
                    "old_copy": first + i in plan.superseded, "estimated": estimated[first + i],
                }
                for i, path in enumerate(block.paths)
            ]  # fmt: skip
            tokens = sum(sizes[first : position + 1])
            prefix += tokens
            blocks.append(
                {
                    "block": number,
                    "documents": documents,
                    "tokens": tokens,
                    "prefix_tokens": prefix,
                    "estimated": any(estimated[: position + 1]),
                    "breakpoint_after_document": position if block.ttl else None,
                    "ttl": block.ttl,
                }
            )
        build = _build(engine, corpus, shard)
        shards.append(
            {
                "build": build,
                "shard": shard.number,
                "tokens": prefix,
                "estimated": any(estimated),
                "cached": plan.cached,
                "note": plan.note,
                "blocks": blocks,
                "question_cost_usd": {
                    "cold": round(cold, 6), "warm": round(warm, 6), "uncached": round(uncached, 6),
                },
            }
        )  # fmt: skip
    return {
        "corpus": str(engine.settings.corpus),
        "model": model.id,
        "min_cacheable_tokens": model.min_cacheable_tokens,
        "budget_tokens": corpus.layout.budget_tokens,
        "documents": len(corpus.snapshot.documents),
        "corpus_tokens": corpus.shown_tokens,
        "tokens_estimated": bool(corpus.estimated),
        "instructions_tokens": corpus.shards[0].plan.instructions_tokens,
        "too_large": list(corpus.layout.oversized),
        "left_out": engine.skipped_summary(),
        "left_out_files": [{"path": s.path, "reason": s.reason} for s in corpus.snapshot.skipped],
        "assumptions": "a question of 50 tokens and an answer of 500 tokens",
        "shards": shards,
    }


def _build(engine: Engine, corpus: Corpus, shard: Shard) -> dict[str, Any] | None:
    """How the shard's cache is written under the known input-token limit, when one
    request cannot carry it: in how many slices, and in about how long."""
    if not engine.builder.needed(corpus, shard):
        return None
    staged = engine.builder.staging(corpus, shard)
    if not isinstance(staged, Staging):
        return None
    progress = engine.builder.estimate(shard.number, staged)
    return {
        "slices": progress.total,
        "slices_done": progress.done,
        "slice_tokens": engine.builder.capacity,
        "input_tokens_per_minute": engine.caller.limits.input_tokens_per_minute,
        "seconds": round(progress.eta_seconds),
    }


def render_plan(report: dict[str, Any], show_all: bool = False) -> str:
    lines = [
        f"Corpus {report['corpus']}: {plural(report['documents'], 'document')}, "
        f"{tokens_figure(report['corpus_tokens'], report['tokens_estimated'])}",
        f"Model {report['model']}: minimum cacheable prefix {report['min_cacheable_tokens']:,} "
        f"tokens; budget {report['budget_tokens']:,} tokens per request; "
        f"{plural(len(report['shards']), 'shard')}",
    ]
    if not report["documents"]:
        lines.append("Nothing to lay out: the folder holds no document to send.")
    for shard in report["shards"] if report["documents"] else ():
        costs = shard["question_cost_usd"]
        lines.append("")
        lines.append(
            f"Shard {shard['shard']}: {tokens_figure(shard['tokens'], shard['estimated'])}. "
            f"{shard['note']}."
        )
        lines.append(f"  {'block':>5} {'docs':>5} {'tokens':>9} {'prefix':>9}  ttl")
        for block in shard["blocks"]:
            docs = block["documents"]
            rough = block["estimated"]
            lines.append(
                f"  {block['block']:>5} {len(docs):>5} {approximately(block['tokens'], rough):>9} "
                f"{approximately(block['prefix_tokens'], rough):>9}  {block['ttl'] or '-'}"
            )
            shown = docs if show_all else docs[:SHOWN_PER_BLOCK]
            for doc in shown:
                figure = approximately(doc["tokens"], doc["estimated"])
                lines.append(f"{'':14}{figure:>9}  {doc['path']}")
            if len(shown) < len(docs):
                lines.append(f"{'':25}... and {len(docs) - len(shown)} more (--all shows them)")
        if not shard["blocks"]:
            continue
        if shard["build"]:
            build = shard["build"]
            lines.append(
                f"  at {build['input_tokens_per_minute']:,} input tokens a minute, the cache is "
                f"written in {build['slices']} slices of at most {build['slice_tokens']:,} "
                f"tokens, {about(build['seconds'])}"
                + (f" ({build['slices_done']} alive already)" if build["slices_done"] else "")
            )
        if shard["cached"]:
            lines.append(
                f"  one question: ${costs['cold']:.4f} cold (writes the cache), "
                f"${costs['warm']:.4f} warm, ${costs['uncached']:.4f} uncached"
            )
        else:
            lines.append(
                f"  one question: ${costs['uncached']:.4f} every time (too small to cache: "
                "it is sent uncached)"
            )
    if report["too_large"]:
        lines.append(f"Too large for the budget, left out: {', '.join(report['too_large'])}")
    if report["documents"]:
        lines.append(f"(costs assume {report['assumptions']})")
    if report["tokens_estimated"]:
        lines.append(
            "(~: a local estimate, not a count; the costs take each estimate at the top of its "
            "error bound)"
        )
    left_out = report["left_out_files"]
    if left_out:
        lines.append("")
        lines.append(f"Left out: {plural(len(left_out), 'file')}")
        shown = left_out if show_all else left_out[:SHOWN_LEFT_OUT]
        lines.extend(f"  {item['path']}: {item['reason']}" for item in shown)
        if len(shown) < len(left_out):
            lines.append(f"  ... and {len(left_out) - len(shown)} more (--all shows them)")
    return "\n".join(lines)
