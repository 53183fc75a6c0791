"""The prompt cache: entries written at breakpoints, read through a 20-position lookback.

(20 is the model table's `cache_lookback`; /_emulator/models can set another for a test.)

Rules (shared/reference/anthropic-caching.md):
- an entry is written only at a breakpoint, keyed by the hash of the prompt up to it;
- for each breakpoint the cache checks at most 20 positions walking backwards (the
  breakpoint included) for an entry an earlier request wrote; the longest hit wins;
- a breakpoint whose prefix is below the model's minimum is neither read nor written;
- an entry lives for its TTL from the start of the request that wrote or last hit it;
- an entry is readable only once the response that writes it has begun.

Every breakpoint lookup that finds an entry refreshes that entry's TTL (a "hit" in the
documentation's words), not only the longest one. The refresh keeps the entry's own TTL:
a 5-minute entry read by a 1-hour breakpoint stays a 5-minute entry.

Under a time scale F (docs/emulator.md, "Time scale") an entry lives its TTL divided by F
on the emulator's clock, as the buckets refill F times as fast: a time-scaled run sees
lapses when a real account would, in the API's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .positions import TTL_SECONDS, Prompt, Ttl


@dataclass
class Entry:
    tokens: int
    ttl: Ttl
    expires_at: float
    readable: bool
    writers: int = 1  # requests in flight that write this entry


@dataclass(frozen=True)
class CacheOutcome:
    """What one request reads and writes, and how it is billed."""

    read_tokens: int
    creation_5m_tokens: int
    creation_1h_tokens: int
    input_tokens: int
    hit_position: int | None
    written_positions: tuple[int, ...]
    pending_keys: tuple[str, ...] = field(default=())

    @property
    def creation_tokens(self) -> int:
        return self.creation_5m_tokens + self.creation_1h_tokens


class PromptCache:
    """All entries of one emulator, isolated by workspace (API key)."""

    def __init__(self, time_scale: float = 1.0) -> None:
        self._entries: dict[tuple[str, str], Entry] = {}
        self.time_scale = time_scale  # entries live TTL / time_scale on the emulator's clock

    def lifetime(self, ttl: Ttl) -> float:
        """Seconds of the emulator's clock that an entry of `ttl` lives after a write or hit."""
        return TTL_SECONDS[ttl] / self.time_scale

    def __len__(self) -> int:
        return len(self._entries)

    def reset(self) -> None:
        self._entries.clear()

    def purge(self, now: float) -> None:
        expired = [key for key, entry in self._entries.items() if entry.expires_at <= now]
        for key in expired:
            del self._entries[key]

    def _alive(self, workspace: str, prefix_hash: str, now: float) -> Entry | None:
        entry = self._entries.get((workspace, prefix_hash))
        if entry is None or not entry.readable or entry.expires_at <= now:
            return None
        return entry

    def _hits(self, workspace: str, prompt: Prompt, now: float) -> dict[int, Entry]:
        """The entry each eligible breakpoint's lookback finds, by position."""
        positions = prompt.positions
        minimum = prompt.model.min_cacheable_tokens
        lookback = prompt.model.cache_lookback
        hits: dict[int, Entry] = {}
        for b in prompt.breakpoints:
            if positions[b].cumulative_tokens < minimum:
                continue
            for p in range(b, max(-1, b - lookback), -1):
                if positions[p].cumulative_tokens < minimum:
                    break
                entry = self._alive(workspace, positions[p].prefix_hash, now)
                if entry is not None:
                    hits[p] = entry
                    break
        return hits

    def readable_tokens(self, workspace: str, prompt: Prompt, now: float) -> int:
        """What this request would read, changing nothing (for rate limits)."""
        hits = self._hits(workspace, prompt, now)
        return prompt.positions[max(hits)].cumulative_tokens if hits else 0

    def account(self, workspace: str, prompt: Prompt, now: float) -> CacheOutcome:
        """Look up and (pending) write this request's entries; return its billing."""
        positions = prompt.positions
        minimum = prompt.model.min_cacheable_tokens
        eligible = [b for b in prompt.breakpoints if positions[b].cumulative_tokens >= minimum]

        hits = self._hits(workspace, prompt, now)
        for entry in hits.values():
            entry.expires_at = max(entry.expires_at, now + self.lifetime(entry.ttl))

        hit = max(hits) if hits else None
        read = positions[hit].cumulative_tokens if hit is not None else 0
        writes = [b for b in eligible if hit is None or b > hit]
        pending: list[str] = []
        for b in writes:
            ttl = prompt.ttl_at(b)
            key = (workspace, positions[b].prefix_hash)
            existing = self._entries.get(key)
            if existing is not None and not existing.readable and existing.expires_at > now:
                # A concurrent writer's entry stays pending until one of the responses begins.
                existing.writers += 1
            else:
                self._entries[key] = Entry(
                    tokens=positions[b].cumulative_tokens,
                    ttl=ttl,
                    expires_at=now + self.lifetime(ttl),
                    readable=False,
                )
            pending.append(positions[b].prefix_hash)

        last_1h = max((b for b in writes if prompt.ttl_at(b) == "1h"), default=None)
        start = read
        creation_1h = positions[last_1h].cumulative_tokens - start if last_1h is not None else 0
        after_1h = positions[last_1h].cumulative_tokens if last_1h is not None else start
        creation_5m = positions[writes[-1]].cumulative_tokens - after_1h if writes else 0
        return CacheOutcome(
            read_tokens=read,
            creation_5m_tokens=creation_5m,
            creation_1h_tokens=creation_1h,
            input_tokens=prompt.total_tokens - read - creation_1h - creation_5m,
            hit_position=hit,
            written_positions=tuple(writes),
            pending_keys=tuple(pending),
        )

    def begin(self, workspace: str, outcome: CacheOutcome) -> None:
        """The response that writes these entries has begun: make them readable."""
        for prefix_hash in outcome.pending_keys:
            entry = self._entries.get((workspace, prefix_hash))
            if entry is not None:
                entry.readable = True

    def abandon(self, workspace: str, outcome: CacheOutcome) -> None:
        """The writing request failed before its response began: nothing was cached."""
        for prefix_hash in outcome.pending_keys:
            entry = self._entries.get((workspace, prefix_hash))
            if entry is not None and not entry.readable:
                entry.writers -= 1
                if entry.writers <= 0:
                    del self._entries[(workspace, prefix_hash)]

    def state(self, workspace: str, now: float) -> list[dict[str, object]]:
        """Live entries of a workspace, for the control endpoint and tests."""
        return [
            {
                "prefix_hash": key[1],
                "tokens": entry.tokens,
                "ttl": entry.ttl,
                "expires_in": round(entry.expires_at - now, 3),
                "readable": entry.readable,
                "writers": 0 if entry.readable else entry.writers,  # requests not yet begun
            }
            for key, entry in sorted(self._entries.items(), key=lambda kv: kv[1].tokens)
            if key[0] == workspace and entry.expires_at > now
        ]
