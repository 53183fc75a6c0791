"""`corpus-cache demo`: the product end to end, as a user's MCP client sees it.

Starts `corpus-cache serve` on a folder as a real stdio subprocess, connects a real MCP
client, lists the tools, asks two questions (the first writes the cache, the second reads
it), and prints the answers with their citations and the cache statistics.
"""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

# Two facts of the sample handbook (corpora/handbook.facts.json).
QUESTIONS = (
    "When are production deploys frozen every week?",
    "Who is notified when a page goes 30 minutes without acknowledgement?",
)


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


async def run_demo(corpus: Path, questions: tuple[str, ...] = QUESTIONS) -> int:
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
        _out(f"Corpus: {total} documents")
        for number, question in enumerate(questions, start=1):
            result = await client.call_tool("ask", {"question": question})
            if result.is_error or result.structured_content is None:
                _out(f"ask failed: {result.content}")
                return 1
            _print_answer(number, question, result.structured_content)
        status = await client.call_tool("cache_status", {})
        spend = (status.structured_content or {})["spend"]
    _out("\nCache statistics")
    _out(f"    requests:  {spend['requests']}")
    _out(f"    hit rate:  {spend['hit_rate']:.1%} of prompt tokens read from cache")
    _out(f"    spent:     ${spend['spent_usd']:.4f}")
    _out(f"    uncached:  ${spend['uncached_usd']:.4f} (the same requests without caching)")
    _out(f"    saved:     ${spend['saved_usd']:.4f}")
    return 0


def main(corpus: Path) -> int:
    return anyio.run(run_demo, corpus)
