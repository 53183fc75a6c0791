"""The emulator's behaviour, independent of HTTP: accounting, answers, diagnostics, models."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from pydantic import ValidationError

from corpus_cache.models.catalog import Catalog, ModelSpec
from corpus_cache.models.limits import LimitsTable, load_limits

from .answer import answer_blocks
from .control import FaultPlan, RequestLog, VirtualClock
from .errors import invalid, not_found
from .latency import Latency, latency_from
from .limit_config import config_from
from .positions import MessagesRequest, Prompt
from .prompt import parse_count_tokens_request, parse_messages_request
from .prompt_cache import CacheOutcome, PromptCache
from .ratelimit import Admission, RateLimiter
from .tokenizer import count_text

_SECTION_ORDER = {"tools": 0, "system": 1, "messages": 2}
# What /_emulator/models may set: how the cache behaves and is billed, not a model's name.
MODEL_SETTINGS = (
    "min_cacheable_tokens",
    "cache_lookback",
    "cache_read_multiplier",
    "cache_write_5m_multiplier",
    "cache_write_1h_multiplier",
    "input_usd_per_mtok",
    "output_usd_per_mtok",
)
# And one the model table has no field for: tokens count_tokens reports beyond what the
# same prompt is billed (the documentation: it "may include a few system-added tokens").
COUNT_DRIFT = "count_tokens_extra"
# Responses whose prompt a later request's diagnostics can be compared with (about 5 KB
# each): a previous_message_id names a recent response; an older one is "not found".
FINGERPRINTS_KEPT = 1_000


@dataclass(frozen=True)
class Fingerprint:
    """What cache diagnostics compare a later request against."""

    model: str
    hashes: tuple[str, ...]
    sections: tuple[str, ...]
    cached_index: int | None
    cached_tokens: int

    @classmethod
    def of(cls, prompt: Prompt) -> Fingerprint:
        minimum = prompt.model.min_cacheable_tokens
        eligible = [
            b for b in prompt.breakpoints if prompt.positions[b].cumulative_tokens >= minimum
        ]
        last = eligible[-1] if eligible else None
        return cls(
            model=prompt.model.id,
            hashes=tuple(p.prefix_hash for p in prompt.positions),
            sections=tuple(p.section for p in prompt.positions),
            cached_index=last,
            cached_tokens=prompt.positions[last].cumulative_tokens if last is not None else 0,
        )


@dataclass(frozen=True)
class Completion:
    """A /v1/messages result before it is written as JSON or as an event stream."""

    message: dict[str, Any]
    outcome: CacheOutcome
    workspace: str
    started: float = 0.0  # on the emulator's clock
    admission: Admission | None = None  # None: no rate limits

    @property
    def uncached_tokens(self) -> int:
        return self.outcome.input_tokens + self.outcome.creation_tokens


def _usage(outcome: CacheOutcome, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": outcome.input_tokens,
        "cache_creation_input_tokens": outcome.creation_tokens,
        "cache_read_input_tokens": outcome.read_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": outcome.creation_5m_tokens,
            "ephemeral_1h_input_tokens": outcome.creation_1h_tokens,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _fit(
    blocks: list[dict[str, Any]], max_tokens: int, model: ModelSpec
) -> tuple[list[dict[str, Any]], int, str]:
    """Cut the answer to max_tokens, as generation would stop there."""
    kept: list[dict[str, Any]] = []
    used = 0
    for block in blocks:
        cost = count_text(block["text"], model.tokenizer)
        if used + cost <= max_tokens:
            kept.append(block)
            used += cost
            continue
        words = block["text"].split(" ")
        partial: list[str] = []
        for word in words:
            trial = " ".join([*partial, word])
            if used + count_text(trial, model.tokenizer) > max_tokens:
                break
            partial.append(word)
        if partial:
            text = " ".join(partial)
            used += count_text(text, model.tokenizer)
            kept.append({"type": "text", "text": text})  # a cut quote is no longer a citation
        return kept, used, "max_tokens"
    return kept, used, "end_turn"


class EmulatorService:
    """`tier` (a tier of the limits table) and `latency` are what the emulator starts with,
    and returns to on reset; without them it has no rate limits and answers at once."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        limits_table: LimitsTable | None = None,
        tier: str | int | None = None,
        latency: Latency | None = None,
        time_scale: float = 1.0,
    ) -> None:
        self.catalog = catalog
        self._table = catalog  # the model table as started; /_emulator/models departs from it
        self._model_settings: dict[str, dict[str, Any]] = {}
        self._count_extra: dict[str, int] = {}
        self.limits_table = limits_table or load_limits()
        self.clock = VirtualClock()
        self.cache = PromptCache(time_scale)
        self.faults = FaultPlan()
        self.log = RequestLog()
        self._ids = itertools.count(1)
        self._fingerprints: OrderedDict[tuple[str, str], Fingerprint] = OrderedDict()
        start = {"tier": tier} if tier is not None else {}
        self._startup = (config_from(self.limits_table, start, catalog), latency, time_scale)
        self.limiter = RateLimiter(self._startup[0], time_scale)
        self.latency = latency

    def reset(self) -> None:
        self.clock.reset()
        self.cache.reset()
        self.cache.time_scale = self._startup[2]
        self.faults.clear()
        self.log.clear()
        self._fingerprints.clear()
        self.limiter = RateLimiter(self._startup[0], self._startup[2])
        self.latency = self._startup[1]
        self.set_models({})

    # --- a model table that disagrees with the shipped one (tests of `probe`) ------------

    def set_models(self, body: dict[str, Any]) -> None:
        """Replace the departures from the model table: `{model: {field: value}}` for the
        fields of MODEL_SETTINGS (`{}`: the table as started). The cache, its billing
        and the log's `billed` follow them; nothing else changes."""
        settings: dict[str, dict[str, Any]] = {}
        count_extra: dict[str, int] = {}
        specs = {spec.id: spec for spec in self._table}
        for name, fields in body.items():
            spec = self._table.find(name)
            if spec is None:
                raise not_found(f"model: {name}")
            if not isinstance(fields, dict) or not fields:
                raise invalid(f"{name}: expected an object of settings")
            known = (*MODEL_SETTINGS, COUNT_DRIFT)
            unknown = set(fields) - set(known)
            if unknown:
                raise invalid(f"{name}: unknown settings {sorted(unknown)}; expected some of "
                              f"{', '.join(known)}")  # fmt: skip
            extra = fields.get(COUNT_DRIFT, 0)
            if not isinstance(extra, int) or isinstance(extra, bool):
                raise invalid(f"{name}: {COUNT_DRIFT}: expected a whole number of tokens")
            count_extra[spec.id] = extra
            table_fields = {k: v for k, v in fields.items() if k != COUNT_DRIFT}
            try:
                specs[spec.id] = ModelSpec.model_validate(
                    {**specs[spec.id].model_dump(), **table_fields}
                )
            except ValidationError as exc:
                message = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
                raise invalid(f"{name}: {message}") from None
            settings[spec.id] = {**settings.get(spec.id, {}), **fields}
        self.catalog = Catalog(
            list(specs.values()), as_of=self._table.as_of, source=self._table.source
        )
        self._model_settings = settings
        self._count_extra = count_extra

    def describe_models(self) -> dict[str, Any]:
        return {"models": self._model_settings}

    # --- rate limits and latency -------------------------------------------------------

    def set_limits(self, body: dict[str, Any]) -> None:
        """New limits, with full buckets."""
        self.limiter = RateLimiter(
            config_from(self.limits_table, body, self.catalog), self.limiter.time_scale
        )

    def describe_limits(self) -> dict[str, Any]:
        return {
            **self.limiter.config.describe(),
            "time_scale": self.limiter.time_scale,
            "buckets": self.limiter.levels(self.clock.now()),
        }

    def set_latency(self, body: dict[str, Any]) -> None:
        self.latency = latency_from(body, self.limits_table.latency)
        # One time scale for the run: the buckets refill, and cache entries lapse, as much
        # faster as responses come.
        scale = self.latency.time_scale if self.latency is not None else 1.0
        self.limiter.scale_time(scale, self.clock.now())
        self.cache.time_scale = scale

    def describe_latency(self) -> dict[str, Any]:
        return self.latency.describe() if self.latency is not None else {"mode": "none"}

    def timing(self, completion: Completion) -> tuple[float, float] | None:
        """(time to first token, output time) in seconds of the emulator's clock."""
        if self.latency is None:
            return None
        first = self.latency.first_token(completion.uncached_tokens, completion.outcome.read_tokens)
        return first, self.latency.output(completion.message["usage"]["output_tokens"])

    def finish(self, completion: Completion, output_tokens: int) -> dict[str, float]:
        """The response has ended: correct its output-token reservation."""
        if completion.admission is None:
            return {}
        return self.limiter.settle(
            completion.admission.reservation, output_tokens, self.clock.now()
        )

    def admit_count(self, workspace: str, model: Any) -> Admission | None:
        if not self.limiter.enabled:
            return None
        return self.limiter.admit_count(workspace, str(model), self.clock.now())

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_emu{next(self._ids):020d}"

    # --- /v1/messages -------------------------------------------------------------------

    def parse(self, body: Any) -> MessagesRequest:
        return parse_messages_request(body, self.catalog)

    def complete(self, workspace: str, request: MessagesRequest) -> Completion:
        prompt = request.prompt
        now = self.clock.now()
        self.cache.purge(now)
        admission = None
        if self.limiter.enabled:
            read = self.cache.readable_tokens(workspace, prompt, now)
            admission = self.limiter.admit_message(
                workspace,
                prompt.model.id,
                uncached_tokens=prompt.total_tokens - read,
                cached_tokens=read,
                max_tokens=request.max_tokens,
                now=now,
            )  # a refusal raises before anything is cached
        outcome = self.cache.account(workspace, prompt, now)
        if request.max_tokens == 0:
            content: list[dict[str, Any]] = []
            output_tokens, stop_reason = 0, "max_tokens"
        else:
            blocks = answer_blocks(prompt.question, prompt.sources)
            content, output_tokens, stop_reason = _fit(blocks, request.max_tokens, prompt.model)
        message_id = self.next_id("msg")
        message: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": prompt.model.id,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": _usage(outcome, output_tokens),
        }
        if request.wants_diagnostics:
            message["diagnostics"] = self._diagnose(workspace, request, outcome)
        self._remember(workspace, message_id, Fingerprint.of(prompt))
        return Completion(message, outcome, workspace, now, admission)

    def begin(self, completion: Completion) -> None:
        self.cache.begin(completion.workspace, completion.outcome)

    def abandon(self, completion: Completion) -> None:
        """The request failed before its response began: nothing cached, nothing written."""
        self.cache.abandon(completion.workspace, completion.outcome)
        self.finish(completion, 0)

    def _remember(self, workspace: str, message_id: str, fingerprint: Fingerprint) -> None:
        self._fingerprints[(workspace, message_id)] = fingerprint
        while len(self._fingerprints) > FINGERPRINTS_KEPT:
            self._fingerprints.popitem(last=False)

    def _diagnose(
        self, workspace: str, request: MessagesRequest, outcome: CacheOutcome
    ) -> dict[str, Any] | None:
        if request.previous_message_id is None:
            return None
        previous = self._fingerprints.get((workspace, request.previous_message_id))
        if previous is None:
            return {"cache_miss_reason": {"type": "previous_message_not_found"}}
        missed = previous.cached_tokens - outcome.read_tokens
        if previous.cached_index is None or missed <= 0:
            return None
        current = Fingerprint.of(request.prompt)
        if current.model != previous.model:
            reason = "model_changed"
        else:
            first = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(previous.hashes, current.hashes, strict=False))
                    if a != b
                ),
                min(len(previous.hashes), len(current.hashes)),
            )
            if first > previous.cached_index:
                return None  # same prefix: the entry expired rather than changed
            sections = [s[first] for s in (previous.sections, current.sections) if first < len(s)]
            section = min(sections, key=_SECTION_ORDER.__getitem__)
            reason = f"{section}_changed"
        return {"cache_miss_reason": {"type": reason, "cache_missed_input_tokens": missed}}

    # --- /v1/messages/count_tokens and /v1/models --------------------------------------

    def count_tokens(self, body: Any) -> dict[str, Any]:
        prompt = parse_count_tokens_request(body, self.catalog)
        extra = self._count_extra.get(prompt.model.id, 0)
        return {"input_tokens": max(1, prompt.total_tokens + extra)}

    @staticmethod
    def model_info(spec: ModelSpec) -> dict[str, Any]:
        def rfc3339(day: date) -> str:
            return datetime.combine(day, time(), tzinfo=UTC).isoformat().replace("+00:00", "Z")

        return {
            "type": "model",
            "id": spec.id,
            "display_name": spec.display_name,
            "created_at": rfc3339(spec.released),
            "lifecycle": "deprecated" if spec.retires else "active",
            "retires_at": rfc3339(spec.retires) if spec.retires else None,
            "max_input_tokens": spec.context_window,
            "max_tokens": spec.max_output_tokens,
        }

    def list_models(self, limit: int, after_id: str | None) -> dict[str, Any]:
        models = sorted(self.catalog, key=lambda m: (m.released, m.id), reverse=True)
        ids = [m.id for m in models]
        start = ids.index(after_id) + 1 if after_id in ids else 0
        page = models[start : start + limit]
        data = [self.model_info(m) for m in page]
        return {
            "data": data,
            "has_more": start + limit < len(models),
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    def get_model(self, name: str) -> dict[str, Any]:
        spec = self.catalog.find(name)
        if spec is None:
            raise not_found(f"model: {name}")
        return self.model_info(spec)
