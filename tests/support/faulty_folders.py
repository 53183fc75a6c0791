"""Folders with faults in them, for tests: deep trees, races made to happen every time, a
scan that must not hang, and tests run without the privilege to read any file."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from corpus_cache.corpus.scan import ScanOptions, ScanResult, scan

TESTS = Path(__file__).parents[1]


def write(root: Path, rel: str, data: str | bytes = "Some text.\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def make_deep(root: Path, levels: int, name: str = "d", text: str = "The bottom.\n") -> str:
    """`levels` folders called `name`, one inside the other, under `root`, with `deep.md`
    at the bottom; returns that file's path relative to `root`. Made through folder
    descriptors, so the whole path may be longer than one system call accepts."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        out = os.open("deep.md", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, text.encode())
        os.close(out)
    finally:
        os.close(fd)
    return "/".join([name] * levels + ["deep.md"])


def remove_deep(path: Path) -> None:
    """Delete a tree however deep: shutil.rmtree recurses once per level, and so does the
    cleanup of pytest's temporary folders; `rm -rf` walks with a bounded stack."""
    subprocess.run(["rm", "-rf", "--", str(path)], check=True)


@contextmanager
def scratch_folder(fallback: Path) -> Iterator[Path]:
    """A folder on tmpfs when there is one (/dev/shm), else `fallback`: thousands of files
    and folders are made there in milliseconds, where a busy disk takes seconds. Removed
    afterwards, however deep it grew."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else fallback
    folder = Path(tempfile.mkdtemp(prefix="corpus-cache-faults-", dir=base)).resolve()
    try:
        yield folder
    finally:
        remove_deep(folder)


# --- races, made to happen every time ---------------------------------------------------
#
# Python raises the audit event "open" in os.open() and open() just before the file is
# opened. A hook that changes the file at that moment reproduces, on every run, what a
# user's editor or a sync tool does by chance between the scan listing a folder and
# reading one of its files. Audit hooks cannot be removed, so one hook is added once and
# does nothing unless a test has armed it.

_lock = threading.Lock()
_armed: dict[str, Callable[[], object]] = {}
_recorders: list[list[str]] = []
_hooked = False


def _on_audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "open" or not (_armed or _recorders):
        return
    target = args[0]
    if not isinstance(target, str | bytes | os.PathLike):
        return
    path = os.fsdecode(os.fspath(target))
    with _lock:
        action = _armed.pop(path, None)
        for opened in _recorders:
            opened.append(path)
    if action is not None:
        action()


def _hook() -> None:
    global _hooked
    with _lock:
        if not _hooked:
            sys.addaudithook(_on_audit)
            _hooked = True


@contextmanager
def before_opening(path: Path, action: Callable[[], object]) -> Iterator[None]:
    """Run `action` once, the next time this process opens `path`, just before it does."""
    _hook()
    with _lock:
        _armed[str(path)] = action
    try:
        yield
    finally:
        with _lock:
            _armed.pop(str(path), None)


@contextmanager
def opened_paths() -> Iterator[list[str]]:
    """Every path this process opens while the block runs."""
    _hook()
    opened: list[str] = []
    with _lock:
        _recorders.append(opened)
    try:
        yield opened
    finally:
        with _lock:
            _recorders.remove(opened)


def scan_without_hanging(
    root: Path, pipes: Sequence[Path] = (), timeout: float = 10.0, **options: Any
) -> ScanResult:
    """The scan, on a thread of its own: a scan stuck opening a named pipe fails the test
    (the pipes are then opened for writing, to let it go) instead of hanging the suite."""
    results: list[ScanResult] = []
    thread = threading.Thread(
        target=lambda: results.append(scan(root, ScanOptions(**options))), daemon=True
    )
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for pipe in pipes:
            with open(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK), "wb"):
                pass
        thread.join(timeout)
        pytest.fail(f"the scan of {root} blocked for {timeout} s (on a named pipe?)")
    assert results, "the scan raised: see the thread's traceback above"
    return results[0]


# --- tests run without the privilege to read any file ----------------------------------


@functools.cache
def reads_any_file() -> bool:
    """Whether this process reads a file whatever its mode (root, with CAP_DAC_OVERRIDE)."""
    fd, name = tempfile.mkstemp()
    os.close(fd)
    try:
        os.chmod(name, 0)
        with open(name, "rb"):
            return True
    except PermissionError:
        return False
    finally:
        os.unlink(name)


def run_unprivileged(tests: Sequence[str]) -> dict[str, str]:
    """Run tests of this suite in a child pytest that is root without its capabilities
    (`setpriv --bounding-set=-all`): root reads any file only through CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH, so without them it meets "Permission denied" as any user does.
    Returns each test's outcome: "passed", or what went wrong."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is needed to test 'Permission denied' as root")
    work = Path(tempfile.mkdtemp(prefix="corpus-cache-unprivileged-"))
    try:
        report = work / "report.xml"
        child = subprocess.run(
            [
                setpriv, "--bounding-set=-all", "--inh-caps=-all",
                sys.executable, "-m", "pytest", "-q",
                "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                f"--basetemp={work / 'tmp'}", f"--junitxml={report}",
                *(f"{TESTS / 'test_folder_faults.py'}::{name}" for name in tests),
            ],
            cwd=TESTS.parent, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if not report.exists():
            pytest.fail(f"the unprivileged run did not start:\n{child.stdout}\n{child.stderr}")
        outcomes: dict[str, str] = {}
        for case in ElementTree.parse(report).iter("testcase"):
            problems = [p for p in case if p.tag in ("failure", "error", "skipped")]
            outcomes[case.attrib["name"]] = (
                "passed"
                if not problems
                else "\n".join(
                    f"{p.tag}: {p.attrib.get('message', '')}\n{p.text}" for p in problems
                )
            )
        return outcomes
    finally:
        shutil.rmtree(work, ignore_errors=True)
