"""What the corpus scan includes, in what order, and what it leaves out and why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corpus_cache.corpus.scan import ScanOptions, scan
from corpus_cache.errors import CorpusNotFoundError


def write(root: Path, rel: str, content: str | bytes = "Some text.\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def reasons(root: Path, **options: int) -> dict[str, str]:
    return {s.path: s.reason for s in scan(root, ScanOptions(**options)).skipped}


def paths(root: Path) -> list[str]:
    return [d.path for d in scan(root).documents]


def test_documents_come_in_a_deterministic_path_order(tmp_path: Path) -> None:
    for rel in ["b.md", "a/z.rst", "a/b.txt", "C.md", "src/main.py"]:
        write(tmp_path, rel)
    assert paths(tmp_path) == ["C.md", "a/b.txt", "a/z.rst", "b.md", "src/main.py"]


def test_each_document_has_its_hash_size_and_lines(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "one\ntwo\nthree\n")
    (doc,) = scan(tmp_path).documents
    assert doc.size == 14
    assert len(doc.sha256) == 64
    assert doc.line_count == 3
    assert doc.lines(2, 3) == "two\nthree\n"
    assert doc.line_of(doc.text.index("three")) == 3


def test_gitignore_is_honoured_at_every_level(tmp_path: Path) -> None:
    write(tmp_path, ".gitignore", "*.log\ndrafts/\n!keep.log\n")
    write(tmp_path, "notes.md")
    write(tmp_path, "debug.log")
    write(tmp_path, "keep.log")
    write(tmp_path, "drafts/idea.md")
    write(tmp_path, "sub/.gitignore", "private.md\n")
    write(tmp_path, "sub/private.md")
    write(tmp_path, "sub/public.md")
    write(tmp_path, "private.md")  # the nested rule does not reach up
    assert paths(tmp_path) == ["keep.log", "notes.md", "private.md", "sub/public.md"]
    skipped = reasons(tmp_path)
    assert skipped["debug.log"] == "ignored by .gitignore"
    assert skipped["drafts/"] == "ignored by .gitignore"
    assert skipped["sub/private.md"] == "ignored by .gitignore"


@pytest.mark.parametrize(
    "secret",
    [
        ".env", ".env.production", "config/.env.local", "certs/server.pem", "tls.key",
        "id_rsa", "id_ed25519.pub", ".netrc", "aws/credentials", "gcp/service-account-prod.json",
        "secrets.yaml", ".ssh/config", ".npmrc",
    ],
)  # fmt: skip
def test_secret_files_are_never_included(tmp_path: Path, secret: str) -> None:
    write(tmp_path, "readme.md")
    write(tmp_path, secret, "TOKEN=hunter2\n")
    assert paths(tmp_path) == ["readme.md"]
    assert any("secret" in reason for reason in reasons(tmp_path).values())


def test_tool_folders_are_pruned(tmp_path: Path) -> None:
    for rel in [".git/HEAD", "node_modules/x/index.js", ".venv/lib/a.py", "build/out.txt",
                "__pycache__/m.pyc", "docs/guide.md"]:  # fmt: skip
        write(tmp_path, rel)
    assert paths(tmp_path) == ["docs/guide.md"]


def test_binary_large_empty_and_lock_files_are_left_out_with_a_reason(tmp_path: Path) -> None:
    write(tmp_path, "doc.md")
    write(tmp_path, "image.png", b"\x89PNG\r\n")
    write(tmp_path, "blob.data", b"abc\x00def")
    write(tmp_path, "huge.md", "x" * 2_000)
    write(tmp_path, "empty.md", "")
    write(tmp_path, "package-lock.json", "{}")
    skipped = reasons(tmp_path, max_file_bytes=1_000)
    assert paths(tmp_path) == ["doc.md", "huge.md"]  # the default limit admits huge.md
    assert skipped == {
        "blob.data": "binary content",
        "empty.md": "empty file",
        "huge.md": "larger than the 1,000-byte limit (2,000 bytes); raise it with "
        "--max-file-bytes or CORPUS_CACHE_MAX_FILE_BYTES",
        "image.png": "binary file type",
        "package-lock.json": "lock file",
    }


def test_a_symlink_to_a_file_outside_the_corpus_is_left_out(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write(corpus, "inside.md")
    outside = write(tmp_path, "outside.md", "private\n")
    os.symlink(outside, corpus / "link.md")
    os.symlink(corpus / "inside.md", corpus / "alias.md")
    assert paths(corpus) == ["alias.md", "inside.md"]
    assert reasons(corpus)["link.md"] == "symlink to a file outside the corpus"


def test_a_symlink_loop_does_not_hang_the_scan(tmp_path: Path) -> None:
    write(tmp_path, "a.md")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    os.symlink(tmp_path, tmp_path / "self")
    assert paths(tmp_path) == ["a.md"]


def test_unchanged_files_are_reused_without_reading(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "alpha\n")
    write(tmp_path, "b.md", "beta\n")
    first = scan(tmp_path)
    write(tmp_path, "b.md", "beta, longer now\n")
    second = scan(tmp_path, previous={d.path: d for d in first.documents})
    assert second.reused == 1
    assert second.documents[0] is first.documents[0]
    assert second.documents[1].text == "beta, longer now\n"


def test_a_missing_corpus_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusNotFoundError, match="corpus folder not found"):
        scan(tmp_path / "nope")
