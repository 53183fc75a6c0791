"""Every tool and resource, called through a real MCP client with arbitrary arguments.

One server and one session serve every case: the client runs in an event loop on a
thread of its own (an anyio blocking portal), and each hypothesis example calls into it.
Whatever the arguments (wrong types, missing, extra, huge, NaN, nested, hostile paths) the
server answers with a result or an error result that says what was wrong: never a crash,
never a traceback, never a protocol error, and the session keeps working.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st
from mcp.types import CallToolResult, TextContent

from budget import fuzz_settings
from corpus_cache.emulator import RunningEmulator
from corpus_cache.mcp_surface.bounds import ERROR_MAX_CHARS, RESULT_MAX_CHARS, result_chars
from served import Served, served_in_a_portal
from support.corpus_fixture import FACTS, write_corpus

# A numeric warning (a division by zero, say) is a bug the server would print on stderr.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

TOOLS = ("ask", "search", "list_documents", "read_document", "cache_status", "refresh")
CRASH_TEXT = ("Traceback (most recent call last)", 'File "')


# --- arguments ------------------------------------------------------------------------

huge_text = st.builds(
    lambda char, n: char * n, st.characters(codec="utf-8"), st.integers(10_000, 200_000)
)
texts = st.one_of(
    st.text(),
    st.text(st.characters(codec="utf-8", categories=["L", "N", "Zs"]), min_size=1),
    st.sampled_from(["", " ", "\n\t", "\x00", "\ufeff", "\u202e", "🐍" * 40]),
    huge_text,
)
integers = st.one_of(
    st.integers(-10, 2_000),
    st.integers(),
    st.sampled_from([0, -1, 2**31, 2**63, -(2**63), 10**30]),
)
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), integers, floats, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)

paths = st.one_of(
    st.sampled_from(sorted(FACTS)),
    st.sampled_from(
        [
            "../outside.md",
            "/etc/passwd",
            "~/x",
            "C:\\x",
            "\\\\server\\share",
            "%2e%2e/x",
            "．．／x",
            "a/../../b",
            "./oncall.md",
            "oncall.md/",
            "ONCALL.MD",
            "oncall.md\x00",
            "architecture//routing.md",
            "architecture\\routing.md",
            "file:///etc/passwd",
            "corpus://doc/oncall.md",
            ".",
            "..",
            "",
            " ",
            "\u2215etc\u2215passwd",
        ]
    ),
    st.builds(lambda parts: "/".join(parts), st.lists(st.sampled_from(["..", ".", "a", ""]))),
    texts,
)
WORDS = "Kestrel port on-call rotation Tuesday deploys frozen Friday SEV-1 shipments".split()
words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)
small = st.integers(0, 60)
mostly_small = st.one_of(small, small, small, integers)
questions = st.one_of(
    st.sampled_from(["When does the on-call rotation hand over?", "Kestrel port?", "?"]),
    words,
    texts,
)
sessions = st.one_of(st.just("new"), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}"), texts)

# Each tool's parameters: values that are often right (so that the tools' own code runs,
# not only the schema's checks) and some that are wrong in every way the schema allows.
PLAUSIBLE: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "ask": {
        "question": questions,
        "fan_out": st.one_of(st.integers(1, 8), st.integers(1, 8), integers),
        "session": sessions,
    },
    "search": {
        "query": st.one_of(words, words, texts),
        "limit": mostly_small,
        "offset": mostly_small,
    },
    "list_documents": {"offset": mostly_small, "limit": mostly_small},
    "read_document": {
        "path": st.one_of(st.sampled_from(sorted(FACTS)), paths),
        "start_line": mostly_small,
        "end_line": mostly_small,
    },
    "cache_status": {},
    "refresh": {"warm": st.booleans()},
}
LEAVE_OUT = {"question", "query", "path"}  # required: left out only now and then


@st.composite
def tool_calls(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    unknown = draw(st.integers(0, 15)) == 0
    name = draw(st.text(max_size=20) if unknown else st.sampled_from(TOOLS))
    params = PLAUSIBLE.get(name, {})
    arguments: dict[str, Any] = {}
    for param, plausible in params.items():
        choice = draw(st.integers(0, 9))
        if choice < 7 or (choice == 9 and param in LEAVE_OUT):
            arguments[param] = draw(plausible)
        elif choice == 8:
            arguments[param] = draw(json_values)
    if draw(st.integers(0, 7)) == 0:
        arguments.update(draw(st.dictionaries(st.text(max_size=12), json_values, max_size=3)))
    return name, arguments


# --- one server for every case ------------------------------------------------------


@contextmanager
def serve(base_url: str, root: Path, mode: str) -> Iterator[Served]:
    corpus = write_corpus(root / "corpus", filler_sentences=20)
    (root / "outside.md").write_text("OUTSIDE-THE-CORPUS marker text\n")
    with served_in_a_portal(corpus, base_url, root / "state", mode) as out:
        yield out


@pytest.fixture(scope="module")
def served(
    running_emulator: RunningEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The 2026-07-28 era, as Claude Code speaks it."""
    with serve(running_emulator.base_url, tmp_path_factory.mktemp("fuzz-tools"), "auto") as out:
        yield out


@pytest.fixture(scope="module")
def served_legacy(
    running_emulator: RunningEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The handshake era, as the MCP Inspector speaks it."""
    root = tmp_path_factory.mktemp("fuzz-tools-legacy")
    with serve(running_emulator.base_url, root, "legacy") as out:
        yield out


# --- what every answer must be ------------------------------------------------------


def check_answer(served: Served, name: str, arguments: dict[str, Any], out: CallToolResult) -> None:
    size = result_chars(out)
    assert size < RESULT_MAX_CHARS, f"{name}: {size:,} characters"
    texts = [c.text for c in out.content if isinstance(c, TextContent)]
    assert texts, f"{name}: a result without text content"
    text = "\n".join(texts)
    assert CRASH_TEXT[0] not in text, text[:2000]
    assert served.crashes.records == [], [r.getMessage() for r in served.crashes.records]
    if out.is_error:
        # The SDK's text for a crash is the bare prefix; an error a user can act on says more.
        assert text.strip() != f"Error executing tool {name}", "the tool crashed"
        assert len(text.strip()) >= 12, text
        assert not any(marker in text for marker in CRASH_TEXT), text[:2000]
        return
    assert name in TOOLS, f"unknown tool {name!r} was answered"
    assert out.structured_content is not None
    documents = {d.path for d in served.engine.current.snapshot.documents}
    body = out.structured_content
    if name == "search":
        assert {hit["path"] for hit in body["hits"]} <= documents
    elif name == "read_document":
        assert body["path"] in documents
        assert "OUTSIDE-THE-CORPUS" not in body["text"]
    elif name == "ask":
        assert {c["path"] for c in body["citations"]} <= documents


@fuzz_settings(default=100)
@given(tool_calls())
@example(("read_document", {"path": "../outside.md"}))
@example(("read_document", {"path": "oncall.md", "start_line": 2**63}))
@example(("read_document", {"path": "oncall.md", "end_line": -(2**63)}))
@example(("search", {"query": "Kestrel", "limit": math.nan, "offset": math.inf}))
@example(("list_documents", {"offset": 10**30, "limit": 1}))
@example(("search", {"query": "\x1b" * 10_000, "limit": 1, "offset": 0}))
@example(("read_document", {"path": "0" * 40_000}))
@example(("ask", {"question": "Kestrel port?", "fan_out": 2**70, "session": {"a": [1]}}))
@example(("ask", {"question": "x" * 150_000}))
@example(("ask", {"question": "\x00\ufeff\u202e"}))
@example(("ask", {"question": "Kestrel \udcff port?"}))  # in memory only: JSON cannot carry it
@example(("ask", {"question": "When do deploys freeze?", "session": "new"}))
@example(("refresh", {"warm": True}))
@example(("cache_status", {"unexpected": None}))
@example(("no-such-tool", {}))
def test_every_tool_answers_any_arguments_with_a_result_or_a_clear_error(
    served: Served, call: tuple[str, dict[str, Any]]
) -> None:
    name, arguments = call
    served.crashes.records.clear()
    out = served.call(name, arguments)
    event(f"{name if name in TOOLS else 'unknown tool'}: {'error' if out.is_error else 'ok'}")
    check_answer(served, name, arguments, out)


@fuzz_settings(default=20, share=0.1)
@given(tool_calls())
def test_every_tool_answers_any_arguments_in_the_handshake_era_too(
    served_legacy: Served, call: tuple[str, dict[str, Any]]
) -> None:
    name, arguments = call
    served_legacy.crashes.records.clear()
    check_answer(served_legacy, name, arguments, served_legacy.call(name, arguments))


uris = st.one_of(
    st.sampled_from(["corpus://index", "corpus://stats", "corpus://nothing"]),
    st.builds(lambda p: f"corpus://doc/{p}", paths),
    st.text(max_size=60),
).map(lambda uri: uri.encode("utf-8", "replace").decode())  # the client cannot send a surrogate


@fuzz_settings(default=50, share=0.2)
@given(uris)
@example("corpus://doc/../outside.md")
@example("corpus://doc/%2e%2e/outside.md")
@example("corpus://doc/oncall.md")
def test_every_resource_uri_answers_with_contents_or_a_protocol_error_that_says_why(
    served: Served, uri: str
) -> None:
    served.crashes.records.clear()
    out = served.read(uri)
    if isinstance(out, str):  # the protocol's channel for a resource that is not there
        assert out.strip()
        # Ours are clipped; the SDK's "Unknown resource: <uri>" echoes what was sent.
        assert len(out) <= ERROR_MAX_CHARS + len(uri) + 100, f"{len(out):,} characters"
        assert not any(marker in out for marker in CRASH_TEXT), out
    else:
        for contents in out.contents:
            assert "OUTSIDE-THE-CORPUS" not in getattr(contents, "text", "")
    assert served.crashes.records == [], [r.getMessage() for r in served.crashes.records]


@pytest.mark.parametrize("era", ["served", "served_legacy"])
def test_the_session_still_works_after_the_fuzzing(
    era: str, request: pytest.FixtureRequest
) -> None:
    served: Served = request.getfixturevalue(era)
    served.still_works()
    listed = served.portal.call(served.client.list_tools)
    assert [t.name for t in listed.tools] == list(TOOLS)
    found = served.call("search", {"query": "Kestrel port", "limit": 3})
    assert not found.is_error
    assert found.structured_content is not None
    assert found.structured_content["hits"][0]["path"] == "architecture/routing.md"
    answer = served.call("ask", {"question": "Which port does Kestrel listen on?"})
    assert not answer.is_error, answer
