"""The extraction worker: a child process that turns PDF and DOCX bytes into text under
memory and CPU limits, one request at a time, for as long as its parent keeps it.

Protocol, over its stdin and stdout: a request is one JSON line (`suffix`, `size`, `limits`)
followed by `size` bytes of the file; the reply is one JSON line, `{"text", "pages"}` or
`{"error"}`, with the worker's peak resident memory. The worker touches no file: bytes in,
text out. When a limit is hit the kernel ends it (CPU) or an allocation fails (memory),
and the parent names the limit in the reason and starts another worker for the next file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from typing import IO, Any

from .extracted import ExtractionError, ExtractionLimits
from .parsers import parse

try:
    import resource
except ImportError:  # Windows: the parent's wall-clock timeout is the only bound
    resource = None  # type: ignore[assignment]


def _proc_status(field: bytes) -> int | None:
    """A size from /proc/self/status (Linux), in bytes."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(field + b":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss_bytes() -> int:
    # On Linux, getrusage's peak carries over from the parent through fork and exec; the
    # high-water mark of this process's own memory is in /proc.
    peak = _proc_status(b"VmHWM")
    if peak is not None:
        return peak
    if resource is None:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes


def _set_soft_limit(kind: int, value: int) -> None:
    assert resource is not None
    _soft, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    # macOS refuses RLIMIT_AS: CPU time and the wall clock still bound the file there.
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(kind, (value, hard))


def _apply(limits: ExtractionLimits) -> None:
    """This request's limits. CPU time counts from the worker's start, so the soft limit is
    what was used so far plus this file's allowance; past it the kernel sends SIGXCPU."""
    if resource is None:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    _set_soft_limit(resource.RLIMIT_CPU, used + limits.cpu_seconds)
    _set_soft_limit(resource.RLIMIT_AS, limits.memory_bytes)


def _serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    while header := requests.readline():
        request = json.loads(header)
        data = requests.read(request["size"])
        limits = ExtractionLimits(**request["limits"])
        _apply(limits)
        reply: dict[str, Any]
        out_of_memory = False
        try:
            extracted = parse(data, request["suffix"], limits)
            reply = {"text": extracted.text, "pages": list(extracted.page_lines)}
        except ExtractionError as exc:
            reply = {"error": str(exc)}
            # lxml reports a failed allocation as an "unknown error": near the address-space
            # limit, whatever failed is taken to have run out of memory.
            peak_vm = _proc_status(b"VmPeak") or 0
            out_of_memory = (
                isinstance(exc.__cause__, MemoryError) or peak_vm >= 0.95 * limits.memory_bytes
            )
            if out_of_memory:
                reply["error"] = (
                    f"needed more than the {limits.memory_bytes:,} bytes of memory extraction "
                    "may use"
                )
        del data
        reply["peak_rss"] = _peak_rss_bytes()
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()
        if out_of_memory:
            return  # a heap that ran out may be in any state: the next file gets a fresh one


def main() -> None:
    if resource is not None:
        _set_soft_limit(resource.RLIMIT_CORE, 0)  # a worker ended by SIGXCPU leaves no core
    # Replies go to a descriptor of their own, and descriptor 1 becomes stderr, so that
    # nothing a library prints can be taken for a reply.
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):  # the parent went away
        _serve(requests, replies)


if __name__ == "__main__":
    main()
