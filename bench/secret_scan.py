"""What the secret rules cost the scan: corpora/handbook and a generated 10,000-file folder.

For each, in CPU milliseconds (median of --runs): the content rules alone (`find_secrets`
over every file's text), a cold `scan` (every file read), and a rescan after one file is saved (what
the watcher does on every save). Each generated file is prose with a fenced block of
short commented, quoted and concatenated lines, the input the normalisation works hardest
on. To compare with another version of the code, run it with that version on PYTHONPATH:

    .venv/bin/python bench/secret_scan.py [--files 10000] [--runs 5]
    PYTHONPATH=/tmp/base/server .venv/bin/python bench/secret_scan.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from corpus_cache.corpus.scan import scan
from corpus_cache.corpus.secret_content import find_secrets
from synthetic import document

HANDBOOK = Path(__file__).resolve().parent.parent / "corpora" / "handbook"

CODE = """```python
# Connect with the settings below; see the runbook for rotation.
config = {{
    "region": "eu-west-{n}",  // the primary region
    "endpoint": "https://api.example.com/" + "v{n}/" + "items",
    "retries": {n},
}}
> quoted reply line {n}: the key is kept in the vault, not here
-- SELECT id, name FROM users WHERE id = {n};
; [section-{n}]
 * @param token the caller's token, never logged
```
"""


def generate(root: Path, files: int, megabytes: float) -> None:
    sentences = max(6, int(megabytes * 1e6 / files / 64))
    for n in range(files):
        path = root / f"part-{n // 100:03d}" / f"doc-{n:05d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Document {n}\n\n{document(n, sentences)}\n\n{CODE.format(n=n)}")


def median_seconds(work: Callable[[], object], runs: int) -> float:
    """CPU seconds (this process), the median of `runs`: on a shared machine wall time
    measures the neighbours as much as the code."""
    times = []
    for _ in range(runs):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return statistics.median(times)


def measure(root: Path, runs: int) -> dict[str, float]:
    first = scan(root)
    texts = [d.text for d in first.documents]
    rules = median_seconds(lambda: [find_secrets(t) for t in texts], runs)
    cold = median_seconds(lambda: scan(root), runs)
    edited = root / first.documents[0].path
    text = edited.read_text()

    def rescan() -> None:
        edited.write_text(text + f"\nEdited at {time.perf_counter_ns()}.\n")
        scan(root, previous={d.path: d for d in first.documents})

    return {
        "files": len(texts),
        "megabytes": round(sum(len(t) for t in texts) / 1e6, 1),
        "content_rules_ms": round(rules * 1000, 1),
        "cold_scan_ms": round(cold * 1000, 1),
        "rescan_one_save_ms": round(median_seconds(rescan, runs) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--megabytes", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        handbook = Path(tmp) / "handbook"  # a copy: the rescan measure edits a file
        shutil.copytree(HANDBOOK, handbook)
        out = {"handbook": measure(handbook, args.runs)}
        generated = Path(tmp) / "generated"
        generate(generated, args.files, args.megabytes)
        out["generated"] = measure(generated, args.runs)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
