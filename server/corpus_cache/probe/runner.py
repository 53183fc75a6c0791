"""`corpus-cache probe`: sends the checks of probe/checks.py through the one caller.

Every request is a `max_tokens: 0` request of kind "probe", sent by `ApiCaller.warm`, so
that each attempt is a ledger row like any other (corpus "probe"); counting is free. What
a step costs is priced before it starts, and no request is sent that could take the
spend over --max-usd. Against the emulator, the multipliers are read from what its log
says each request was billed, and the timed checks (--wait) move its virtual clock; the
real API states no price per request, so there they are skipped.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import anyio
import httpx2

from corpus_cache.accounting.ledger import Ledger
from corpus_cache.api.backend import OFFLINE_EMULATOR, Backend, api_client, open_backend
from corpus_cache.api.caller import ApiCaller, Sent
from corpus_cache.api.prepared import PreparedRequest
from corpus_cache.api.spending import DailyCap
from corpus_cache.config import Settings, answers_offline
from corpus_cache.emulator import start_in_thread
from corpus_cache.errors import ApiCallError
from corpus_cache.models.catalog import ModelSpec, load_catalog
from corpus_cache.models.limits import LimitsTable, load_limits
from corpus_cache.models.pricing import Usage
from corpus_cache.probe import checks
from corpus_cache.probe.checks import Finding, ProbePrompt, Report, Sized

log = logging.getLogger(__name__)

PROBE_CORPUS = "probe"  # the ledger's corpus for the probe's rows
HEAD_MARGIN = 1.05  # a head this much over the minimum is surely cacheable
SEARCH_STEPS = 12  # requests the search for the minimum makes at most (--max-usd first)


class EmulatorControls:
    """The emulator's /_emulator/ endpoints, when the SDK points at an emulator with them."""

    def __init__(self, http: httpx2.AsyncClient) -> None:
        self.http = http

    @classmethod
    async def find(cls, base_url: str, api_key: str) -> EmulatorControls | None:
        if httpx2.URL(base_url).host not in ("127.0.0.1", "localhost", "::1"):
            return None  # the controls are the emulator's, on loopback only
        # An emulator started with a key wants it on every route, its controls included.
        http = httpx2.AsyncClient(base_url=base_url, timeout=10, headers={"x-api-key": api_key})
        try:
            response = await http.get("/_emulator/clock")
            if response.status_code == 200 and "now" in response.json():
                return cls(http)
        except (httpx2.HTTPError, ValueError):
            pass
        await http.aclose()
        return None

    async def advance(self, seconds: float) -> None:
        (await self.http.post("/_emulator/clock", json={"advance": seconds})).raise_for_status()

    async def billed_usd(self, message_id: str) -> float | None:
        response = await self.http.get("/_emulator/log", params={"limit": "1000"})
        for entry in reversed(response.json().get("requests", [])):
            if entry.get("id") == message_id and "billed" in entry:
                return float(entry["billed"]["usd"])
        return None

    async def close(self) -> None:
        await self.http.aclose()


@dataclass
class _Sent:
    usage: Usage
    usd: float | None  # as billed, where the endpoint says (the emulator)


@dataclass
class Probe:
    caller: ApiCaller
    spec: ModelSpec
    limits_table: LimitsTable
    max_usd: float
    wait: bool
    controls: EmulatorControls | None
    clock: Callable[[], float] = time.time
    spent: float = 0.0
    stopped: str = ""  # why the last request was not sent
    findings: list[Finding] = field(default_factory=list)
    _rate: tuple[float, float] | None = None  # tokens = a + b * sentences
    # What count_tokens reports beyond the tokens billed for the same prompt (the first
    # step measures it): every count is corrected by it, so sizes are in billed tokens.
    drift: int = 0

    # --- counting and sending ---------------------------------------------------------

    async def count(self, prompt: ProbePrompt, upto: int | None = None) -> int:
        return (await self.caller.count_tokens(prompt.content(upto))).tokens - self.drift

    async def sized(self, prompt: ProbePrompt) -> Sized:
        through = {b: await self.count(prompt, b) for b in sorted(prompt.breakpoints)}
        return Sized(prompt, through, await self.count(prompt))

    async def text_of(self, tokens: int) -> tuple[str, int]:
        """A block of filler, counted, of at least `tokens` tokens (a sentence more at most)."""
        salt = secrets.token_hex(6)  # no earlier request's entry holds this prefix

        async def tokens_of(n: int) -> int:
            return await self.count(ProbePrompt((checks.filler(n, salt),), {}))

        if self._rate is None:
            low, high = await tokens_of(10), await tokens_of(40)
            per = max(1.0, (high - low) / 30)
            self._rate = (low - 10 * per, per)
        base, per = self._rate
        n = max(1, math.ceil((tokens - base) / per))
        got = await tokens_of(n)
        while got > tokens + per and n > 1:  # too long by more than a sentence
            n -= max(1, math.floor((got - tokens) / per))
            got = await tokens_of(n)
        while got < tokens:
            n += max(1, math.ceil((tokens - got) / per))
            got = await tokens_of(n)
        return checks.filler(n, salt), got

    def _prepared(self, sized: Sized) -> PreparedRequest:
        worst = checks.worst_usd(sized, self.spec)
        return PreparedRequest(
            kind="probe", shard=0, snapshot=0, params=sized.prompt.params(self.spec.id),
            marked=(), ttls=MappingProxyType({}), identities=MappingProxyType({}),
            alive=frozenset(), corpus_end=None, prepared_at=self.clock(),
            bound=checks.bound_of(sized, self.spec), estimate_usd=worst,
        )  # fmt: skip

    async def send(self, sized: Sized) -> _Sent | None:
        """Send one request unless it could take the spend over --max-usd."""
        worst = checks.worst_usd(sized, self.spec)
        if self.spent + worst > self.max_usd:
            self.stopped = (
                f"stopped: the next request could cost ${worst:.4f}, over --max-usd "
                f"${self.max_usd:.2f} with ${self.spent:.4f} spent"
            )
            return None
        sent: Sent = await self.caller.warm(self._prepared(sized))
        billed = await self.controls.billed_usd(sent.message.id) if self.controls else None
        self.spent += max(sent.cost_usd, billed or 0.0)
        return _Sent(sent.usage, billed)

    def affordable(self, step: str, usd: float, table: str) -> bool:
        """Whether a step priced at `usd` fits in what is left; if not, it is skipped."""
        if self.spent + usd <= self.max_usd:
            return True
        self.findings.append(
            checks.skipped(
                step, table,
                f"priced ${usd:.4f}, over --max-usd ${self.max_usd:.2f} with "
                f"${self.spent:.4f} spent",
            )
        )  # fmt: skip
        return False

    def _usd(self, tokens: float, multiplier: float) -> float:
        price, _ = self.spec.prices_at(int(tokens))
        return tokens * multiplier * price / 1e6

    async def pause(self, seconds: float) -> None:
        if self.controls is not None:
            await self.controls.advance(seconds)
        else:
            log.info("probe: waiting %.0f s of real time (--wait)", seconds)
            await anyio.sleep(seconds)

    # --- the steps --------------------------------------------------------------------

    async def calibrate(self) -> None:
        """count_tokens against the tokens billed for one small uncached prompt: the drift,
        reported, and taken off every count after."""
        prompt = ProbePrompt((checks.filler(40, secrets.token_hex(6)),), {})
        counted = await self.count(prompt)
        sent = await self.send(Sized(prompt, {}, counted))
        if sent is None:
            self.findings.append(checks.skipped("count_tokens drift", "-", self.stopped))
            return
        self.findings.append(checks.drift_finding(counted, sent.usage.prompt_tokens))
        self.drift = counted - sent.usage.prompt_tokens

    async def minimum(self) -> tuple[int | None, _Sent | None]:
        """The search for the minimum cacheable length; the shortest length cached, and
        the first request that wrote a 5-minute entry (for its write multiplier)."""
        table = self.spec.min_cacheable_tokens
        if not self.affordable(
            "minimum", self._usd(table * (1 + checks.BELOW), 1.25), f"{table:,} tokens"
        ):
            return None, None
        tried: list[tuple[int, bool]] = []
        written: _Sent | None = None
        self.stopped = ""
        for _ in range(SEARCH_STEPS):
            not_cached = max((n for n, c in tried if not c), default=None)
            was_cached = min((n for n, c in tried if c), default=None)
            length = checks.next_length(not_cached, was_cached, table)
            if length is None:
                break
            text, tokens = await self.text_of(length)
            if (was_cached is not None and tokens >= was_cached) or (
                not_cached is not None and tokens <= not_cached
            ):
                break  # the bracket is narrower than a sentence
            sent = await self.send(Sized(ProbePrompt((text,), {0: "5m"}), {0: tokens}, tokens))
            if sent is None:
                break
            tried.append((tokens, checks.cached(sent.usage)))
            if written is None and sent.usage.cache_write_5m_tokens:
                written = sent
        self.findings.append(checks.minimum_finding(tried, table, self.stopped))
        return min((n for n, c in tried if c), default=None), written

    async def split(self, head: int) -> tuple[Sized, _Sent | None, _Sent | None]:
        """A 1-hour breakpoint, then a 5-minute one: the write's split, then a read."""
        text, _ = await self.text_of(head)
        prompt = ProbePrompt(
            (text, "The second part, cached for five minutes.", "The uncached end."),
            {0: "1h", 1: "5m"},
        )
        sized = await self.sized(prompt)
        a, b = sized.through[0], sized.through[1]
        table = "1h write, then 5m write, then a read"
        priced = self._usd(a, 2.0) + self._usd(b - a, 1.25) + self._usd(b, 0.1)
        if not self.affordable("1h/5m split", priced, table):
            return sized, None, None
        write = await self.send(sized)
        if write is None:
            self.findings.append(checks.skipped("1h/5m split", table, self.stopped))
            return sized, None, None
        expected = Usage(sized.total - b, 0, b - a, a)
        self.findings.append(
            checks.usage_finding("1h/5m split", write.usage, expected, "the write")
        )
        read = await self.send(sized)
        if read is None:
            self.findings.append(checks.skipped("5m read", table, self.stopped))
            return sized, write, None
        self.findings.append(
            checks.usage_finding("5m read", read.usage, Usage(sized.total - b, b), "the read")
        )
        return sized, write, read

    async def lookback_and_upgrade(self, head: int) -> Sized | None:
        """One head written for 5 minutes; branches of marker blocks after it probe the
        lookback; one more block with a 1-hour breakpoint is the marker upgrade."""
        table_reach = self.spec.cache_lookback
        text, tokens = await self.text_of(head)
        priced = self._usd(tokens, 1.25) * 2 + self._usd(tokens, 0.1) * 2
        if not self.affordable("lookback", priced, f"{table_reach} positions"):
            return None
        written = await self.send(Sized(ProbePrompt((text,), {0: "5m"}), {0: tokens}, tokens))
        if written is None or not checks.cached(written.usage):
            why = self.stopped or "the head was not cached (see minimum)"
            self.findings.append(checks.skipped("lookback", f"{table_reach} positions", why))
            return None
        upgrade = await self.sized(ProbePrompt((text, "Marker upgrade."), {1: "1h"}))
        sent = await self.send(upgrade)
        if sent is None:
            self.findings.append(checks.skipped("marker upgrade", "-", self.stopped))
        else:
            one_block = upgrade.total - tokens
            expected = Usage(0, tokens, 0, one_block)
            self.findings.append(
                checks.usage_finding(
                    "marker upgrade", sent.usage, expected, "a read, and one block at 1h",
                )
            )  # fmt: skip
        hit: int | None = None
        missed: int | None = None
        branch = 0
        self.stopped = ""
        for distance in (table_reach, table_reach - 1):
            if distance < 1:
                continue
            found = await self._reaches(text, tokens, str(branch), distance)
            branch += 1
            if found is None:
                break
            hit, missed = _bracket(hit, missed, distance, found)
        while missed is not None and self.stopped == "":
            distance_ = checks.next_distance(hit or 0, missed)
            if distance_ is None or distance_ <= 0:
                break
            found = await self._reaches(text, tokens, str(branch), distance_)
            branch += 1
            if found is None:
                break
            hit, missed = _bracket(hit, missed, distance_, found)
        self.findings.append(checks.lookback_finding(hit, missed, table_reach, self.stopped))
        return upgrade

    async def _reaches(self, head: str, tokens: int, branch: str, distance: int) -> bool | None:
        """Whether a breakpoint `distance` blocks after the head reads the head's entry."""
        sized = await self.sized(checks.lookback_prompt(head, branch, distance))
        sent = await self.send(sized)
        if sent is None:
            return None
        return checks.close(sent.usage.cache_read_tokens, tokens)

    async def timed(self, split: Sized | None, upgrade: Sized | None) -> None:
        """The checks that need minutes (--wait): a 5-minute entry refreshed by a read, a
        1-hour entry outliving it, and the upgraded entry outliving five minutes."""
        names = ("5m refresh", "1h TTL", "upgrade outlives 5m")
        if not self.wait or split is None or upgrade is None:
            why = (
                "needs --wait (14 minutes)" if not self.wait else "its first requests were not sent"
            )
            for name in names:
                self.findings.append(checks.skipped(name, "-", why))
            return
        a, b = split.through[0], split.through[1]
        uncached = split.total - b
        priced = self._usd(b, 0.1) * 3 + self._usd(b - a, 1.25) + self._usd(upgrade.total, 0.1)
        if not self.affordable(names[0], priced, "-"):
            return
        await self.pause(checks.REFRESH_WAIT)
        first = await self.send(split)
        await self.pause(checks.REFRESH_WAIT)
        second = await self.send(split)
        if first is None or second is None:
            self.findings.append(checks.skipped(names[0], "-", self.stopped))
            return
        self.findings.append(
            checks.usage_finding(
                names[0], second.usage, Usage(uncached, b), "read 8 minutes after the write",
                "a read at 4 minutes refreshed it",
            )
        )  # fmt: skip
        await self.pause(checks.LAPSE_WAIT)
        lapsed = await self.send(split)
        held = await self.send(upgrade)
        if lapsed is not None:
            self.findings.append(
                checks.usage_finding(
                    names[1], lapsed.usage, Usage(uncached, a, b - a),
                    "6 minutes after the last read",
                    "the 5-minute entry lapsed, the 1-hour one held",
                )
            )  # fmt: skip
        if held is not None:
            self.findings.append(
                checks.usage_finding(
                    names[2], held.usage, Usage(0, upgrade.total), "14 minutes after the upgrade",
                )
            )  # fmt: skip

    def multipliers(
        self, five: _Sent | None, split_write: _Sent | None, read: _Sent | None
    ) -> None:
        why = (
            "the API states no price per request (only the emulator's log does); compare "
            "the Console's cost of the probe's requests"
            if self.controls is None
            else "the request that shows it was not sent"
        )
        cases: list[tuple[checks.MultiplierField, _Sent | None]] = [
            ("cache_read_multiplier", read),
            ("cache_write_5m_multiplier", five),
            ("cache_write_1h_multiplier", split_write),
        ]
        for which, sent in cases:
            measured = None
            if sent is not None and sent.usd is not None:
                measured = checks.multiplier_of(sent.usd, sent.usage, self.spec, which)
            self.findings.append(checks.multiplier_finding(which, measured, self.spec, why))

    def limits(self) -> None:
        buckets = self.caller.limits.buckets
        figures = {str(kind): bucket.per_minute for kind, bucket in buckets.items()}
        self.findings.append(checks.tier_finding(figures, self.limits_table, self.spec.id))

    async def run(self) -> None:
        table = self.spec.min_cacheable_tokens
        await self.calibrate()
        shortest, five = await self.minimum()
        head = math.ceil(max(table, shortest or table) * HEAD_MARGIN)
        split, write, read = await self.split(head)
        upgrade = await self.lookback_and_upgrade(head)
        await self.timed(split if write is not None else None, upgrade)
        self.multipliers(five, write, read)
        self.limits()


def _bracket(
    hit: int | None, missed: int | None, distance: int, found: bool
) -> tuple[int | None, int | None]:
    if found:
        return max(hit or 0, distance), missed
    return hit, distance if missed is None else min(missed, distance)


@dataclass(frozen=True)
class ProbeOptions:
    model: str
    max_usd: float = 0.05
    wait: bool = False
    models_file: Path | None = None
    limits_file: Path | None = None


async def run_probe(options: ProbeOptions, ledger_path: Path) -> Report:
    """Run the probe against what the SDK points at (ANTHROPIC_API_KEY and
    ANTHROPIC_BASE_URL), or, with no key, against an emulator of its own."""
    catalog = load_catalog(options.models_file)
    spec = catalog.get(options.model)
    backend = _backend(options)
    ledger = Ledger(ledger_path)
    controls = await EmulatorControls.find(
        str(backend.client.base_url), backend.client.api_key or ""
    )
    # No daily cap: --max-usd bounds the probe, whose rows are a corpus of their own.
    never = Settings.model_construct(max_usd_per_day=None)
    caller = ApiCaller(
        backend, spec, ledger, PROBE_CORPUS, DailyCap(never, lambda _: 0.0, time.time)
    )
    probe = Probe(
        caller, spec, load_limits(options.limits_file), options.max_usd, options.wait, controls
    )
    try:
        await probe.run()
    except ApiCallError as exc:
        probe.findings.append(checks.skipped(checks.STOPPED, "-", str(exc)))
    finally:
        if controls is not None:
            await controls.close()
        await backend.close()
        ledger.close()
    where = str(backend.client.base_url) + (
        " (emulator)" if caller.label == OFFLINE_EMULATOR else ""
    )
    return Report(spec.id, where, options.max_usd, probe.spent, tuple(probe.findings))


def _backend(options: ProbeOptions) -> Backend:
    if not answers_offline(False):
        return open_backend(load_catalog(options.models_file), offline=False, timeout=60.0)
    # No key: an emulator of the shipped table, with its controls (the clock, the bills)
    # and a key only this process knows; it ends with the probe.
    key = secrets.token_urlsafe(32)
    emulator = start_in_thread(catalog=load_catalog(), api_key=key)
    client = api_client(base_url=emulator.base_url, api_key=key, timeout=60.0, max_retries=0)
    return Backend(client, OFFLINE_EMULATOR, emulator)
