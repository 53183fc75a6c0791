"""Secrets that look real, prose that only mentions them, for the secret rules' tests."""

from __future__ import annotations

import hashlib
import string
from collections.abc import Callable

from hypothesis import strategies as st

ALNUM = string.ascii_letters + string.digits
BASE64 = ALNUM + "+/"
BASE64URL = ALNUM + "-_"
BASE32 = string.ascii_uppercase + "234567"


def noise(seed: int, alphabet: str, size: int, salt: str = "") -> str:
    """`size` characters of `alphabet` that look random whatever the seed: a stand-in for a
    real key, which is random too."""
    out: list[str] = []
    block = 0
    while len(out) < size:
        digest = hashlib.sha256(f"{salt}/{seed}/{block}".encode()).digest()
        out.extend(alphabet[byte % len(alphabet)] for byte in digest)
        block += 1
    return "".join(out[:size])


def pem(seed: int) -> str:
    kind = ["RSA ", "EC ", "DSA ", "OPENSSH ", "ENCRYPTED ", ""][seed % 6]
    body = "\n".join(noise(seed, BASE64, 64, f"pem{line}") for line in range(4))
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"


def pgp(seed: int) -> str:
    body = "\n".join(noise(seed, BASE64, 64, f"pgp{line}") for line in range(3))
    return (
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n"
        f"{body}\n-----END PGP PRIVATE KEY BLOCK-----"
    )


def service_account(seed: int) -> str:
    body = "\\n".join(noise(seed, BASE64, 64, f"gcp{line}") for line in range(3))
    return (
        '{\n  "type": "service_account",\n  "project_id": "acme-prod",\n'
        f'  "private_key": "-----BEGIN PRIVATE KEY-----\\n{body}\\n-----END PRIVATE KEY-----\\n",\n'
        '  "client_email": "robot@acme-prod.iam.gserviceaccount.com"\n}'
    )


# Real-looking secrets of each rule, made from a seed.
SHAPES: dict[str, list[Callable[[int], str]]] = {
    "private-key": [pem, pgp],
    "aws-access-key-id": [
        lambda s: "AKIA" + noise(s, BASE32, 16),
        lambda s: "ASIA" + noise(s, BASE32, 16),
    ],
    "aws-secret-access-key": [
        lambda s: "aws_secret_access_key = " + noise(s, BASE64, 40),
        lambda s: "export AWS_SECRET_ACCESS_KEY=" + noise(s, BASE64, 40),
        lambda s: '"SecretAccessKey": "' + noise(s, BASE64, 40) + '"',
    ],
    "gcp-service-account": [service_account],
    "azure-storage-key": [
        lambda s: (
            "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey="
            + noise(s, BASE64, 86)
            + "==;EndpointSuffix=core.windows.net"
        ),
        lambda s: (
            "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=root;"
            "SharedAccessKey=" + noise(s, BASE64, 43) + "="
        ),
    ],
    "github-token": [
        lambda s: "ghp_" + noise(s, ALNUM, 36),
        lambda s: "gho_" + noise(s, ALNUM, 36),
        lambda s: "ghs_" + noise(s, ALNUM, 36),
        lambda s: "ghu_" + noise(s, ALNUM, 36),
        lambda s: f"github_pat_{noise(s, ALNUM, 22)}_{noise(s, ALNUM, 59, 'b')}",
    ],
    "slack-token": [
        lambda s: (
            f"xoxb-{noise(s, string.digits, 12)}-{noise(s, string.digits, 13, 'b')}-"
            + noise(s, ALNUM, 24, "c")
        ),
        lambda s: (
            f"xoxp-{noise(s, string.digits, 12)}-{noise(s, string.digits, 12, 'b')}-"
            f"{noise(s, string.digits, 13, 'c')}-{noise(s, string.hexdigits[:16], 32, 'd')}"
        ),
    ],
    "anthropic-api-key": [lambda s: "sk-ant-api03-" + noise(s, BASE64URL, 93) + "AA"],
    "openai-api-key": [
        lambda s: "sk-proj-" + noise(s, BASE64URL, 156),
        lambda s: f"sk-{noise(s, ALNUM, 20)}T3BlbkFJ{noise(s, ALNUM, 20, 'b')}",
    ],
    "stripe-live-key": [
        lambda s: "sk_live_" + noise(s, ALNUM, 99),
        lambda s: "rk_live_" + noise(s, ALNUM, 24),
    ],
    "google-api-key": [lambda s: "AIza" + noise(s, BASE64URL, 35)],
}

# Prose about secrets, placeholders and published examples: none of it is a secret.
MENTIONS = [
    "set AWS_SECRET_ACCESS_KEY in your environment",
    "export AWS_SECRET_ACCESS_KEY=$SECRET",
    "aws_secret_access_key = <your secret key>",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AKIAXXXXXXXXXXXXXXXX",
    "AKIAIOSFODNN7EXAMPLE",
    "AKIA0000000000000000",
    "sk-ant-...",
    "sk-ant-api03-XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "sk-...",
    "sk-proj-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "sk-your-openai-api-key-goes-here-in-this-field",
    "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "ghp_...",
    "github_pat_...",
    "xoxb-your-token",
    "xoxb-000000000000-0000000000000-xxxxxxxxxxxxxxxxxxxxxxxx",
    "sk_live_...",
    "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx",
    "AIza...",
    "AccountKey=<your-account-key>",
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
    "KBHBeksoGMGw==",  # Azurite's published development key
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----END RSA PRIVATE KEY-----",
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg...\n-----END PRIVATE KEY-----",
    '"type": "service_account"',
    '"private_key": "-----BEGIN PRIVATE KEY-----\\n...\\n-----END PRIVATE KEY-----\\n"',
    "a private key",
    "the API key",
    "rotate the secret access key every 90 days",
]

SEPARATORS = [" ", "\n", ", ", ". ", ": ", " = ", "=", '"', "'", " (", ") ", "\n\n"]

rules = st.sampled_from(sorted(SHAPES))
words = st.text(ALNUM, min_size=1, max_size=12) | st.sampled_from(MENTIONS)


@st.composite
def prose(draw: st.DrawFn, max_words: int = 30) -> str:
    parts: list[str] = []
    for word in draw(st.lists(words, max_size=max_words)):
        parts += [word, draw(st.sampled_from(SEPARATORS))]
    return "".join(parts)


# --- the detector, by example ---------------------------------------------------------
