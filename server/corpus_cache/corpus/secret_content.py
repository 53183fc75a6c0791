"""Secrets found by content: private keys and cloud or API credentials. Pure.

The name rules (`rules.SECRET_PATTERNS`) leave out `.env`, `*.pem` and the like before a
file is read; these rules catch the same secrets pasted into an ordinary document. A file
with a finding is left out of the corpus (unless the user passes --allow-secret-content).

Each rule is a regular expression for the shape of one kind of secret, and a check that
the secret part looks random rather than like a placeholder: documentation that says "set
AWS_SECRET_ACCESS_KEY", or shows `AKIAXXXXXXXXXXXXXXXX`, `sk-ant-...` or AWS's published
`AKIAIOSFODNN7EXAMPLE`, is not a finding. "Looks random" is: no placeholder word, enough
Shannon entropy per character (each rule's floor sits well below what random strings of its
alphabet and length reach: below the lowest of 200,000 samples), and, for shapes that
prose could otherwise fill, a mix of character classes. Findings name the rule and the
line, never the secret itself.

The rules read the raw text and its normalised views (secret_views.py): quote and comment
marks removed, `<br>` and escaped line breaks made lines, string pieces concatenated, and
wrapped tokens joined, so a key is found however it was pasted, on the line it begins.

Why our own rules rather than a published ruleset (measured 2026-12, corpora/handbook):
detect-secrets 1.5 (last release 2024-05) flags `AKIAXXXXXXXXXXXXXXXX`,
`AKIAIOSFODNN7EXAMPLE` and a bare `-----BEGIN RSA PRIVATE KEY-----` line (its checks are per
line, with no randomness test for those shapes), and took 1.8 s where these rules take
2 ms. gitleaks' rules (v8.30, MIT) are written for Go's RE2: 25 of 222 do not compile with
Python's `re`, and the rest, even without its generic-api-key rule, took about 140 ms
(70 times these) with a keyword prefilter. The shapes here follow gitleaks' where it has
one (the private-key header is its `-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY`).

| rule | matches |
|---|---|
| private-key | a PEM, OpenSSH, PGP or other `-----BEGIN … PRIVATE KEY-----` block with a key body |
| aws-access-key-id | `AKIA…`/`ASIA…` and 16 characters |
| aws-secret-access-key | `aws_secret_access_key = <40 characters>` (also `SecretAccessKey`) |
| gcp-service-account | service-account JSON: `"type": "service_account"` and a `private_key` |
| azure-storage-key | a connection string's `AccountKey=` or `SharedAccessKey=` |
| github-token | `ghp_`, `gho_`, `ghs_`, `ghu_`, `ghr_` tokens and `github_pat_` |
| slack-token | `xoxb-`, `xoxp-`, `xoxa-`, `xoxr-`, `xoxs-`, `xoxo-` tokens |
| anthropic-api-key | `sk-ant-…` |
| openai-api-key | `sk-…`, `sk-proj-…` |
| stripe-live-key | `sk_live_…`, `rk_live_…` |
| google-api-key | `AIza…` and 35 characters |
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from .secret_views import views

PLACEHOLDER_WORDS = (
    "example", "xxxxx", "placeholder", "redacted", "changeme", "dummy", "sample",
    "your-", "your_", "-here", "_here",
)  # fmt: skip

# Published keys that are meant to be shared: Azurite's (the Azure Storage emulator's)
# well-known development account key.
PUBLISHED = frozenset(
    {
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
    }
)

_PEM_BODY = r"(?:\s|\\[rn])*(?:[A-Za-z-]+:[^\n\\]*(?:\s|\\[rn])+)*(?P<value>[A-Za-z0-9+/]{40,})"


@dataclass(frozen=True)
class Rule:
    name: str
    what: str  # for the reason a file is left out: "a private key"
    pattern: re.Pattern[str]  # the secret part is the group `value`
    min_entropy: float  # bits per character of `value`
    min_classes: int = 1  # of lower case, upper case and digits in `value`
    requires: re.Pattern[str] | None = None  # must also occur somewhere in the text
    needles: tuple[str, ...] = ()  # the pattern is tried only if one of these occurs
    inside_words: bool = False  # may start within a longer name (MY_AWS_SECRET_ACCESS_KEY)


RULES: tuple[Rule, ...] = (
    Rule(
        "private-key",
        "a private key",
        re.compile(r"-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----" + _PEM_BODY),
        3.0,
    ),
    Rule(
        "aws-access-key-id",
        "an AWS access key id",
        re.compile(r"(?:AKIA|ASIA)(?P<value>[A-Z0-9]{16})\b"),
        2.4,
    ),
    Rule(
        "aws-secret-access-key",
        "an AWS secret access key",
        re.compile(
            r"(?i:secret_?access_?key)[\"']?\s*[:=]\s*[\"']?"
            r"(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
        ),
        3.5,
        min_classes=2,
        needles=("ccess", "CCESS"),
        inside_words=True,
    ),
    Rule(
        "gcp-service-account",
        "a Google Cloud service-account key",
        re.compile(r"\"private_key\"\s*:\s*\"-----BEGIN PRIVATE KEY-----" + _PEM_BODY),
        3.0,
        requires=re.compile(r"\"type\"\s*:\s*\"service_account\""),
    ),
    Rule(
        "azure-storage-key",
        "an Azure storage or service-bus key",
        re.compile(r"(?:Account|SharedAccess)Key=(?P<value>[A-Za-z0-9+/]{40,}={0,2})"),
        3.5,
        min_classes=2,
        needles=("Key=",),
        inside_words=True,
    ),
    Rule(
        "github-token",
        "a GitHub token",
        re.compile(r"gh[pousr]_(?P<value>[A-Za-z0-9]{36})\b"),
        3.2,
        min_classes=2,
    ),
    Rule(
        "github-token",
        "a GitHub token",
        re.compile(r"github_pat_(?P<value>[A-Za-z0-9_]{60,})\b"),
        3.5,
        min_classes=2,
    ),
    Rule(
        "slack-token",
        "a Slack token",
        re.compile(r"xox[abposr]-(?:[0-9]+-)+(?P<value>[A-Za-z0-9]{16,})\b"),
        2.6,
        min_classes=2,
    ),
    Rule(
        "anthropic-api-key",
        "an Anthropic API key",
        re.compile(r"sk-ant-[a-z]+[0-9]*-(?P<value>[A-Za-z0-9_-]{32,})"),
        3.5,
        min_classes=3,
    ),
    Rule(
        "openai-api-key",
        "an OpenAI API key",
        re.compile(r"sk-(?!ant-)(?:proj-|svcacct-|admin-)?(?P<value>[A-Za-z0-9_-]{32,})"),
        3.5,
        min_classes=3,
    ),
    Rule(
        "stripe-live-key",
        "a Stripe live key",
        re.compile(r"[rs]k_live_(?P<value>[A-Za-z0-9]{20,})\b"),
        3.0,
        min_classes=2,
        needles=("_live_",),
    ),
    Rule(
        "google-api-key",
        "a Google API key",
        re.compile(r"AIza(?P<value>[A-Za-z0-9_-]{35})(?![A-Za-z0-9_-])"),
        3.2,
        min_classes=2,
    ),
)


@dataclass(frozen=True)
class Finding:
    rule: str
    what: str
    line: int  # 1-based


def find_secrets(text: str) -> list[Finding]:
    """Every secret-shaped, random-looking match in `text` or in its normalised views (see
    `views`), once per rule and line, in line order; lines are those of `text`."""
    findings: set[Finding] = set()
    for view in views(text):
        for rule in RULES:
            if rule.needles and not any(needle in view.text for needle in rule.needles):
                continue
            if rule.requires is not None and rule.requires.search(view.text) is None:
                continue
            for match in rule.pattern.finditer(view.text):
                if not rule.inside_words and _inside_a_word(view.text, match.start()):
                    continue
                if _looks_random(match.group("value"), rule):
                    findings.add(Finding(rule.name, rule.what, view.line_of(match.start())))
    return sorted(findings, key=lambda f: (f.line, f.rule))


def describe(findings: list[Finding], limit: int = 3) -> str:
    """'a private key on line 3, an AWS access key id on line 9': one entry per kind."""
    first: dict[str, Finding] = {}
    for finding in findings:
        first.setdefault(finding.what, finding)
    shown = [f"{f.what} on line {f.line}" for f in list(first.values())[:limit]]
    if len(first) > limit:
        shown.append(f"{len(first) - limit} more kind(s)")
    return ", ".join(shown)


def _inside_a_word(text: str, start: int) -> bool:
    # Checked here rather than with a leading \b, which would cost the patterns their
    # fast literal prefix.
    return start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_")


def _looks_random(value: str, rule: Rule) -> bool:
    if any(value in published for published in PUBLISHED):
        return False  # a published key, or the part of one a wrap or a split left in view
    lowered = value.lower()
    if any(word in lowered for word in PLACEHOLDER_WORDS):
        return False
    classes = sum(any(test(c) for c in value) for test in (str.islower, str.isupper, str.isdigit))
    return classes >= rule.min_classes and _entropy(value) >= rule.min_entropy


def _entropy(value: str) -> float:
    """Shannon entropy of the characters of `value`, in bits per character."""
    counts = Counter(value)
    size = len(value)
    return -sum(n / size * math.log2(n / size) for n in counts.values())
