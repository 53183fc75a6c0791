"""Settings: flags first, then CORPUS_CACHE_* environment variables, then defaults."""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import Field, field_validator
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
    offline: bool = Field(False, description="use the built-in emulator even with an API key")
    max_file_bytes: int = Field(2 * 1024 * 1024, gt=0, description="larger files are left out")
    max_answer_tokens: int = Field(1024, gt=0, description="max_tokens of an answer")
    request_timeout: float = Field(50.0, gt=0, description="seconds before an API call gives up")

    @field_validator("corpus")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.sqlite3"
