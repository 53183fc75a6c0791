from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from corpus_cache.emulator import RunningEmulator, start_in_thread


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the user's state folder, model overrides or real API key."""
    monkeypatch.setenv("CORPUS_CACHE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("CORPUS_CACHE_MODELS_FILE", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


@pytest.fixture(scope="session")
def running_emulator() -> Iterator[RunningEmulator]:
    with start_in_thread() as emulator:
        yield emulator


class Control:
    """The emulator's /_emulator/ endpoints."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx2.Client(base_url=base_url, timeout=10)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.post(f"/_emulator/{path}", json=body or {})
        response.raise_for_status()
        return response.json()

    def freeze(self, at: float = 1_800_000_000.0) -> None:
        self.post("clock", {"frozen": True, "set": at})

    def advance(self, seconds: float) -> None:
        self.post("clock", {"advance": seconds})

    def fault(self, **fault: Any) -> None:
        self.post("faults", fault)

    def log(self, bodies: bool = False) -> list[dict[str, Any]]:
        params = {"bodies": "1" if bodies else "0", "limit": "1000"}
        requests: list[dict[str, Any]] = self.http.get("/_emulator/log", params=params).json()[
            "requests"
        ]
        return requests

    def cache(self, api_key: str = "test-key") -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.http.get(
            "/_emulator/cache", headers={"x-api-key": api_key}
        ).json()["entries"]
        return entries


@pytest.fixture
def emulator(running_emulator: RunningEmulator) -> Iterator[Control]:
    control = Control(running_emulator.base_url)
    control.post("reset")
    yield control
    control.post("reset")
    control.http.close()


@pytest.fixture
def client(running_emulator: RunningEmulator, emulator: Control) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=running_emulator.base_url, api_key="test-key", max_retries=0
    ) as sdk:
        yield sdk


@pytest.fixture
def aclient(running_emulator: RunningEmulator, emulator: Control) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=running_emulator.base_url, api_key="test-key", max_retries=0
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
