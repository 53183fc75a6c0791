"""Text from PDF and DOCX files, extracted in a worker process with bounded resources.

What is cached, searched and cited is the extracted text. A PDF's text is laid out page by
page, each page introduced by a line `[page N]`, and the line where each page starts is
kept so that a citation can name the page. A PDF with no text layer (a scan) has nothing
to extract and is left out with that reason.

Extraction is a total function: it returns the text or raises ExtractionError with a reason
a user can read, whatever the file holds. Sizes are checked before parsing (parsers.py);
time and memory are bounded by running the parsers in one long-lived child process
(extract_worker.py) with an address-space limit, a CPU-time limit and a wall-clock timeout.
Every file goes through the worker, small ones too: pypdf has had infinite loops and
quadratic blow-ups on crafted files of a few kilobytes, so no size check makes a parse safe
in-process. The worker is reused (one round trip costs well under a millisecond plus the
copy of the bytes; starting one costs a few hundred), and replaced after it is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from .extracted import MAX_EXTRACTED_FILE_BYTES, Extracted, ExtractionError, ExtractionLimits
from .reading import UnreadableError, read_regular_file

__all__ = [
    "EXTRACTED_SUFFIXES",
    "MAX_EXTRACTED_FILE_BYTES",
    "Extracted",
    "ExtractionError",
    "ExtractionLimits",
    "WorkerStats",
    "extract",
    "extract_data",
    "worker_stats",
]

EXTRACTED_SUFFIXES = frozenset({".pdf", ".docx"})
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # where corpus_cache is imported from

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerStats:
    files: int = 0
    workers_started: int = 0
    peak_rss_bytes: int = 0  # the largest any worker reached


class _Worker:
    """One extraction process, started on first use, restarted after it dies; one file at a
    time (a lock: scans on several threads take turns)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._replies: queue.Queue[bytes | None] = queue.Queue()
        self.stats = WorkerStats()

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "corpus_cache.corpus.extract_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        replies: queue.Queue[bytes | None] = queue.Queue()
        assert process.stdout is not None
        threading.Thread(
            target=_read_replies, args=(process.stdout, replies), daemon=True,
            name="extract-worker-replies",
        ).start()  # fmt: skip
        self._process, self._replies = process, replies
        self.stats = replace(self.stats, workers_started=self.stats.workers_started + 1)
        return process

    def _send(self, data: bytes, suffix: str, limits: ExtractionLimits) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            process = self._start()
        header = {"suffix": suffix, "size": len(data), "limits": limits.as_json()}
        assert process.stdin is not None
        process.stdin.write(json.dumps(header).encode() + b"\n")
        process.stdin.write(data)
        process.stdin.flush()

    def run(self, data: bytes, suffix: str, limits: ExtractionLimits) -> Extracted:
        with self._lock:
            self.stats = replace(self.stats, files=self.stats.files + 1)
            try:
                self._send(data, suffix, limits)
            except OSError:
                # The worker had died since the last file (killed from outside): not this
                # file's fault, so it gets one fresh worker.
                self._stop()
                try:
                    self._send(data, suffix, limits)
                except OSError as exc:
                    self._stop()
                    raise ExtractionError(f"the extraction worker cannot start: {exc}") from exc
            try:
                line = self._replies.get(timeout=limits.wall_seconds)
            except queue.Empty:
                self._stop()
                raise ExtractionError(
                    f"extraction took longer than {limits.wall_seconds:g} s, and was stopped"
                ) from None
            if line is None or not line.endswith(b"\n"):
                raise ExtractionError(self._why_it_died(limits))
            reply = json.loads(line)
            self.stats = replace(
                self.stats, peak_rss_bytes=max(self.stats.peak_rss_bytes, reply["peak_rss"])
            )
            if "error" in reply:
                raise ExtractionError(reply["error"])
            return Extracted(reply["text"], tuple(reply["pages"]))

    def _why_it_died(self, limits: ExtractionLimits) -> str:
        process = self._process
        assert process is not None
        try:
            code = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._stop()
        if code == -getattr(signal, "SIGXCPU", -1):
            return f"extraction used more than {limits.cpu_seconds} s of CPU, and was stopped"
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the extraction worker was killed by {name} while reading this file"
        return f"the extraction worker ended (exit status {code}) while reading this file"

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):  # a pipe to a process already gone
                    stream.close()

    def close(self) -> None:
        with self._lock:
            self._stop()


def _read_replies(stream: IO[bytes], replies: queue.Queue[bytes | None]) -> None:
    try:
        while line := stream.readline():
            replies.put(line)
    except (OSError, ValueError):
        pass  # closed while reading: the worker is being stopped
    replies.put(None)


_WORKER = _Worker()
atexit.register(_WORKER.close)


def worker_stats() -> WorkerStats:
    """Files extracted, workers started and the peak memory any of them reached."""
    return _WORKER.stats


class _Failures:
    """Why recent files could not be read, by content: the watcher rescans after every save,
    and a file that took its whole CPU allowance must not take it again on every rescan."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._reasons: OrderedDict[bytes, str] = OrderedDict()
        self._size = size

    @staticmethod
    def key(data: bytes, suffix: str, limits: ExtractionLimits) -> bytes:
        digest = hashlib.blake2b(data, digest_size=20)
        digest.update(f"{suffix}{limits}".encode())
        return digest.digest()

    def get(self, key: bytes) -> str | None:
        with self._lock:
            reason = self._reasons.get(key)
            if reason is not None:
                self._reasons.move_to_end(key)
            return reason

    def put(self, key: bytes, reason: str) -> None:
        with self._lock:
            self._reasons[key] = reason
            while len(self._reasons) > self._size:
                self._reasons.popitem(last=False)


_FAILURES = _Failures(4096)


def extract_data(data: bytes, suffix: str, limits: ExtractionLimits | None = None) -> Extracted:
    """The text of a PDF or DOCX file's bytes, by the file's suffix. Raises ExtractionError,
    and nothing else, with a reason a user can read. Text past `limits.max_text_bytes` is
    not gathered: the text returned is then just over the limit, and the file is too big.

    The same bytes that failed recently fail again at once with the same reason: a file
    stopped by a time limit stays out until it changes."""
    suffix = suffix.lower()
    if suffix not in EXTRACTED_SUFFIXES:
        raise ExtractionError(f"no text extractor for {suffix} files")
    limits = limits or ExtractionLimits()
    key = _Failures.key(data, suffix, limits)
    if (reason := _FAILURES.get(key)) is not None:
        raise ExtractionError(reason)
    try:
        return _WORKER.run(data, suffix, limits)
    except ExtractionError as exc:
        _FAILURES.put(key, str(exc))
        raise


def extract(
    path: Path, limit: int = MAX_EXTRACTED_FILE_BYTES, limits: ExtractionLimits | None = None
) -> Extracted:
    """The text of a PDF or DOCX file. Raises ExtractionError with a reason a user can read."""
    try:
        data = read_regular_file(path, limit)
    except UnreadableError as exc:
        raise ExtractionError(str(exc)) from exc
    return extract_data(data, path.suffix, limits)
