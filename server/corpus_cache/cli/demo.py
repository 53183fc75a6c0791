"""`corpus-cache demo`: the product end to end, as a user's MCP client sees it.

Starts `corpus-cache serve` on a folder as a real stdio subprocess, connects a real MCP
client, lists the tools, asks two questions (the first writes the cache, the second reads
it), and prints the answers with their citations and the cache statistics. The questions
are the ones given with `--question`; else, for the sample handbook, two of its facts; else
two drawn from the folder's own largest documents (their headings).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from corpus_cache.mcp_surface.results import one_off_write
from corpus_cache.wording import plural, usd

# Two facts of the sample handbook (corpora/handbook.facts.json).
QUESTIONS = (
    "When are production deploys frozen every week?",
    "Who is notified when a page goes 30 minutes without acknowledgement?",
)


HEADING = re.compile(r"^(?:#{1,3}\s+(.+?)\s*#*\s*$|(.+)\n(?:=+|-+)\s*$)", re.M)


def is_handbook(corpus: Path) -> bool:
    """The sample handbook, whose facts the default questions ask about."""
    return corpus.name == "handbook" and (corpus.parent / "handbook.facts.json").exists()


def questions_from(documents: Sequence[tuple[str, str]], count: int = 2) -> tuple[str, ...]:
    """Questions about a folder of one's own, from (path, opening text) of its largest
    documents: what each says about its first heading below the title, or what it is about."""
    questions = []
    for path, text in documents[:count]:
        headings = [
            (match.group(1) or match.group(2) or "").strip(" *_`")
            for match in HEADING.finditer(text)
        ]
        headings = [h for h in headings if 2 < len(h) <= 80]
        topic = headings[1] if len(headings) > 1 else headings[0] if headings else ""
        if topic:
            questions.append(f"What does {path} say about {topic}?")
        else:
            questions.append(f"What is {path} about?")
    return tuple(questions)


async def _drawn_questions(client: Client) -> tuple[str, ...]:
    listing = await client.call_tool("list_documents", {"limit": 1000})
    documents = (listing.structured_content or {}).get("documents", [])
    largest = sorted(documents, key=lambda d: (-d["tokens"], d["path"]))[:2]
    opened = []
    for doc in largest:
        read = await client.call_tool("read_document", {"path": doc["path"], "end_line": 60})
        opened.append((doc["path"], (read.structured_content or {}).get("text", "")))
    return questions_from(opened)


def _out(text: str = "") -> None:
    print(text, flush=True)


def _print_answer(number: int, question: str, result: dict[str, Any]) -> None:
    usage = result["usage"]
    prompt = sum(v for k, v in usage.items() if k != "output_tokens")
    _out(f"\nQ{number}: {question}")
    _out(textwrap.indent(result["answer"], "    "))
    for index, citation in enumerate(result["citations"], start=1):
        start, end = citation["start_line"], citation["end_line"]
        lines = f"{start}" if start == end else f"{start}-{end}"
        _out(f"    [{index}] {citation['path']}:{lines}")
    hour = usage["cache_write_1h_tokens"]
    held = f" ({hour:,} with the 1-hour TTL)" if hour else ""
    _out(
        f"    usage: {usage['cache_write_5m_tokens'] + hour:,} tokens "
        f"written to cache{held}, {usage['cache_read_tokens']:,} read from cache, "
        f"{usage['input_tokens']:,} uncached, of {prompt:,}; "
        f"${result['cost_usd']:.4f} (uncached: ${result['uncached_cost_usd']:.4f}); "
        f"answered by {result['backend']}"
    )
    written = usage["cache_write_5m_tokens"] + hour
    note = one_off_write(result["cost_usd"], result["uncached_cost_usd"], written)
    if note is not None:
        _out(textwrap.indent(textwrap.fill(note, 88), "    "))


async def run_demo(corpus: Path, questions: Sequence[str] = ()) -> int:
    """`questions`: those to ask; none: the handbook's, or some drawn from the folder."""
    state = Path(tempfile.mkdtemp(prefix="corpus-cache-demo-"))
    env = dict(os.environ)
    env["CORPUS_CACHE_STATE_DIR"] = str(state)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "corpus_cache", "serve", "--corpus", str(corpus)],
        env=env,
    )
    _out(f"Starting `corpus-cache serve --corpus {corpus}` over stdio (ledger in {state})")
    async with Client(params) as client:
        tools = (await client.list_tools()).tools
        _out("Tools: " + ", ".join(tool.name for tool in tools))
        listing = await client.call_tool("list_documents", {"limit": 1})
        total = (listing.structured_content or {}).get("total", 0)
        _out(f"Corpus: {plural(total, 'document')}")
        if not total:
            _out("Nothing to ask: the folder holds no document that can be sent.")
            return 1
        if not questions:
            questions = QUESTIONS if is_handbook(corpus) else await _drawn_questions(client)
            if not is_handbook(corpus):
                _out("Questions drawn from the folder's largest documents (--question asks yours)")
        for number, question in enumerate(questions, start=1):
            result = await client.call_tool("ask", {"question": question})
            if result.is_error or result.structured_content is None:
                _out(f"ask failed: {result.content}")
                return 1
            _print_answer(number, question, result.structured_content)
        status = await client.call_tool("cache_status", {})
        spend = (status.structured_content or {})["spend"]
    billed = spend.get("billed", True)
    _out("\nCache statistics" + ("" if billed else " (offline emulator: not billed, priced at "
                                                    "API rates)"))  # fmt: skip
    _out(f"    requests:  {spend['requests']}")
    _out(f"    hit rate:  {spend['hit_rate']:.1%} of prompt tokens read from cache")
    _out(f"    {'spent:   ' if billed else 'would cost:'} {usd(spend['spent_usd'])}")
    _out(f"    uncached:  {usd(spend['uncached_usd'])} (the same requests without caching)")
    if spend["saved_usd"] < 0:
        _out(f"    lost:      {usd(-spend['saved_usd'])} (cache writes not yet repaid by reads)")
    else:
        _out(f"    saved:     {usd(spend['saved_usd'])}")
    return 0


def main(corpus: Path, questions: Sequence[str] = ()) -> int:
    return anyio.run(run_demo, corpus, tuple(questions))
