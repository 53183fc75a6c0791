"""The account's rate limits known before the first plan: from `--tier`, from a limits
file's own `tier`, and otherwise learned from the API before the folder is first planned
(engine/limits_learned.py), so that shards and slices fit the account from the start."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from support.corpus_fixture import write_corpus

pytestmark = pytest.mark.anyio

MODEL = "claude-sonnet-5-5"


def small_tier_file(path: Path, itpm: int = 12_345) -> Path:
    path.write_text(
        'tier = "small"\n[tiers.small]\ncount_tokens_rpm = 777\n'
        f"[tiers.small.classes.sonnet-5-5]\nrpm = 60\nitpm = {itpm}\notpm = 9_000\n"
    )
    return path


async def test_serve_with_a_limits_file_that_names_a_tier_assumes_that_tiers_figures(
    tmp_path: Path,
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    limits = small_tier_file(tmp_path / "limits.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["CORPUS_CACHE_STATE_DIR"] = str(tmp_path / "state")
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "corpus_cache", "serve", "--corpus", str(corpus), "--model", MODEL,
              "--limits-file", str(limits), "--no-watch"],
        env=env,
    )  # fmt: skip
    async with Client(params) as client:  # type: ignore[arg-type]
        await client.call_tool("search", {"query": "deploys"})  # waits for the engine
        status = await client.call_tool("cache_status", {})
    limits_shown = status.structured_content["rate_limits"]  # type: ignore[index]
    assert limits_shown["messages"]["input_tokens"]["per_minute"] == 12_345
    assert limits_shown["count_tokens"]["per_minute"] == 777
    assert limits_shown["source"].startswith("tier small of the limits table")
