"""Generated folder trees, and writing one to disk: names in any script, with dots, spaces,
line breaks and bytes that are not UTF-8; deep nesting; empty, binary, huge-line and
secret-holding files; .gitignore files of random rules; named pipes; and symlinks to
files and folders inside the tree, outside it, to nowhere and to themselves."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hypothesis import strategies as st

OUTSIDE_MARKER = "OUTSIDE-THE-CORPUS-7f3a"  # in every file outside the tree; never served
NAME_MAX_BYTES = 255

Kind = Literal["file", "gitignore", "link", "fifo", "folder"]


@dataclass(frozen=True)
class Entry:
    folders: tuple[str, ...]
    name: str
    kind: Kind
    data: bytes = b""
    target: str = ""  # of a link: a path relative to the link's folder, or an absolute one


# --- names ------------------------------------------------------------------------------

NAMED = [
    "a", "b", "docs", "notes.md", "README", "readme.txt", ".hidden", "...", "..md", "a b c.md",
    " lead.md", "trail .md", "a.MD", "日本語.txt", "🐍.md", "é.md", "e\u0301.md", "ＦＵＬＬ.md",
    "line\nbreak.md", "tab\t.md", "back\\slash.md", "\u202eevil.md", "zero\u200bwidth.md",
    "bad\udcff.md", "\udce9t\udce9.txt", "[abc].md", "!bang.md", "#hash.md", "*", "?",
    ".env", ".ENV", "id_rsa", "secrets.yaml", "x.key", "cert.pem", "credentials", ".ssh",
    "node_modules", ".git", "build", "__pycache__", "image.png", "data.bin", "archive.zip",
    "package-lock.json", "yarn.lock", "paper.pdf", "memo.docx", ".gitignore2", "con", "nul",
    "x" * 200 + ".md",
]  # fmt: skip


def _fits(name: str) -> bool:
    try:
        encoded = os.fsencode(name)  # a surrogate other than an escaped byte cannot be a name
    except UnicodeEncodeError:
        return False
    return name not in ("", ".", "..") and len(encoded) <= NAME_MAX_BYTES


any_character = st.characters(exclude_characters="/\x00")
printable = st.characters(categories=["L", "M", "N", "P", "S", "Zs"], exclude_characters="/\\")
names = st.one_of(
    st.sampled_from(NAMED),
    st.sampled_from(NAMED),
    st.text(any_character, min_size=1, max_size=24),
    st.builds(
        lambda stem, ext: stem + ext,
        st.text(printable, min_size=1, max_size=12),
        st.sampled_from([".md", ".txt", ".rst", ".py", ".json", ".csv", ".pdf", ".png", ""]),
    ),
    st.builds(
        lambda stem, ext: stem + ext,
        st.text(printable, min_size=1, max_size=12),
        st.sampled_from([".md", ".txt", ".rst", ".py", ".json", ".csv", ".pdf", ".png", ""]),
    ),
).filter(_fits)
folder_names = st.one_of(st.sampled_from(["a", "b", "docs", "sub", "deep"]), names)
plain_folders = st.lists(st.sampled_from(["a", "b", "docs", "sub"]), max_size=3).map(tuple)
folders = st.one_of(
    plain_folders,
    plain_folders,
    plain_folders,
    plain_folders,
    plain_folders,
    st.lists(folder_names, max_size=6).map(tuple),
    st.integers(8, 40).map(lambda depth: ("d",) * depth),  # deeper: test_fuzz_trees.py
)

# --- contents ---------------------------------------------------------------------------

WORDS = (
    "kestrel routing shipment deploy freeze rotation pager latency invoice ledger the a of "
    "to and in is on that for with as it by at from"
).split()

prose = st.builds(
    lambda words, width: (
        "\n".join(" ".join(words[i : i + width]) for i in range(0, len(words), width)) + "\n"
    ),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=3_000),
    st.integers(3, 30),
)
SECRETS = [
    "aws_access_key_id = AKIAZ7Q4M2XKP9RTW3LB\n",
    "-----BEGIN RSA PRIVATE KEY-----\n"
    + "MIIEowIBAAKCAQEAq7Bz9vK3xQ2pL8mN4rT6yW1cD5fG7hJ0kL" * 2
    + "\n",
    "token: ghp_a8Kd93LmQx7Zp2Rt5Vw1Yb4Nc6Hj0Fs3Ge9U\n",
    "AKIAIOSFODNN7EXAMPLE is the documented example key\n",
]
long_prose = st.builds(
    lambda words, n: "\n".join(" ".join(words) for _ in range(n)) + "\n",
    st.lists(st.sampled_from(WORDS), min_size=5, max_size=40),
    st.integers(20, 600),
)
contents = st.one_of(
    prose.map(str.encode),
    prose.map(str.encode),
    long_prose.map(str.encode),
    long_prose.map(str.encode),
    st.text().map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=2_000),
    st.sampled_from([b"", b" \n\t\n", b"\x00", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff\x00"]),
    st.builds(lambda n: b"y" * n, st.integers(10_000, 200_000)),  # one huge line
    st.builds(lambda text: b"\xef\xbb\xbf" + text.encode(), prose),
    st.builds(lambda text: text.encode("utf-16", "surrogatepass"), st.text(max_size=200)),
    st.builds(lambda b: b"\xff\xfe\x00\x00" + b, st.binary(max_size=64)),  # UTF-32 mark
    st.builds(lambda text: text.encode("cp1252", "replace"), st.text(max_size=200)),
    st.builds(
        lambda text: text.encode("shift_jis", "replace"), st.text("あいうえおカキクケコ漢字")
    ),
    st.builds(lambda text, secret: (text + secret).encode(), prose, st.sampled_from(SECRETS)),
    st.builds(lambda text: text.encode() + b"\x00" * 3 + b"tail", prose),
)
GITIGNORE_RULES = [
    "*.md", "!keep.md", "!*.md", "docs/", "/a", "a/", "**/b", "b/**", "sub/**/x.txt", "#comment",
    "", "\\#hash.md", "[", "[a-", "**", "*", "!*", "*.txt", "!", "/", "\\", " ", "trail \\ ",
    "é.md", "*.MD", "deep/", "d/d/", "?", "???*", "a b c.md", "node_modules", "!.env", "!id_rsa",
]  # fmt: skip
gitignores = st.one_of(
    st.lists(st.one_of(st.sampled_from(GITIGNORE_RULES), st.text(max_size=12)), max_size=8).map(
        lambda rules: "\n".join(rules).encode("utf-8", "surrogatepass")
    ),
    st.binary(max_size=200),
)

# --- links ------------------------------------------------------------------------------

LINK_TARGETS = [
    "notes.md", "a/notes.md", "../notes.md", "a", "..", ".", "missing.md", "../../outside",
    "../../outside/secret.md", "../../outside/folder", "../../../etc/hostname", "/etc/hostname",
    "@outside", "@outside/secret.md", "@outside/folder", "@relative/secret.md", "@relative",
    "@self", ".env", "a/.env", "id_rsa",
]  # fmt: skip


# --- trees ------------------------------------------------------------------------------


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    kind: Kind = draw(
        st.sampled_from(["file"] * 10 + ["gitignore"] * 2 + ["link"] * 2 + ["fifo", "folder"])
    )
    where = draw(folders)
    if kind == "gitignore":
        return Entry(where, ".gitignore", kind, draw(gitignores))
    if kind == "link":
        return Entry(where, draw(names), kind, target=draw(st.sampled_from(LINK_TARGETS)))
    if kind in ("fifo", "folder"):
        return Entry(where, draw(names), kind)
    return Entry(where, draw(names), kind, draw(contents))


plain_files = st.builds(
    lambda where, n, text: Entry(where, f"doc-{n}.md", "file", text.encode()),
    plain_folders,
    st.integers(0, 99),
    st.one_of(prose, long_prose),
)
# Odd entries, and plain documents enough for layouts of several blocks and shards.
trees = st.builds(
    lambda odd, plain: odd + plain,
    st.lists(entries(), min_size=1, max_size=14),
    st.lists(plain_files, max_size=12),
)


@dataclass(frozen=True)
class Written:
    root: Path
    outside: Path


def write_tree(scratch: Path, tree: list[Entry]) -> Written:
    """The tree under `scratch/corpus`, with `scratch/outside` holding marked files that
    links point at. Entries that collide with what is there already are not made."""
    root, outside = scratch / "corpus", scratch / "outside"
    (outside / "folder").mkdir(parents=True, exist_ok=True)
    for path in (outside / "secret.md", outside / "folder" / "inside.md"):
        path.write_text(f"{OUTSIDE_MARKER}: this file is outside the corpus.\n")
    root.mkdir(exist_ok=True)
    assert not any(root.iterdir()), "the tree is written into an empty folder"
    for entry in tree:
        folder = root.joinpath(*entry.folders)
        real, real_scratch = os.path.realpath(folder), os.path.realpath(scratch)
        if os.path.commonpath([real, real_scratch]) != real_scratch:
            continue  # through a link made earlier: never write outside the scratch folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / entry.name
            if os.path.lexists(path):
                continue
            if entry.kind in ("file", "gitignore"):
                path.write_bytes(entry.data)
            elif entry.kind == "folder":
                path.mkdir()
            elif entry.kind == "fifo":
                os.mkfifo(path)
            else:
                os.symlink(_link_target(entry, path, outside), path)
        except OSError:  # a file where a folder was wanted, a name the system refuses
            continue
    return Written(root, outside)


def _link_target(entry: Entry, path: Path, outside: Path) -> str:
    if entry.target == "@self":
        return path.name
    if entry.target.startswith("@outside"):
        return str(outside) + entry.target.removeprefix("@outside")
    if entry.target.startswith("@relative"):
        return os.path.relpath(outside, path.parent) + entry.target.removeprefix("@relative")
    return entry.target


def empty(folder: Path) -> None:
    """Remove everything in `folder`, keeping the folder itself."""
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
