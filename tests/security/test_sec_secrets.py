"""Issue 15, class 7: secrets by name and by content.

A secret file's copies and variants (`.env~`, `.env-prod`, `id_rsa.bak`, `.ssh-old/`) are
as secret as the file, and a private key or token is as secret quoted, commented out,
split into string pieces, joined with `<br>` or rewrapped at any width as it is bare. The
prose-and-placeholder guarantee of tests/test_secret_content.py holds for the disguised
forms too."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.corpus.names import shown
from corpus_cache.corpus.scan import is_secret, scan
from corpus_cache.corpus.secret_content import find_secrets
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.mcp_session import serving
from support.secret_samples import ALNUM, BASE32, BASE64, BASE64URL, MENTIONS, noise, pem, prose

# --- by name ---------------------------------------------------------------------------

VARIANTS = [
    # the four
    ".env~", ".env-prod", ".env_local", ".envs",
    # backups and editors' copies of .env
    ".env.bak", ".env.orig", ".env.old", ".env.swp", ".env.save", "#.env#", ".#.env",
    ".env (1)", ".env copy", ".env.production.local", ".environment", ".env2",
    # the same for every other kind of secret name
    "id_rsa.bak", ".id_rsa.swp", "id_ed25519~", "server.pem.orig", "server.pem~",
    "server.pem-old", "tls.key.bak", "vault.kdbx.old", "cert.p12~", "signing.asc.bak",
    ".netrc.bak", ".netrc-old", ".pgpass~", ".npmrc_backup", ".pypirc.orig",
    ".htpasswd.old", ".git-credentials.bak", "credentials~", "credentials-prod",
    "credentials_local", "credentials (2)", "~$credentials.json", "secrets_prod.yaml",
    "secrets-staging.json", "secrets.yaml.bak", "app.secret~", "terraform.tfstate.backup",
    "gcp-credentials.json.bak", "service-account-prod.json~", ".envrc.old",
    # files that hold secrets by their kind: Terraform variables, tokens, wallets
    "prod.tfvars", "secrets.auto.tfvars.json", ".vault-token", "kubeconfig",
    "staging.kubeconfig", "kubeconfig.bak", "wallet.dat",
    # look-alikes of variants: case, full width, invisible characters
    ".ENV-PROD", "．env～", ".e\u200bnv.bak", "ID_RSA.OLD", "Server.PEM.Bak",
]  # fmt: skip

FOLDER_VARIANTS = [
    ".ssh-old/id_rsa.md",
    ".ssh.bak/config.md",
    ".aws~/credentials.md",
    ".gnupg_old/notes.md",
    "team/.kube/config.bak",
    "team/.kube/config",
    "home/.docker/config.json",
    ".docker.bak/config.json",
    "deploy/.kube-old/config",
]

ORDINARY = [
    "README.md",
    "environment.md",
    "env.md",
    "notes/env-setup.md",
    "keys.md",
    "ssh-guide.md",
    "pem-format.md",
    "keynote-summary.md",
    "docker/config.json",
    "kube/config.md",
    "secretary.md",
    "identity.md",
    "credential-rotation-policy.md",
    "config.json",
]


@pytest.mark.parametrize("name", VARIANTS)
def test_a_variant_or_backup_of_a_secret_file_is_secret_by_name(name: str) -> None:
    assert is_secret(name)
    assert is_secret(f"deep/down/{name}")


@pytest.mark.parametrize("path", FOLDER_VARIANTS)
def test_a_variant_of_a_secret_folder_or_pair_is_secret_at_any_depth(path: str) -> None:
    assert is_secret(path)


@pytest.mark.parametrize("path", ORDINARY)
def test_names_that_only_resemble_a_secret_are_not_secret(path: str) -> None:
    assert not is_secret(path)


def test_the_scan_leaves_out_every_variant_and_still_serves_ordinary_files(
    tmp_path: Path,
) -> None:
    secret_text = "PASSWORD=hunter2-in-a-variant\n"
    for name in VARIANTS:
        (tmp_path / name).write_text(secret_text)
    for rel in FOLDER_VARIANTS:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(secret_text)
    for rel in ORDINARY:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("# Notes\n\nNothing secret here.\n")
    result = scan(tmp_path)
    assert not [d.path for d in result.documents if "hunter2" in d.text]
    assert {d.path for d in result.documents} == set(ORDINARY)
    reasons = {s.path: s.reason for s in result.skipped}
    for name in VARIANTS:
        assert reasons.get(shown(name)) == "secret file (never sent by default)", name


# --- by content ------------------------------------------------------------------------

KEY = pem(21)
HEADER, *BODY_LINES, FOOTER = KEY.split("\n")
BODY = "".join(BODY_LINES)


def rewrapped(width: int) -> list[str]:
    return [HEADER, *textwrap.wrap(BODY, width), FOOTER]


def each_line(prefix: str, lines: list[str] | None = None, suffix: str = "") -> str:
    return "\n".join(f"{prefix}{line}{suffix}" for line in (lines or KEY.split("\n")))


# Each disguise gives the text around a key and the line the key begins on.
DISGUISES: dict[str, Callable[[], str]] = {
    "quoted reply": lambda: each_line("> "),
    "quoted twice": lambda: each_line("> > "),
    "quoted without a space": lambda: each_line(">"),
    "shell comment": lambda: each_line("# "),
    "C++ comment": lambda: each_line("// "),
    "SQL comment": lambda: each_line("-- "),
    "Lisp or ini comment": lambda: each_line("; "),
    "TeX comment": lambda: each_line("% "),
    "block comment": lambda: "/*\n" + each_line(" * ") + "\n */",
    "HTML comment per line": lambda: each_line("<!-- ", suffix=" -->"),
    "diff, added": lambda: each_line("+"),
    "diff, removed": lambda: each_line("-"),
    "Markdown table cell": lambda: each_line("| ", suffix=" |"),
    "Markdown hard breaks": lambda: each_line("", suffix="  "),
    "joined with <br>": lambda: "<br>".join(KEY.split("\n")),
    "joined with <br />": lambda: "<p>" + "<br />".join(KEY.split("\n")) + "</p>",
    "one paragraph a line": lambda: "".join(f"<p>{line}</p>" for line in KEY.split("\n")),
    "escaped <br> in a page": lambda: "&lt;br&gt;".join(KEY.split("\n")),
    "rewrapped at 32": lambda: "\n".join(rewrapped(32)),
    "rewrapped at 16": lambda: "\n".join(rewrapped(16)),
    "rewrapped at 20": lambda: "\n".join(rewrapped(20)),
    "rewrapped at 48": lambda: "\n".join(rewrapped(48)),
    "rewrapped at 76": lambda: "\n".join(rewrapped(76)),
    "rewrapped at 32 and quoted": lambda: each_line("> ", rewrapped(32)),
    "rewrapped at 32 and commented": lambda: each_line("# ", rewrapped(32)),
    "rewrapped at 32 with <br>": lambda: "<br>".join(rewrapped(32)),
    "header split into string pieces": lambda: (
        f'key = "-----BEGIN " + "RSA PRIVATE KEY-----\\n" + "{BODY}"'
    ),
    "Python adjacent literals": lambda: (
        "KEY = (\n" + "\n".join(f'    "{line}\\n"' for line in rewrapped(32)) + "\n)"
    ),
    "JavaScript concatenation": lambda: (
        "const KEY =\n" + " +\n".join(f"  '{line}\\n'" for line in rewrapped(32)) + ";"
    ),
    "SQL concatenation": lambda: (
        "SELECT " + " ||\n  ".join(f"'{line}'" for line in rewrapped(32)) + ";"
    ),
    "PHP concatenation": lambda: (
        "$key = " + " .\n  ".join(f'"{line}\\n"' for line in rewrapped(32)) + ";"
    ),
    "an array of lines": lambda: (
        "lines = [\n" + ",\n".join(f'  "{x}"' for x in rewrapped(32)) + "\n]"
    ),
    "JSON with escapes at 32": lambda: '{"key": "' + "\\n".join(rewrapped(32)) + '"}',
    "an environment value with escapes": lambda: "PRIVATE_KEY=" + "\\n".join(rewrapped(32)),
    "a fenced block in a quote": lambda: "> ```\n" + each_line("> ", rewrapped(40)) + "\n> ```",
}  # fmt: skip


@pytest.mark.parametrize("disguise", sorted(DISGUISES))
def test_a_disguised_private_key_is_found_on_the_line_it_begins(disguise: str) -> None:
    before = "# Handover\n\nThe old deploy key, for the record:\n\n"
    text = before + DISGUISES[disguise]() + "\n\nThat is all.\n"
    first = before.count("\n") + 1
    found = find_secrets(text)
    assert [f.line for f in found if f.rule == "private-key"][:1] in ([first], [first + 1]), found
    assert BODY[:40] not in repr(found)


TOKENS: dict[str, tuple[str, str]] = {
    "aws-access-key-id": ("aws-access-key-id", "AKIA" + noise(22, BASE32, 16)),
    "github-token": ("github-token", "ghp_" + noise(22, ALNUM, 36)),
    "anthropic-api-key": ("anthropic-api-key", "sk-ant-api03-" + noise(22, BASE64URL, 93) + "AA"),
    "aws-secret-access-key": (
        "aws-secret-access-key", "aws_secret_access_key = " + noise(22, BASE64, 40)
    ),
}  # fmt: skip

TOKEN_DISGUISES: dict[str, Callable[[str], str]] = {
    "split in two string pieces": lambda s: f'token = "{s[:3]}" + "{s[3:]}"',
    "split in many pieces over lines": lambda s: (
        "token = (\n" + "\n".join(f'    "{s[i : i + 7]}"' for i in range(0, len(s), 7)) + "\n)"
    ),
    "hard-wrapped at 24 after some words": lambda s: "\n".join(
        textwrap.wrap("The credential is " + s, 24, break_long_words=True)
    ),
    "hard-wrapped at 32 and quoted": lambda s: "\n".join(
        "> " + line for line in textwrap.wrap("key: " + s, 32, break_long_words=True)
    ),
    "hard-wrapped at 24 with <br>": lambda s: "<br>".join(
        textwrap.wrap("use " + s, 24, break_long_words=True)
    ),
}


@pytest.mark.parametrize("disguise", sorted(TOKEN_DISGUISES))
@pytest.mark.parametrize("kind", sorted(TOKENS))
def test_a_token_split_or_wrapped_is_found_too(kind: str, disguise: str) -> None:
    rule, secret = TOKENS[kind]
    text = "Notes\n\n" + TOKEN_DISGUISES[disguise](secret) + "\n"
    lines = range(3, text.count("\n") + 1)
    found = find_secrets(text)
    assert any(f.rule == rule and f.line in lines for f in found), found


# --- the guarantee about prose holds for disguised prose --------------------------------

PROSE_DISGUISES: list[Callable[[str], str]] = [
    lambda t: "\n".join("> " + line for line in t.split("\n")),
    lambda t: "\n".join("# " + line for line in t.split("\n")),
    lambda t: "<br>".join(t.split("\n")),
    lambda t: "\n".join(textwrap.wrap(t, 32)),
    lambda t: "\n".join(f'"{line}" +' for line in t.split("\n")),
]


@pytest.mark.parametrize("mention", MENTIONS)
@pytest.mark.parametrize("disguise", range(len(PROSE_DISGUISES)))
def test_placeholders_stay_unflagged_when_quoted_commented_joined_or_wrapped(
    mention: str, disguise: int
) -> None:
    assert find_secrets(PROSE_DISGUISES[disguise](f"Configuration\n\n{mention}\n")) == []


@given(prose(max_words=40), st.sampled_from(range(len(PROSE_DISGUISES))))
def test_disguised_prose_without_a_secret_is_never_flagged(text: str, disguise: int) -> None:
    assert find_secrets(PROSE_DISGUISES[disguise](text)) == []


@given(st.integers(16, 100), st.sampled_from(["", "> ", "# ", "// ", " * "]), st.integers(0, 2**32))
def test_a_private_key_rewrapped_at_any_width_under_any_mark_is_found(
    width: int, mark: str, seed: int
) -> None:
    header, *body, footer = pem(seed).split("\n")
    lines = [header, *textwrap.wrap("".join(body), width), footer]
    text = "Intro\n\n" + "\n".join(mark + line for line in lines) + "\n"
    assert [f.line for f in find_secrets(text) if f.rule == "private-key"] == [3]


# --- through the server -----------------------------------------------------------------


@pytest.mark.anyio
async def test_disguised_keys_and_secret_variants_never_reach_the_api(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "handover.md").write_text("# Handover\n\n" + each_line("> ", rewrapped(32)) + "\n")
    (corpus / "snippet.py").write_text(DISGUISES["Python adjacent literals"]() + "\n")
    (corpus / ".env-prod").write_text("DB_PASSWORD=variant-of-a-dotenv\n")
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        await mcp.call_tool("ask", {"question": "What is in the handover?"})
        listing = await mcp.call_tool("list_documents", {})
    bodies = str([entry.get("body") for entry in emulator.log(bodies=True)])
    assert "Kestrel" in bodies  # the rest of the corpus was sent
    for chunk in [BODY[:32], BODY[32:64], "variant-of-a-dotenv"]:
        assert chunk not in bodies
    skipped = listing.structured_content["skipped"]  # type: ignore[index]
    assert skipped == {"secret content": 2, "secret file": 1}
