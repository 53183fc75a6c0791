from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from hypothesis import settings

from corpus_cache.emulator import RunningEmulator, start_in_thread
from support.emulator_control import Control

# No time limit per example: a deadline is a timed assertion, and on two shared cores under
# a parallel suite an example can take longer than hypothesis's default 200 ms.
settings.register_profile("corpus-cache", deadline=None)
settings.load_profile("corpus-cache")


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


@pytest.fixture(autouse=True)
def _local_emulators_end(tmp_path: Path) -> Iterator[None]:
    """A command-line `ask` leaves a local emulator running for the next one: each test
    ends the ones it started (their state files are under its tmp_path)."""
    yield
    from corpus_cache.api import local_emulator

    for state in tmp_path.rglob(local_emulator.STATE_FILE):
        local_emulator.stop(state.parent)
