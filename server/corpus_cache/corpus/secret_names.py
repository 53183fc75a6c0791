"""Which paths are secret by name: `rules.SECRET_PATTERNS`, their variants and backups. Pure.

A pattern names the secret; people and tools name its copies: `.env~`, `.env.bak`,
`.env-prod`, `.env_local`, `#.env#` (Emacs), `.id_rsa.swp` (Vim), `~$credentials.json`,
`credentials (1)`, `server.pem.orig`, a `.ssh-old/` folder. So each path component is
matched in every form it could be a copy of:

1. folded: Unicode compatibility form, case-folded, invisible format characters (zero-width
   spaces, joiners) removed, so `.ENV`, a full-width `．env` and `.e<ZWSP>nv` are `.env`;
2. undecorated: editors' and file managers' marks around a name removed (`#…#`, `.#`,
   `~$`, `.~lock.…#`, `._`, a trailing `~`, ` (1)`, ` copy`), and a leading dot for
   Vim's `.name.swp`;
3. cut: every prefix that ends before a separator (`-`, `_`, `.`, `~`, `#`, space, `(`,
   `[`, `@`, `+`, `,`) or before trailing digits, so `.env-prod` is also `.env`,
   `secrets_prod.yaml` also `secrets`, `id_rsa.old` also `id_rsa`.

A component is secret if any of its forms matches a pattern (a folder pattern such as
`.ssh/` only for folders; `.docker/config.json` for that pair at any depth). A pattern
`name.*` also covers the bare `name`, so its variants (`secrets-prod.yaml`) are covered
too. This leaves out some documents whose name only starts like a secret's
(`credentials-guide.md`, `secrets-manager.md`): they are listed as left out, and
`--include-secrets` sends them; a secret sent by mistake cannot be taken back.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import unicodedata

from .rules import SECRET_PATTERNS

_SEPARATORS = frozenset("-_.~# ([@+,")
_DECORATION_BEFORE = re.compile(r"^(?:\.~lock\.|~\$|\.#|\._|[#~\s])+")
_DECORATION_AFTER = re.compile(r"(?:[#~\s]|\(\d*\)|\bcopy(?: \d+)?)+$")
_TRAILING_DIGITS = re.compile(r"\d+$")


def _compile(patterns: list[str]) -> re.Pattern[str]:
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _split(
    patterns: tuple[str, ...],
) -> tuple[re.Pattern[str], re.Pattern[str], list[tuple[str, str]]]:
    names: list[str] = []
    folders: list[str] = []
    pairs: list[tuple[str, str]] = []
    for pattern in patterns:
        if pattern.endswith("/"):
            folders.append(pattern.rstrip("/"))
        elif "/" in pattern:
            parent, _, name = pattern.partition("/")
            pairs.append((parent, name))
        else:
            names.append(pattern)
            if pattern.endswith(".*") and "*" not in pattern[:-2]:
                names.append(pattern[:-2])  # secrets.* covers secrets-prod.yaml's stem too
    return _compile(names), _compile(folders), pairs


_NAMES, _FOLDERS, _PAIRS = _split(SECRET_PATTERNS)
_PAIR_PARENTS = _compile([parent for parent, _ in _PAIRS])


def fold(name: str) -> str:
    """`name` as the rules see it: NFKC, case-folded, without invisible format characters."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(c for c in folded if unicodedata.category(c) != "Cf")


@functools.lru_cache(maxsize=1 << 16)
def forms(component: str) -> frozenset[str]:
    """Every name `component` (already folded) could be a copy or variant of, itself included."""
    bases = {component}
    core = _DECORATION_AFTER.sub("", _DECORATION_BEFORE.sub("", component))
    if core:
        bases.add(core)
        if core.startswith(".") and len(core) > 1:
            bases.add(core[1:])  # Vim's swap file for `id_rsa` is `.id_rsa.swp`
    out: set[str] = set()
    for base in bases:
        out.add(base)
        out.update(base[:i] for i in range(1, len(base)) if base[i] in _SEPARATORS)
        stripped = _TRAILING_DIGITS.sub("", base)
        if stripped:
            out.add(stripped)
    return frozenset(out)


@functools.lru_cache(maxsize=1 << 16)
def is_secret(rel_path: str) -> bool:
    """Whether `rel_path` (folders end with `/`) is, or lies in, something secret by name.

    Cached: a watched folder is rescanned after every save, and its paths barely change."""
    is_folder = rel_path.endswith("/")
    parts = [fold(part) for part in rel_path.strip("/").split("/") if part]
    for index, part in enumerate(parts):
        names = forms(part)
        folder = is_folder or index < len(parts) - 1
        if any(_NAMES.match(name) or (folder and _FOLDERS.match(name)) for name in names):
            return True
        if index > 0 and _pair_matches(forms(parts[index - 1]), names):
            return True
    return False


def _pair_matches(parents: frozenset[str], names: frozenset[str]) -> bool:
    if not any(_PAIR_PARENTS.match(parent) for parent in parents):
        return False
    return any(
        fnmatch.fnmatchcase(parent, p) and fnmatch.fnmatchcase(name, n)
        for p, n in _PAIRS
        for parent in parents
        for name in names
    )
