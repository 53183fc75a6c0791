"""The scan and the planner on generated folder trees, and the MCP tools on a folder that
becomes a new generated tree for every case.

Whatever is in the folder, the scan never fails, never serves a file outside the root, and
serves only text it can read back byte for byte; everything it does not serve is listed
with a reason; a rescan reuses what it read. The layout of what it serves keeps the
planner's promises, and the request built from it is one the emulator (which rejects what
the API rejects) accepts, every breakpoint above the model's minimum.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st
from mcp.types import TextContent
from pathspec import GitIgnoreSpec

from budget import fuzz_settings
from corpus_cache.api.request import INSTRUCTIONS, build_request, document_block
from corpus_cache.api.tokens import content_key
from corpus_cache.corpus.documents import Document, Snapshot
from corpus_cache.corpus.encodings import decode
from corpus_cache.corpus.extract import EXTRACTED_SUFFIXES
from corpus_cache.corpus.names import name_problem, shown
from corpus_cache.corpus.rules import PRUNED_DIRECTORIES
from corpus_cache.corpus.scan import ScanOptions, ScanResult, is_secret, scan
from corpus_cache.corpus.secret_content import find_secrets
from corpus_cache.emulator import RunningEmulator
from corpus_cache.emulator.prompt import parse_count_tokens_request, parse_messages_request
from corpus_cache.mcp_surface.bounds import RESULT_MAX_CHARS, result_chars
from corpus_cache.models.catalog import ModelSpec, load_catalog
from corpus_cache.plan.anchors import MAX_ANCHORS, select_breakpoints
from corpus_cache.plan.budget import default_budget
from corpus_cache.plan.layout import MAX_BREAKPOINTS, Layout, plan_corpus, safe_minimum
from corpus_cache.plan.stability import HOT_WINDOW, DocInfo
from served import Served, served_in_a_portal
from trees import OUTSIDE_MARKER, Entry, Written, empty, trees, write_tree

# A numeric warning (a division by zero, say) is a bug the server would print on stderr.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

CATALOG = load_catalog()
MODELS = sorted(CATALOG, key=lambda m: m.id)
NOW = 2_000_000_000.0
_PROBE = {"type": "text", "text": "?"}


@contextmanager
def scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-tree-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- the scan -----------------------------------------------------------------------------


def within(path: Path, root: Path) -> bool:
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, real_root]) == real_root


def gitignore_specs(root: Path, rel_dir: str) -> GitIgnoreSpec | None:
    """The rules of a folder's .gitignore, read as the scan reads them."""
    path = root / rel_dir / ".gitignore" if rel_dir else root / ".gitignore"
    if path.is_symlink() or not path.is_file():  # git does not follow a symlinked .gitignore
        return None
    rules = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            GitIgnoreSpec.from_lines([line])
        except ValueError:  # not a pattern (a lone backslash): git skips it
            continue
        rules.append(line)
    return GitIgnoreSpec.from_lines(rules)


def ignored_by_some_gitignore(root: Path, rel: str) -> bool:
    parts = rel.split("/")
    for depth in range(len(parts)):
        base = "/".join(parts[:depth])
        spec = gitignore_specs(root, base)
        if spec is None:
            continue
        below = parts[depth:]
        folders = ["/".join(below[: i + 1]) + "/" for i in range(len(below) - 1)]
        if any(spec.match_file(f) for f in folders) or spec.match_file("/".join(below)):
            return True
    return False


def check_document(root: Path, doc: Document, options: ScanOptions) -> None:
    parts = doc.path.split("/")
    assert not doc.path.startswith("/")
    assert all(p not in ("", ".", "..") for p in parts)
    assert all(name_problem(p) is None for p in parts), doc.path
    assert not set(parts[:-1]) & PRUNED_DIRECTORIES, doc.path
    assert not is_secret(doc.path), doc.path
    full = root / doc.path
    assert within(full, root), f"{doc.path} is outside the root"
    real = Path(os.path.realpath(full))
    assert not is_secret(real.relative_to(os.path.realpath(root)).as_posix()), doc.path
    assert real.is_file(), doc.path
    assert not ignored_by_some_gitignore(root, doc.path), doc.path
    raw = real.read_bytes()
    assert doc.size == len(raw)
    assert OUTSIDE_MARKER not in doc.text
    assert doc.text.strip(), f"{doc.path} is blank"
    doc.text.encode("utf-8")  # text a JSON body can carry: no lone surrogates
    assert doc.sha256 == hashlib.sha256(doc.text.encode()).hexdigest()
    if os.path.splitext(doc.path)[1].lower() not in EXTRACTED_SUFFIXES:
        assert len(raw) <= options.max_file_bytes
        assert decode(raw).text == doc.text, f"{doc.path} does not read back"
    if not options.allow_secret_content:
        assert not find_secrets(doc.text), doc.path


def check_accounted(root: Path, result: ScanResult) -> None:
    """Every file is served, or left out with a reason, or inside a folder that is."""
    served = {d.path for d in result.documents}
    left_out = {s.path for s in result.skipped}
    assert all(s.reason for s in result.skipped)
    folders = [""]
    while folders:
        rel_dir = folders.pop()
        for entry in os.scandir(root / rel_dir if rel_dir else root):
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in PRUNED_DIRECTORIES and shown(rel) + "/" not in left_out:
                    folders.append(rel)
            elif entry.name != ".gitignore":
                assert rel in served or shown(rel) in left_out, f"{shown(rel)} vanished"


def check_scan(written: Written, options: ScanOptions) -> ScanResult:
    root = written.root
    result = scan(root, options)
    paths = [d.path for d in result.documents]
    assert paths == sorted(set(paths)), "documents out of order or repeated"
    for doc in result.documents:
        check_document(root, doc, options)
    check_accounted(root, result)
    again = scan(root, options, previous={d.path: d for d in result.documents})
    assert again.documents == result.documents
    assert again.skipped == result.skipped
    assert again.reused == len(result.documents)
    assert not any("vanished" in s.reason for s in result.skipped), "nothing was deleted"
    # A rescan told that every file but the rules changed looks at each on its own, and
    # finds the same.
    files = [
        os.path.relpath(os.path.join(folder, name), root)
        for folder, subfolders, names in os.walk(root)
        for name in names + [d for d in subfolders if os.path.islink(os.path.join(folder, d))]
        if name != ".gitignore"
    ]
    told = scan(root, options, previous=result, changed=files)
    assert told.documents == result.documents
    assert told.skipped == result.skipped
    return result


# --- the plan ---------------------------------------------------------------------------


def count(model: ModelSpec, content: list[dict[str, Any]], system: str | None = None) -> int:
    """What the API's count_tokens says (the emulator's tokenizer; the engine asks it)."""
    body: dict[str, Any] = {"model": model.id, "messages": [{"role": "user", "content": content}]}
    if system:
        body["system"] = [{"type": "text", "text": system}]
    return parse_count_tokens_request(body, CATALOG).total_tokens


def check_plan(
    result: ScanResult, root: Path, model: ModelSpec, budget: int, ages: list[float]
) -> Layout:
    """`ages`: seconds since each document last changed, in turn."""
    baseline = count(model, [_PROBE])
    instructions = count(model, [_PROBE], INSTRUCTIONS) - baseline
    docs = [
        DocInfo(
            d.path,
            max(1, count(model, [document_block(d), _PROBE]) - baseline),
            content_key(d),
            NOW - ages[i % len(ages)],
            first_seen=NOW - ages[i % len(ages)],
        )
        for i, d in enumerate(result.documents)
    ]
    layout = plan_corpus(
        docs,
        min_cacheable_tokens=model.min_cacheable_tokens,
        instructions_tokens=instructions,
        budget_tokens=budget,
        now=NOW,
    )
    placed = [path for shard in layout.shards for path in shard.plan.order]
    assert sorted(placed + list(layout.oversized)) == sorted(d.path for d in docs)
    assert len({s.number for s in layout.shards}) == len(layout.shards)
    snapshot = Snapshot(root, 1, NOW, result.documents, result.skipped)
    for shard in layout.shards:
        plan = shard.plan
        assert plan.total_tokens <= budget or not plan.order
        assert len(plan.anchors) <= MAX_ANCHORS
        assert all(block.paths for block in plan.blocks)
        for block in plan.blocks:
            if block.ttl is not None:
                assert block.prefix_tokens >= safe_minimum(model.min_cacheable_tokens)
        if not plan.order:
            continue
        marked = select_breakpoints(plan.anchors, set(), slots=MAX_BREAKPOINTS, turn=0)
        body = build_request(
            plan, snapshot, "What does it say?", model=model.id, max_tokens=1024, marked=marked
        )
        prompt = parse_messages_request(body, CATALOG).prompt  # the API would accept it
        assert len(prompt.breakpoints) == len(marked) <= MAX_BREAKPOINTS
        for position in prompt.breakpoints:  # each one is above the minimum: it caches
            assert prompt.positions[position].cumulative_tokens >= model.min_cacheable_tokens
        titles = [b["title"] for b in body["messages"][0]["content"] if b["type"] == "document"]
        assert titles == list(plan.order)
    check_replan_moves_nothing(layout, docs, model, instructions, budget)
    return layout


def check_replan_moves_nothing(
    layout: Layout, docs: list[DocInfo], model: ModelSpec, instructions: int, budget: int
) -> None:
    again = plan_corpus(
        docs,
        min_cacheable_tokens=model.min_cacheable_tokens,
        instructions_tokens=instructions,
        budget_tokens=budget,
        now=NOW + 1,
        previous=layout,
    )
    assert again.shard_of() == layout.shard_of()
    for before, after in zip(layout.shards, again.shards, strict=True):
        assert after.plan.order == before.plan.order


# --- the fuzz targets ---------------------------------------------------------------------

options = st.builds(
    ScanOptions,
    max_file_bytes=st.sampled_from([2 * 1024 * 1024, 2 * 1024 * 1024, 60, 5_000]),
    allow_secret_content=st.booleans(),
)


@fuzz_settings(default=100)
@given(
    tree=trees,
    options=options,
    model=st.sampled_from(MODELS),
    budget=st.sampled_from([None, 1_500, 3_000, 6_000, 12_000]),
    ages=st.lists(st.sampled_from([0.0, 60.0, HOT_WINDOW * 2, 400 * 86_400.0]), min_size=1),
)
@example(
    tree=[Entry((), "link", "link", target="@outside/secret.md")],
    options=ScanOptions(),
    model=MODELS[0],
    budget=None,
    ages=[0.0],
)
@example(  # a rule that is not a pattern failed the whole scan
    tree=[Entry((), "a.md", "file", b"Text.\n"), Entry((), ".gitignore", "gitignore", b"\\")],
    options=ScanOptions(),
    model=MODELS[0],
    budget=None,
    ages=[0.0],
)
@example(  # a link looping through the folder an entry is written in
    tree=[Entry((), "a", "link", target="a/notes.md"), Entry(("a",), "a", "file", b"kestrel\n")],
    options=ScanOptions(),
    model=MODELS[0],
    budget=None,
    ages=[0.0],
)
@example(  # a dangling symlinked .gitignore was said to have vanished
    tree=[Entry((), "a", "file", b""), Entry((), ".gitignore", "link", target="notes.md")],
    options=ScanOptions(),
    model=MODELS[0],
    budget=None,
    ages=[0.0],
)
def test_any_folder_tree_scans_inside_its_root_and_plans_within_the_rules(
    tree: list[Entry],
    options: ScanOptions,
    model: ModelSpec,
    budget: int | None,
    ages: list[float],
) -> None:
    with scratch() as folder:
        written = write_tree(folder, tree)
        result = check_scan(written, options)
        layout = check_plan(result, written.root, model, budget or default_budget(model), ages)
    served = len(result.documents)
    event(f"documents served: {served if served < 5 else '5 or more'}")
    cached = sum(s.plan.cached for s in layout.shards)
    event(f"layout: {len(layout.shards)} shard(s), {cached} cached")


def test_a_symlink_out_of_the_tree_is_left_out_with_its_reason() -> None:
    tree = [
        Entry((), "out.md", "link", target="@outside/secret.md"),
        Entry(("a",), "up.md", "link", target="@relative/secret.md"),
        Entry((), "folder", "link", target="@outside/folder"),
        Entry((), "notes.md", "file", b"Some notes.\n"),
    ]
    with scratch() as folder:
        written = write_tree(folder, tree)
        result = check_scan(written, ScanOptions())
    assert [d.path for d in result.documents] == ["notes.md"]
    reasons = {s.path: s.reason for s in result.skipped}
    assert reasons == {
        "a/up.md": "symlink to a file outside the corpus",
        "folder": "symlink to a folder outside the corpus",
        "out.md": "symlink to a file outside the corpus",
    }


def test_a_gitignore_rule_that_is_not_a_pattern_is_skipped_and_the_others_applied() -> None:
    tree = [
        Entry((), ".gitignore", "gitignore", b"*.log\n\\\n"),
        Entry((), "notes.md", "file", b"Notes.\n"),
        Entry((), "debug.log", "file", b"Noise.\n"),
    ]
    with scratch() as folder:
        result = check_scan(write_tree(folder, tree), ScanOptions())
    assert [d.path for d in result.documents] == ["notes.md"]
    reasons = {s.path: s.reason for s in result.skipped}
    assert reasons[".gitignore"] == "rule '\\\\' is not a pattern git reads, so it is not applied"
    assert reasons["debug.log"] == "ignored by .gitignore"


def test_a_symlinked_gitignore_is_not_followed_as_git_does_not_follow_one() -> None:
    tree = [
        Entry((), "rules.txt", "file", b"*.md\n"),
        Entry((), ".gitignore", "link", target="rules.txt"),
        Entry((), "notes.md", "file", b"Notes.\n"),
    ]
    with scratch() as folder:
        result = check_scan(write_tree(folder, tree), ScanOptions())
    assert [d.path for d in result.documents] == ["notes.md", "rules.txt"]
    reasons = {s.path: s.reason for s in result.skipped}
    assert reasons[".gitignore"].startswith("a symlink, which git does not follow")


@pytest.mark.parametrize("depth", [200])
def test_a_very_deep_tree_scans_and_plans(depth: int) -> None:
    tree = [Entry(("d",) * depth, "deep.md", "file", b"The bottom.\n" * 400)]
    with scratch() as folder:
        written = write_tree(folder, tree)
        result = check_scan(written, ScanOptions())
        assert [d.path for d in result.documents] == ["/".join(["d"] * depth + ["deep.md"])]


# --- through the MCP tools ------------------------------------------------------------


@pytest.fixture(scope="module")
def live(
    running_emulator: RunningEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Served, Path]]:
    """A server whose folder becomes a new tree for each case: the refresh tool reads it."""
    base = tmp_path_factory.mktemp("fuzz-live")
    write_tree(base, [Entry((), "start.md", "file", b"The first document.\n")])
    with served_in_a_portal(base / "corpus", running_emulator.base_url, base / "state") as out:
        yield out, base


def call_ok(served: Served, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    out = served.call(name, arguments)
    texts = [c.text for c in out.content if isinstance(c, TextContent)]
    assert not out.is_error, f"{name}: {texts}"
    assert out.structured_content is not None
    assert result_chars(out) < RESULT_MAX_CHARS
    return out.structured_content


def listed_documents(served: Served) -> list[str]:
    paths: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = call_ok(served, "list_documents", {"offset": offset, "limit": 1000})
        paths += [d["path"] for d in page["documents"]]
        offset = page["next_offset"]
    return paths


@fuzz_settings(default=20, share=0.1)
@given(tree=trees, ask=st.booleans(), warm=st.booleans())
@example(  # no passage with a word in it: the search index divided by zero
    tree=[Entry((), "x", "file", "🐍 🐍 a\n".encode())], ask=False, warm=False
)
@example(  # listed, then refused as a path to a home folder or a drive
    tree=[Entry((), "~", "file", b"kestrel\n"), Entry((), "c:notes.md", "file", b"kestrel\n")],
    ask=False,
    warm=False,
)
def test_the_tools_serve_any_folder_tree_as_the_scan_reads_it(
    live: tuple[Served, Path], tree: list[Entry], ask: bool, warm: bool
) -> None:
    served, base = live
    empty(base / "corpus")
    empty(base / "outside")
    written = write_tree(base, tree)
    served.crashes.records.clear()
    call_ok(served, "refresh", {"warm": warm})
    expected = scan(written.root)
    assert listed_documents(served) == [d.path for d in expected.documents]
    for doc in expected.documents[:6]:
        page = call_ok(served, "read_document", {"path": doc.path})
        assert doc.text.startswith(page["text"]), f"{doc.path} is served stale"
    hits = call_ok(served, "search", {"query": "kestrel routing ledger", "limit": 50})["hits"]
    assert {hit["path"] for hit in hits} <= {d.path for d in expected.documents}
    index = served.read("corpus://index")
    assert not isinstance(index, str), index
    body = json.loads(getattr(index.contents[0], "text", ""))
    assert [d["path"] for d in body["documents"]] == [d.path for d in expected.documents]
    call_ok(served, "cache_status", {})
    if ask and expected.documents:
        answer = call_ok(served, "ask", {"question": "What is the routing engine called?"})
        assert {c["path"] for c in answer["citations"]} <= {d.path for d in expected.documents}
    assert served.crashes.records == [], [r.getMessage() for r in served.crashes.records]
    event(f"documents served: {min(len(expected.documents), 5)}")
