"""Files whose text holds a private key or a credential are left out of the corpus, said
so, and never sent: the detector (pure, property-tested) and the scan and server around it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.cli.main import build_parser, settings_from_args
from corpus_cache.corpus.scan import ScanOptions, scan
from corpus_cache.corpus.secret_content import describe, find_secrets
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.mcp_session import serving
from support.secret_samples import (
    ALNUM,
    BASE32,
    BASE64,
    MENTIONS,
    SEPARATORS,
    SHAPES,
    noise,
    pem,
    prose,
    rules,
    service_account,
)


@pytest.mark.parametrize(
    ("rule", "secret"),
    [(rule, make(7)) for rule, makers in sorted(SHAPES.items()) for make in makers],
)
def test_each_kind_of_secret_is_found_and_named_without_being_echoed(
    rule: str, secret: str
) -> None:
    text = f"# Setup\n\nUse this:\n\n{secret}\n\nThen restart.\n"
    found = find_secrets(text)
    assert any(f.rule == rule and 5 <= f.line <= 5 + secret.count("\n") for f in found), found
    assert secret not in repr(found)
    assert secret not in describe(found)


@pytest.mark.parametrize("mention", MENTIONS)
def test_prose_and_placeholders_that_mention_secrets_are_not_findings(mention: str) -> None:
    assert find_secrets(f"Configuration\n\n{mention}\n") == []


@pytest.mark.parametrize(
    "near_miss",
    [
        "AKIA" + noise(1, BASE32, 15),  # one character short
        "XAKIA" + noise(1, BASE32, 16),  # inside a longer word
        "ghp_" + noise(1, ALNUM, 35),
        "task-" + noise(1, ALNUM, 48),  # not sk- at the start of a word
        "aws_secret_access_key = " + noise(1, BASE64, 41),  # not 40 characters
        "-----BEGIN PUBLIC KEY-----\n" + noise(1, BASE64, 64) + "\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\n" + noise(1, BASE64, 64) + "\n-----END CERTIFICATE-----",
        "sha256: " + noise(1, "0123456789abcdef", 64),  # a digest is not a credential
    ],
)
def test_near_misses_are_not_findings(near_miss: str) -> None:
    assert find_secrets(near_miss) == []


def test_a_service_account_key_is_named_as_one() -> None:
    found = find_secrets(service_account(3))
    assert {f.rule for f in found} == {"gcp-service-account", "private-key"}
    expected = "a Google Cloud service-account key on line 4, a private key on line 4"
    assert describe(found) == expected


def test_the_reason_names_each_kind_once_at_its_first_line() -> None:
    text = "\n".join(["AKIA" + noise(1, BASE32, 16), "AKIA" + noise(2, BASE32, 16), pem(1)])
    assert describe(find_secrets(text)) == "an AWS access key id on line 1, a private key on line 3"


# --- the detector, as properties --------------------------------------------------------


@given(rules, st.integers(0, 2**32), st.data(), prose(), prose())
def test_a_real_looking_secret_anywhere_in_prose_is_always_found(
    rule: str, seed: int, data: st.DataObject, before: str, after: str
) -> None:
    make = data.draw(st.sampled_from(SHAPES[rule]))
    secret = make(seed)
    opening = data.draw(st.sampled_from(SEPARATORS))
    text = f"{before}{opening}{secret}{data.draw(st.sampled_from(SEPARATORS))}{after}"
    first = text.count("\n", 0, text.index(secret)) + 1
    found = find_secrets(text)
    lines = range(first, first + secret.count("\n") + 1)
    assert any(f.rule == rule and f.line in lines for f in found), (rule, found)
    assert secret not in repr(found)


@given(prose(max_words=60))
def test_prose_without_a_secret_is_never_flagged(text: str) -> None:
    assert find_secrets(text) == []


# --- the scan ----------------------------------------------------------------------------


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_file_holding_a_secret_is_left_out_with_its_reason_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "guide.md", "# Guide\n\nSet AWS_SECRET_ACCESS_KEY in your environment.\n")
    write(tmp_path, "notes/deploy.md", "# Deploy\n\nkey id: AKIA" + noise(9, BASE32, 16) + "\n")
    with caplog.at_level(logging.WARNING, logger="corpus_cache.corpus.scan"):
        result = scan(tmp_path)
    assert [d.path for d in result.documents] == ["guide.md"]
    assert {s.path: s.reason for s in result.skipped} == {
        "notes/deploy.md": "secret content: an AWS access key id on line 3 (never sent by default)"
    }
    (warning,) = caplog.records
    assert warning.levelno == logging.WARNING
    assert "notes/deploy.md" in warning.getMessage()
    assert "--allow-secret-content" in warning.getMessage()
    assert "AKIA" not in warning.getMessage()


def test_the_warning_comes_once_per_version_of_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "keys.md", f"{pem(4)}\n")
    with caplog.at_level(logging.WARNING, logger="corpus_cache.corpus.scan"):
        scan(tmp_path)
        scan(tmp_path)  # the watcher rescans after every save in the folder
        assert len(caplog.records) == 1
        write(tmp_path, "keys.md", f"Rotated:\n\n{pem(5)}\n")
        scan(tmp_path)
    assert len(caplog.records) == 2


def test_allow_secret_content_lets_such_a_file_in(tmp_path: Path) -> None:
    write(tmp_path, "keys.md", f"{pem(4)}\n")
    result = scan(tmp_path, ScanOptions(allow_secret_content=True))
    assert [d.path for d in result.documents] == ["keys.md"]
    args = build_parser().parse_args(["serve", "--corpus", str(tmp_path), "--allow-secret-content"])
    assert settings_from_args(args).allow_secret_content is True


@pytest.mark.anyio
async def test_a_file_holding_a_secret_never_reaches_the_api_and_is_listed_as_left_out(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    secrets = {
        "runbook-keys.md": "# Break-glass\n\n" + SHAPES["github-token"][0](11) + "\n",
        "gcp/deployer.json": service_account(12),
        "ops/slack.md": "Bot: " + SHAPES["slack-token"][0](13) + "\n",
    }
    for rel, text in secrets.items():
        write(corpus, rel, text)
    tokens = [SHAPES["github-token"][0](11), noise(12, BASE64, 64, "gcp0")]
    tokens.append(SHAPES["slack-token"][0](13))
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        await mcp.call_tool("ask", {"question": "What is the break-glass token?"})
        listing = await mcp.call_tool("list_documents", {})
        read = await mcp.call_tool("read_document", {"path": "runbook-keys.md"})
        found = await mcp.call_tool("search", {"query": "break-glass bot service_account"})
        index = await mcp.read_resource("corpus://index")
    bodies = str([entry.get("body") for entry in emulator.log(bodies=True)])
    assert "Kestrel" in bodies  # the rest of the corpus was counted and sent
    for token in tokens:
        assert token not in bodies
    assert listing.structured_content["skipped"] == {"secret content": 3}  # type: ignore[index]
    assert "Left out: 3 secret content." in listing.content[0].text  # type: ignore[union-attr]
    assert read.is_error
    message = read.content[0].text  # type: ignore[union-attr]
    assert message.endswith(
        "runbook-keys.md is not served: secret content: a GitHub token on line 3 "
        "(never sent by default)"
    )
    hits = found.structured_content["hits"]  # type: ignore[index]
    assert not {h["path"] for h in hits} & set(secrets)
    left_out = index.contents[0].text  # type: ignore[union-attr]
    assert all(rel in left_out for rel in secrets)
    assert not any(token in left_out for token in tokens)


@pytest.mark.anyio
async def test_with_allow_secret_content_the_file_is_served(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    write(corpus, "keys.md", f"{pem(4)}\n")
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", allow_secret_content=True
    ) as (mcp, _):
        read = await mcp.call_tool("read_document", {"path": "keys.md"})
    assert not read.is_error
