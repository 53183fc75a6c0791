"""Render the HTML report of a demo session's ledger, and screenshot it with headless Chromium.

The session runs on a copy of corpora/handbook, offline (the built-in emulator), with its
own state folder: three questions, an edit and a refresh, a question after the edit (the
API's cache diagnostics say why it missed), another edit and a warm, and two more
questions that read what the warm wrote.

    .venv/bin/python bench/render_report.py                 # bench/results/report-demo.{html,png}
    .venv/bin/python bench/render_report.py --no-screenshot
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
HANDBOOK = ROOT / "corpora" / "handbook"
FACTS = ROOT / "corpora" / "handbook.facts.json"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)  # fmt: skip


async def demo_session(corpus: Path, state: Path, gap: float) -> str:
    """Run the session and return the report's HTML."""
    os.environ["CORPUS_CACHE_STATE_DIR"] = str(state)
    from corpus_cache.accounting.report_html import render_report
    from corpus_cache.accounting.stats import collect_stats
    from corpus_cache.cli.plan_report import plan_report
    from corpus_cache.config import Settings
    from corpus_cache.engine.runtime import running_engine
    from corpus_cache.engine.warm import warm

    questions = [fact["question"] for fact in json.loads(FACTS.read_text())][:6]
    settings = Settings(corpus=corpus, state_dir=state, offline=True, watch=False)
    async with running_engine(settings) as engine:

        async def ask(question: str) -> None:
            answer = await engine.ask(question)
            u = answer.usage
            print(
                f"  read {u.cache_read_tokens:>6,}  written {u.cache_write_tokens:>6,}  "
                f"${answer.cost_usd:.4f} (uncached ${answer.uncached_cost_usd:.4f})  {question}",
                file=sys.stderr,
            )
            await anyio.sleep(gap)

        for question in questions[:3]:
            await ask(question)
        edited = corpus / "oncall" / "rotation.md"
        edited.write_text(edited.read_text() + "\nThe stipend is reviewed every January.\n")
        await engine.refresh()
        await ask(questions[3])  # rewrites the cache; diagnostics say why
        edited.write_text(edited.read_text() + "\nSwaps are agreed in #oncall.\n")
        await engine.refresh()
        await warm(engine)  # rewrites it ahead of the next question
        await anyio.sleep(gap)
        for question in questions[4:6]:
            await ask(question)
        layout = plan_report(engine)
        key = engine.corpus_key
        rows = engine.ledger.history(key)
        stats = collect_stats(engine.ledger, key, time.time())
    return render_report(rows, stats, layout)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(page: Path, png: Path, width: int, height: int) -> None:
    browser = find_chromium()
    if browser is None:
        raise SystemExit("no Chromium found: apt-get install -y chromium (or pass --no-screenshot)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        subprocess.run(
            [
                browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                f"--screenshot={png}", f"--window-size={width},{height}", page.resolve().as_uri(),
            ],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "report-demo.html")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between questions")
    parser.add_argument("--no-screenshot", action="store_true")
    parser.add_argument("--window", default="1280,1600", help="screenshot size, width,height")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="corpus-cache-report-") as scratch:
        corpus = Path(scratch) / "handbook"
        shutil.copytree(HANDBOOK, corpus)
        html = anyio.run(demo_session, corpus, Path(scratch) / "state", args.gap)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(html, encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    if not args.no_screenshot:
        png = args.out.with_suffix(".png")
        width, height = (int(v) for v in args.window.split(","))
        screenshot(args.out, png, width, height)
        print(f"wrote {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
