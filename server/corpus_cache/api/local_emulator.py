"""An offline emulator that outlives one `corpus-cache ask`, so that the next ask reads the
cache this one wrote.

An emulator in the asking process dies with it, and with it every cache entry it held: three
asks in a row would each write the whole corpus again, and the ledger would show caching as
a loss. So the command line's offline `ask` starts this one on demand, in a process of its
own, and the asks that follow use it. It is the in-process emulator (emulator/runner.py) as
it is: loopback only, a random key only the state folder's owner can read, no controls. It
stops by itself once it has not been used for longer than any cache entry can live (an hour
and a margin), when its state file is removed, or on SIGTERM.

    python -m corpus_cache.api.local_emulator STATE_DIR [MODELS_FILE]
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx2

from corpus_cache.emulator import start_in_thread
from corpus_cache.errors import SetupError
from corpus_cache.models.catalog import load_catalog

log = logging.getLogger(__name__)

STATE_FILE = "local-emulator.json"
LOCK_FILE = "local-emulator.lock"
LOG_FILE = "local-emulator.log"
IDLE_SECONDS = 3600 + 300  # the longest TTL, and a margin: no entry in it outlives that
CHECK_EVERY = 5.0  # seconds between two looks at the state file
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class LocalEmulator:
    pid: int
    base_url: str
    api_key: str
    models_file: str
    started: float


def _state(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def read(state_dir: Path) -> LocalEmulator | None:
    """The emulator the state file names, if the file is there and whole."""
    try:
        found = json.loads(_state(state_dir).read_text(encoding="utf-8"))
        return LocalEmulator(**found)
    except (OSError, ValueError, TypeError):
        return None


def _answers(emulator: LocalEmulator) -> bool:
    try:
        response = httpx2.get(
            f"{emulator.base_url}/v1/models",
            headers={"x-api-key": emulator.api_key, "anthropic-version": "2023-06-01"},
            timeout=2.0,
        )
    except httpx2.HTTPError:
        return False
    return response.status_code == 200


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One process at a time finds or starts the emulator: two asks at once share one."""
    with (state_dir / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def connect(state_dir: Path, models_file: Path | None) -> LocalEmulator:
    """The running local emulator, started if there is none (or it uses another model
    table). Marks it used now. Raises SetupError when it cannot be started."""
    state_dir.mkdir(parents=True, exist_ok=True)
    wanted = str(models_file.resolve()) if models_file else ""
    with _locked(state_dir):
        found = read(state_dir)
        if found is not None and found.models_file == wanted and _answers(found):
            os.utime(_state(state_dir))  # used: it stays up another hour
            return found
        if found is not None:
            stop(state_dir)
        return _start(state_dir, wanted)


def _start(state_dir: Path, models_file: str) -> LocalEmulator:
    command = [sys.executable, "-m", "corpus_cache.api.local_emulator", str(state_dir)]
    with (state_dir / LOG_FILE).open("ab") as errors:
        process = subprocess.Popen(
            [*command, models_file] if models_file else command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,  # not ended by the terminal's Ctrl-C of the ask
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = read(state_dir)
        if found is not None and found.pid == process.pid and _answers(found):
            return found
        if process.poll() is not None:
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    raise SetupError(f"the local offline emulator did not start; see {state_dir / LOG_FILE}")


def stop(state_dir: Path) -> None:
    """End the emulator the state file names, if it is ours and runs, and forget it."""
    found = read(state_dir)
    with contextlib.suppress(OSError):
        _state(state_dir).unlink()
    if found is not None and found.pid != os.getpid() and _is_local_emulator(found.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(found.pid, signal.SIGTERM)


def _is_local_emulator(pid: int) -> bool:
    """Whether `pid` is still this module's process, not another that took its number."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"corpus_cache.api.local_emulator" in command


# --- the emulator's own process -------------------------------------------------------


def _write_state(state_dir: Path, emulator: LocalEmulator) -> None:
    """Written whole, readable by its owner only (it holds the key)."""
    temporary = state_dir / f".{STATE_FILE}.{os.getpid()}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(asdict(emulator), handle)
    os.replace(temporary, _state(state_dir))


def _still_wanted(state_dir: Path, pid: int, now: float) -> bool:
    found = read(state_dir)
    if found is None or found.pid != pid:
        return False  # stopped, or replaced by another
    try:
        used = _state(state_dir).stat().st_mtime
    except OSError:
        return False
    return now - used < IDLE_SECONDS


def serve(state_dir: Path, models_file: str) -> None:
    import secrets

    key = secrets.token_urlsafe(32)
    catalog = load_catalog(Path(models_file) if models_file else None)
    running = start_in_thread(catalog=catalog, api_key=key, controls=False)
    pid = os.getpid()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    _write_state(state_dir, LocalEmulator(pid, running.base_url, key, models_file, time.time()))
    log.warning("local offline emulator at %s (pid %d)", running.base_url, pid)
    try:
        while not done.wait(CHECK_EVERY):
            if not _still_wanted(state_dir, pid, time.time()):
                break
    finally:
        running.stop()
        found = read(state_dir)
        if found is not None and found.pid == pid:
            with contextlib.suppress(OSError):
                _state(state_dir).unlink()


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    serve(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
