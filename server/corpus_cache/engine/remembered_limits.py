"""The account's rate limits as the API last stated them, kept in the state folder.

Shards are sized, and staged builds sliced, by the input-token limit known when a folder
is first planned (docs/caching.md, "How large a shard is"). Without `--tier` the engine
learns it before that plan from one small request (`ApiCaller.learn_limits`); this file
keeps what every response's `anthropic-ratelimit-*` headers said since, so that a restart
plans with them at once and sends nothing to learn them again. A record older than
MAX_AGE_SECONDS is not used (an organisation moves up a tier as it spends), and then the
engine asks again.

One JSON file per state folder, a record per account: the backend's kind and address, a
digest of its API key (never the key) and the model, hashed together. A record may say
that the API stated no limits (an emulator without them, a proxy that drops the headers):
that is remembered too, so that such a backend is not asked at every start.

Not in the ledger: the ledger records what was billed; this is a cache of what the API
said, rewritten now and then and thrown away freely. A wrong record costs at most a 429,
whose headers correct it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corpus_cache.api.ratelimits import KINDS, Bucket, Kind, RateLimits

log = logging.getLogger(__name__)

FILE_NAME = "rate-limits.json"
MAX_AGE_SECONDS = 24 * 3600.0  # after a day the engine asks the API again
SAVE_EVERY_SECONDS = 600.0  # the same figures are written again at most this often


@dataclass(frozen=True)
class Remembered:
    """What an earlier run learned: the buckets as last seen (none: the API stated no
    limits), and when."""

    limits: RateLimits
    seen: float


def account_key(backend: str, api_key: str | None, model_id: str) -> str:
    """The record's name: one account (backend and key) and model, the key hashed."""
    material = "\n".join((backend, api_key or "", model_id))
    return hashlib.sha256(material.encode()).hexdigest()[:24]


class RememberedLimits:
    def __init__(self, state_dir: Path, key: str) -> None:
        self.path = state_dir / FILE_NAME
        self.key = key
        self._written: tuple[tuple[tuple[str, int], ...], float] | None = None

    def load(self, now: float) -> Remembered | None:
        """The record of this account, if there is one younger than MAX_AGE_SECONDS."""
        record = self._records().get(self.key)
        if not isinstance(record, dict):
            return None
        seen = record.get("seen")
        buckets = record.get("buckets")
        if not isinstance(seen, int | float) or not isinstance(buckets, dict):
            return None
        if now - seen > MAX_AGE_SECONDS:
            return None
        known: dict[Kind, Bucket] = {}
        for kind in KINDS:
            figures = buckets.get(kind)
            if (
                isinstance(figures, list)
                and len(figures) == 3
                and all(isinstance(x, int | float) for x in figures)
                and figures[0] > 0
            ):
                known[kind] = Bucket(int(figures[0]), float(figures[1]), float(figures[2]))
        when = datetime.fromtimestamp(seen, UTC).strftime("%Y-%m-%d %H:%M UTC")
        source = f"the API's rate-limit headers, as remembered from {when}"
        self._written = (_figures(known), float(seen))
        return Remembered(RateLimits(known, source) if known else RateLimits.unknown(), seen)

    def save(self, limits: RateLimits, now: float) -> None:
        """Keep `limits` as the API's latest statement for this account (empty: it stated
        none). The same figures are written again only after SAVE_EVERY_SECONDS, so that a
        busy server does not rewrite the file at every response. A failure is logged:
        it costs at most one small request at the next start."""
        figures = _figures(limits.buckets)
        if self._written is not None:
            same, written = self._written
            if same == figures and now - written < SAVE_EVERY_SECONDS:
                return
        records = self._records()
        records[self.key] = {
            "seen": now,
            "buckets": {k: [b.per_minute, b.level, b.seen] for k, b in limits.buckets.items()},
        }
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(records), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("cannot keep the rate limits in %s: %s", self.path, exc)
            return
        self._written = (figures, now)

    def _records(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s): the rate limits will be asked again",
                        self.path, exc)  # fmt: skip
            return {}
        return raw if isinstance(raw, dict) else {}


def _figures(buckets: Any) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((str(k), int(b.per_minute)) for k, b in buckets.items()))
