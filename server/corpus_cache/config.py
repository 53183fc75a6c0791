"""Settings: flags first, then CORPUS_CACHE_* environment variables, then defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "claude-sonnet-5-5"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CORPUS_CACHE_", extra="ignore")

    corpus: Path = Field(description="the folder of documents to serve")
    model: str = Field(DEFAULT_MODEL, description="the Claude model that answers")
    state_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_state_dir("corpus-cache")),
        description="where the ledger (SQLite) lives",
    )
    models_file: Path | None = Field(None, description="a TOML file of model table overrides")
    tier: str | None = Field(
        None,
        description="the account's rate-limit tier (1 to 4, or a tier of the limits file): the "
        "limits assumed until the API's first response states them; offline, the emulator "
        "applies them too (default: the limits file's own tier, or else learned from the API "
        "with one small request before the folder is first planned, and remembered for a day)",
    )
    limits_file: Path | None = Field(
        None, description="a TOML file merged into the rate-limits table (models/limits.toml)"
    )
    offline: bool = Field(False, description="use the built-in emulator even with an API key")
    clock: Literal["system", "emulator"] = Field(
        "system",
        description="where time comes from: the system's clock, or the virtual clock of the "
        "emulator at ANTHROPIC_BASE_URL (for tests and benchmarks that run several servers "
        "on one emulator; docs/emulator.md)",
    )
    max_file_bytes: int = Field(2 * 1024 * 1024, gt=0, description="larger files are left out")
    allow_secret_content: bool = Field(
        False,
        description="send files whose text looks like a private key or an API or cloud "
        "credential (by default they are left out, with a warning)",
    )
    allow_hard_links: bool = Field(
        False,
        description="send files with several names (hard links) even when the scan does not "
        "find all of those names in the corpus (by default such a file is left out: another "
        "name may be outside the folder)",
    )
    max_answer_tokens: int = Field(1024, gt=0, description="max_tokens of an answer")
    request_timeout: float = Field(
        50.0,
        gt=0,
        description="seconds to connect to the API, and the longest silence in a response "
        "that has begun (a response may take up to 10 minutes to begin: until then the API "
        "may be running it)",
    )
    watch: bool = Field(True, description="watch the folder and refresh after every change")
    poll: bool = Field(
        False, description="watch by polling, for filesystems whose change events do not arrive"
    )
    debounce_ms: int = Field(
        15,
        ge=0,
        description="milliseconds a burst of changes settles before the folder is rescanned",
    )
    budget_tokens: int | None = Field(
        None,
        gt=0,
        description="tokens of corpus per request, setting the shards' size directly "
        "(default: the window less the reserve, or less by --warm-question-usd and "
        "--build-minutes)",
    )
    warm_question_usd: float | None = Field(
        None,
        ge=0,
        description="size shards so that a question read from the cache costs about this "
        "many dollars on the model; 0: not by price (default: $0.05 once the corpus needs "
        "more than one shard of the window anyway; docs/caching.md says why)",
    )
    build_minutes: float | None = Field(
        5.0,
        gt=0,
        description="size shards so that the account's input-token rate limit, as known "
        "(--tier, or learned) when the folder is first planned, writes one to the cache in "
        "about this many minutes: at tier 1 a shard is 150k tokens; from tier 2 up the window "
        "is smaller (docs/caching.md)",
    )
    reserve_tokens: int = Field(
        16_000, ge=0, description="tokens kept free in the window for question and answer"
    )
    fan_out: int = Field(
        1,
        ge=1,
        le=8,
        description="shards consulted per question; at 1, a question the routing is unsure "
        "of asks the best two when they are smaller together than one shard of the window",
    )
    prewarm: bool = Field(
        False, description="after a change, write the cache ahead of the next question"
    )
    keep_old_copies: bool = Field(
        False,
        description="keep an edited document's old copy in the cached prefix even when the "
        "edit removed text, which is then still sent to the API (cheaper, see docs/privacy.md); "
        "by default an edit that removes text drops the old copy",
    )
    ttl: Literal["auto", "5m", "1h"] = Field(
        "auto", description="cache TTL: chosen from the gaps between questions, or fixed"
    )
    max_usd_per_day: float | None = Field(
        None,
        gt=0,
        description="refuse a question, sending nothing, that would take the last 24 hours' "
        "spend on this corpus over this many dollars (default: no cap)",
    )
    session_idle_minutes: float = Field(
        30.0, gt=0, description="a conversation (ask's `session`) ends after this idle time"
    )
    max_sessions: int = Field(
        100, ge=1, description="conversations kept; beyond, the least recently used ends"
    )
    session_max_turns: int = Field(
        20, ge=1, description="questions a conversation keeps; older ones are dropped"
    )
    session_max_tokens: int = Field(
        50_000, ge=1, description="tokens of conversation kept; older turns are dropped"
    )
    ask_deadline: float = Field(
        50.0,
        gt=0,
        description="seconds an MCP `ask` may take before it ends with an error; keep it below "
        "the client's own timeout (Claude Desktop gives up after about 60 s)",
    )
    index_wait: float = Field(
        10.0,
        ge=0,
        description="seconds a tool that needs the corpus waits for the first index of the "
        "folder (which runs in the background from start) before it says how far it is",
    )
    heartbeat_interval: float = Field(
        5.0, gt=0, description="seconds between progress notifications while an answer is awaited"
    )
    auth_token: SecretStr | None = Field(
        None,
        description="bearer token the HTTP transport requires (CORPUS_CACHE_AUTH_TOKEN); "
        "required when binding anything but loopback",
    )
    http_header_timeout: float = Field(
        10.0, gt=0, description="seconds an HTTP client has to send a request's headers"
    )
    http_body_timeout: float = Field(
        30.0, gt=0, description="seconds an HTTP client has to send a request's body"
    )
    http_write_timeout: float = Field(
        30.0, gt=0, description="seconds a response may wait for an HTTP client that stops reading"
    )
    http_keep_alive: int = Field(
        5, ge=1, description="seconds an idle HTTP connection is kept open for the next request"
    )
    http_max_connections: int = Field(
        256,
        ge=1,
        description="HTTP connections open at once (fewer if the file limit is low); beyond, "
        "the one idle longest is closed, or the new one gets 503 when none is idle",
    )
    http_max_sessions: int = Field(
        1000, ge=1, description="MCP sessions over HTTP; beyond, the least recently used ends"
    )
    http_sessions_per_client: int = Field(
        64,
        ge=1,
        description="MCP sessions over HTTP per client address; beyond, its least recently "
        "used ends",
    )
    http_session_idle_minutes: float = Field(
        15.0, gt=0, description="an MCP session over HTTP with no request for this long ends"
    )

    @field_validator("corpus")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.sqlite3"


def answers_offline(offline: bool) -> bool:
    """Whether the offline emulator answers: asked for (--offline), or no ANTHROPIC_API_KEY.
    Otherwise the SDK reads the key, and ANTHROPIC_BASE_URL, as it always does."""
    return offline or not os.environ.get("ANTHROPIC_API_KEY")
