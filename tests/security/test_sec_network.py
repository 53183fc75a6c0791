"""What can reach the ports corpus-cache opens, and what it costs the server: the in-process
emulator (a key of its own, Host/Origin checks, no controls), slow HTTP clients (read
deadlines, a connection cap) and MCP sessions over HTTP (bounded, least recently used end).

Every server here is a real `corpus-cache serve` subprocess on loopback, or the emulator
in a thread; limits are lowered through settings so that each test takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import anyio
import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from corpus_cache.api.backend import open_backend
from corpus_cache.emulator import start_in_thread
from corpus_cache.mcp_surface.http_connections import FD_RESERVE, Phase, connection_cap, phase_of
from corpus_cache.mcp_surface.http_sessions import SessionLimits, sessions_to_end
from corpus_cache.models.catalog import load_catalog
from support.commands import free_port
from support.corpus_fixture import write_corpus

TOKEN = "a-test-token-of-thirty-two-chars"
PROTOCOL = "2025-06-18"
INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": PROTOCOL, "capabilities": {},
               "clientInfo": {"name": "sec-test", "version": "1"}},
}  # fmt: skip
PING = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
MCP_HEADERS = {"accept": "application/json, text/event-stream"}
AUTH = {"authorization": f"Bearer {TOKEN}"}
AUTH_LINE = f"authorization: Bearer {TOKEN}"


# --- servers --------------------------------------------------------------------------------


@dataclass
class Served:
    port: int
    process: subprocess.Popen[bytes]
    stderr: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def stderr_line(self, pattern: str, within: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for line in list(self.stderr):
                if found := re.search(pattern, line):
                    return found
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} on stderr: {''.join(self.stderr)}")


def _low_file_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


@contextmanager
def serving_http(
    corpus: Path,
    state: Path,
    *,
    base_url: str | None,
    token: str | None = TOKEN,
    file_limit: int | None = None,
    **settings: str,
) -> Iterator[Served]:
    """`corpus-cache serve --transport http` on a free loopback port, with CORPUS_CACHE_*
    settings; without `base_url` it answers with its in-process emulator."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CORPUS_"))}
    env["CORPUS_CACHE_STATE_DIR"] = str(state)
    env.update({f"CORPUS_CACHE_{name.upper()}": value for name, value in settings.items()})
    if base_url is not None:
        env.update(ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=base_url)
    command = [sys.executable, "-m", "corpus_cache", "serve", "--corpus", str(corpus)]
    command += ["--transport", "http", "--port", str(port)]
    if token is not None:
        command += ["--auth-token", token]
    process = subprocess.Popen(
        command,
        env=env,
        stderr=subprocess.PIPE,
        preexec_fn=(lambda: _low_file_limit(file_limit)) if file_limit else None,
    )
    served = Served(port, process)

    def drain() -> None:  # so that the server never blocks on a full stderr pipe
        assert process.stderr is not None
        for line in process.stderr:
            served.stderr.append(line.decode(errors="replace"))

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx2.get(served.url, timeout=1)
                break
            except httpx2.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"no server: {''.join(served.stderr)}") from None
                time.sleep(0.05)
        yield served
    finally:
        process.terminate()
        process.wait(timeout=10)


BIG_DOCUMENT = "archive.md"


BIG_DOCUMENT_BYTES = 5_000_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("net") / "corpus")


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_corpus(tmp_path_factory.mktemp("net-big") / "corpus")
    # Reading it is a response larger than what the kernel buffers for a client (~3 MB).
    line = "The archive holds old routing notes.\n"
    (root / BIG_DOCUMENT).write_text(line * (BIG_DOCUMENT_BYTES // len(line)))
    return root


@pytest.fixture(scope="module")
def keyless(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """No API key (its own emulator answers), no token, and sessions idle for 1.2 s end."""
    with serving_http(
        corpus,
        tmp_path_factory.mktemp("keyless-state"),
        base_url=None,
        token=None,
        http_session_idle_minutes="0.02",
    ) as served:
        yield served


@pytest.fixture(scope="module")
def strict(
    big_corpus: Path, running_emulator: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """Short deadlines, few connections, and few sessions per client and in all."""
    with serving_http(
        big_corpus,
        tmp_path_factory.mktemp("strict-state"),
        base_url=running_emulator.base_url,
        http_header_timeout="0.5",
        http_body_timeout="0.5",
        http_max_connections="3",
        http_write_timeout="0.5",
        max_file_bytes=str(2 * BIG_DOCUMENT_BYTES),
        http_sessions_per_client="5",
        http_max_sessions="8",
    ) as served:
        yield served


# --- raw connections ------------------------------------------------------------------------


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection (what it sent before is skipped)."""
    try:
        while True:
            ready, _, _ = select.select([sock], [], [], 0)
            if not ready:
                return False
            if not sock.recv(65536):
                return True
    except OSError:
        return True


def trickle_until_closed(sock: socket.socket, data: bytes, every: float, within: float) -> bool:
    """Send `data` a byte every `every` seconds; True if the server closes the connection
    within `within` seconds."""
    deadline = time.monotonic() + within
    for byte in data:
        if time.monotonic() > deadline:
            return False
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return True
        select.select([sock], [], [], every)  # the pace, ended early by anything to read
        if closed_by_server(sock):
            return True
    return False


def read_response(sock: socket.socket) -> bytes:
    """One HTTP response with a content-length, read whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return head


def request_head(port: int, method: str, target: str, *extra: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"host: 127.0.0.1:{port}", *extra]
    return ("\r\n".join(lines) + "\r\n").encode()


# --- class 5: the in-process emulator -------------------------------------------------------


@pytest.fixture
def in_process() -> Iterator[tuple[str, str]]:
    """The emulator `serve`, `ask` and `demo` start when there is no API key: its address,
    and the key the product's client holds."""
    backend = open_backend(load_catalog(), offline=True, timeout=10)
    assert backend.emulator is not None
    try:
        yield backend.emulator.base_url, backend.client.api_key or ""
    finally:
        anyio.run(backend.close)


ATTACKS = [
    ("GET", "/_emulator/log?bodies=1", None),
    ("POST", "/_emulator/faults", b'{"count": 5, "status": 500}'),
    ("POST", "/_emulator/reset", b""),
    ("GET", "/_emulator/clock", None),
    ("POST", "/v1/messages/count_tokens", b'{"model": "claude-sonnet-5-5", "messages": []}'),
    ("GET", "/v1/models", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ATTACKS)
def test_the_in_process_emulator_answers_no_request_without_its_key(
    in_process: tuple[str, str], method: str, path: str, body: bytes | None
) -> None:
    base_url, _ = in_process
    for key in (None, "offline-emulator", "test-key"):
        headers = {"content-type": "text/plain", "anthropic-version": "2023-06-01"}
        if key is not None:
            headers["x-api-key"] = key
        response = httpx2.request(method, base_url + path, content=body, headers=headers)
        assert response.status_code == 401, (key, response.text)
        assert response.json()["type"] == "error"
        assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    "headers",
    [
        {"host": "attacker.example"},
        {"host": "attacker.example:80"},
        {"origin": "http://attacker.example"},
        {"origin": "null"},
        {"sec-fetch-site": "cross-site"},
    ],
)
def test_the_in_process_emulator_refuses_a_foreign_host_or_a_web_page_even_with_its_key(
    in_process: tuple[str, str], headers: dict[str, str]
) -> None:
    base_url, key = in_process
    response = httpx2.get(
        base_url + "/v1/models",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01", **headers},
    )
    assert response.status_code in (403, 421)
    assert response.json()["type"] == "error"
    assert "data" not in response.json()


def test_the_in_process_emulator_has_no_controls_even_for_its_own_key(
    in_process: tuple[str, str],
) -> None:
    base_url, key = in_process
    for method, path, body in ATTACKS[:4]:
        response = httpx2.request(method, base_url + path, content=body, headers={"x-api-key": key})
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "not_found_error"


@pytest.mark.anyio
async def test_the_product_still_answers_through_the_in_process_emulator() -> None:
    backend = open_backend(load_catalog(), offline=True, timeout=10)
    try:
        message = await backend.client.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=64,
            messages=[{"role": "user", "content": "Which port does Kestrel use?"}],
        )
    finally:
        await backend.close()
    assert message.content


@pytest.mark.anyio
async def test_a_serve_without_a_key_does_not_give_its_emulator_to_other_local_programs(
    keyless: Served,
) -> None:
    emulator = keyless.stderr_line(r"offline emulator at (http://127\.0\.0\.1:\d+)").group(1)
    async with Client(keyless.url) as mcp:
        answer = await mcp.call_tool("ask", {"question": "Which port does Kestrel use?"})
    assert not answer.is_error, answer.content
    stolen = httpx2.get(emulator + "/_emulator/log?bodies=1")
    rebound = httpx2.get(emulator + "/_emulator/log?bodies=1", headers={"host": "attacker.example"})
    poisoned = httpx2.post(
        emulator + "/_emulator/faults",
        content=b'{"count": 5, "status": 500}',
        headers={"content-type": "text/plain", "origin": "http://attacker.example"},
    )
    async with Client(keyless.url) as mcp:
        again = await mcp.call_tool("ask", {"question": "When are deploys frozen?"})
    assert (stolen.status_code, rebound.status_code, poisoned.status_code) == (401, 421, 403)
    assert "Kestrel" not in stolen.text + rebound.text
    assert not again.is_error, again.content


def test_the_standalone_emulator_accepts_any_key_but_no_foreign_host_or_web_page() -> None:
    with start_in_thread() as emulator:
        client = anthropic.Anthropic(base_url=emulator.base_url, api_key="anything")
        assert client.models.list().data
        control = httpx2.Client(base_url=emulator.base_url)
        assert control.get("/_emulator/log").status_code == 200
        rebound = control.get("/_emulator/log?bodies=1", headers={"host": "a.example"})
        assert rebound.status_code == 421
        poisoned = control.post(
            "/_emulator/faults",
            content=b'{"count": 5, "status": 500}',
            headers={"content-type": "text/plain", "origin": "http://attacker.example"},
        )
        assert poisoned.status_code == 403
        assert control.get("/_emulator/faults").json() == {"faults": []}
        localhost = control.get(
            "/_emulator/clock", headers={"host": f"localhost:{emulator.base_url.rsplit(':', 1)[1]}"}
        )
        assert localhost.status_code == 200


def test_the_emulator_command_checks_host_and_origin_and_accepts_any_key() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "corpus_cache", "emulator", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = anthropic.Anthropic(
            base_url=f"http://127.0.0.1:{port}", api_key="anything", max_retries=0
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                assert client.models.list().data
                break
            except anthropic.APIConnectionError:
                assert time.monotonic() < deadline, "the emulator did not start"
                time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        assert httpx2.post(f"{base}/_emulator/reset").status_code == 200
        rebound = httpx2.get(f"{base}/_emulator/log", headers={"host": "attacker.example"})
        assert rebound.status_code == 421
        foreign = httpx2.post(f"{base}/_emulator/reset", headers={"origin": "http://a.example"})
        assert foreign.status_code == 403
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- class 8: slow clients ------------------------------------------------------------------


@pytest.mark.parametrize("opening", ["nothing", "a first request answered"])
def test_a_client_sending_its_headers_a_byte_at_a_time_is_disconnected(
    strict: Served, opening: str
) -> None:
    with connect(strict.port) as sock:
        if opening != "nothing":
            sock.sendall(request_head(strict.port, "GET", "/elsewhere", AUTH_LINE) + b"\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 404")
        endless = request_head(strict.port, "POST", "/mcp", "x-slow: " + "a" * 4000)
        assert trickle_until_closed(sock, endless, every=0.05, within=5)


def test_a_client_that_connects_and_sends_nothing_is_disconnected(strict: Served) -> None:
    with connect(strict.port) as sock:
        deadline = time.monotonic() + 5
        while not closed_by_server(sock):
            assert time.monotonic() < deadline, "an idle connection was kept open"
            select.select([sock], [], [], 0.05)


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", "Bearer wrong-token-000000000000"])
def test_a_client_trickling_its_body_is_disconnected(strict: Served, authorization: str) -> None:
    with connect(strict.port) as sock:
        head = request_head(
            strict.port, "POST", "/mcp",
            f"authorization: {authorization}", "content-type: application/json",
            "accept: application/json, text/event-stream", "content-length: 100000",
        )  # fmt: skip
        sock.sendall(head + b"\r\n")
        assert trickle_until_closed(sock, b"{" + b" " * 5000, every=0.05, within=5)


def test_a_client_that_stops_reading_its_response_is_disconnected(strict: Served) -> None:
    session = open_session(strict)
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 3, "method": "resources/read",
         "params": {"uri": f"corpus://doc/{BIG_DOCUMENT}"}}
    ).encode()  # fmt: skip
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
        sock.settimeout(5)
        sock.connect(("127.0.0.1", strict.port))
        head = request_head(
            strict.port, "POST", "/mcp", AUTH_LINE, "content-type: application/json",
            "accept: application/json, text/event-stream", f"mcp-session-id: {session}",
            f"mcp-protocol-version: {PROTOCOL}", f"content-length: {len(body)}",
        )  # fmt: skip
        sock.sendall(head + b"\r\n" + body)
        time.sleep(3)  # a client that stops reading: what is tested is time passing
        received = 0
        try:
            while chunk := sock.recv(65536):
                received += len(chunk)
        except OSError:
            pass
    assert received < BIG_DOCUMENT_BYTES, "the whole response waited for the client"


def test_a_valid_client_gets_through_while_300_half_open_connections_are_held(
    corpus: Path, running_emulator: Any, tmp_path: Path
) -> None:
    # A file limit the 300 connections would exhaust, and deadlines too long to help: only
    # the cap on connections can keep the server reachable.
    with (
        serving_http(
            corpus,
            tmp_path / "state",
            base_url=running_emulator.base_url,
            file_limit=256,
            http_header_timeout="120",
            http_body_timeout="120",
        ) as served,
        ExitStack() as held,
    ):
        for _ in range(300):
            sock = held.enter_context(socket.create_connection(("127.0.0.1", served.port)))
            sock.sendall(request_head(served.port, "POST", "/mcp", AUTH_LINE))

        async def list_tools() -> list[str]:
            with anyio.fail_after(20):
                async with (
                    httpx2.AsyncClient(headers=AUTH, timeout=10) as http,
                    Client(streamable_http_client(served.url, http_client=http)) as mcp,  # type: ignore[arg-type]
                ):
                    return [tool.name for tool in (await mcp.list_tools()).tools]

        assert "ask" in anyio.run(list_tools)
        assert served.process.poll() is None


def test_beyond_the_connection_cap_a_new_connection_gets_503_at_once_when_none_is_idle(
    strict: Served,
) -> None:
    with ExitStack() as held:
        # As many connections as the cap, each being answered: a session's event stream.
        for _ in range(3):
            session = open_session(strict)
            sock = held.enter_context(connect(strict.port))
            sock.sendall(
                request_head(
                    strict.port, "GET", "/mcp", AUTH_LINE, "accept: text/event-stream",
                    f"mcp-session-id: {session}", f"mcp-protocol-version: {PROTOCOL}",
                ) + b"\r\n"
            )  # fmt: skip
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        # A connection the server has not yet seen closed is idle, and makes room: try again.
        answers = []
        for _ in range(5):
            with connect(strict.port) as extra:
                extra.sendall(request_head(strict.port, "GET", "/mcp", AUTH_LINE) + b"\r\n")
                answers.append(extra.recv(65536))
            if answers[-1].startswith(b"HTTP/1.1 503"):
                break
        assert answers[-1].startswith(b"HTTP/1.1 503"), answers


# --- class 9: sessions ----------------------------------------------------------------------


def open_session(served: Served, address: str = "127.0.0.1") -> str:
    transport = httpx2.HTTPTransport(local_address=address)
    with httpx2.Client(transport=transport, timeout=10) as http:
        response = http.post(served.url, json=INITIALIZE, headers={**MCP_HEADERS, **AUTH})
    assert response.status_code == 200, response.text
    return response.headers["mcp-session-id"]


def session_status(served: Served, session: str) -> int:
    headers = {**MCP_HEADERS, **AUTH, "mcp-session-id": session}
    headers["mcp-protocol-version"] = PROTOCOL
    return httpx2.post(served.url, json=PING, headers=headers, timeout=10).status_code


def statuses(served: Served, sessions: list[str], expected: list[int]) -> list[int]:
    """The sessions' statuses, polled until they are as expected (ending is asynchronous)."""
    deadline = time.monotonic() + 5
    while True:
        found = [session_status(served, s) for s in sessions]
        if found == expected or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_client_opening_sessions_past_its_share_ends_its_own_least_recently_used(
    strict: Served,
) -> None:
    client = "127.0.0.5"
    sessions = [open_session(strict, client) for _ in range(5)]
    assert session_status(strict, sessions[0]) == 200  # now the most recently used
    sessions += [open_session(strict, client) for _ in range(2)]
    assert statuses(strict, sessions, [200, 404, 404, 200, 200, 200, 200]) == [
        200, 404, 404, 200, 200, 200, 200,
    ]  # fmt: skip


def test_new_clients_are_never_refused_the_least_recently_used_sessions_end_instead(
    strict: Served,
) -> None:
    opened: list[str] = []
    for client in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        opened += [open_session(strict, client) for _ in range(4)]  # 12 sessions, 8 kept
    expected = [404] * 4 + [200] * 8
    assert statuses(strict, opened, expected) == expected


def test_an_idle_session_ends_after_the_idle_timeout(keyless: Served) -> None:
    session = open_session(keyless)
    for _ in range(10):
        # Each look is a request, which makes the session active again: look less often
        # than the timeout.
        time.sleep(1.5)
        if session_status(keyless, session) == 404:
            break
    else:
        raise AssertionError("an idle session was kept")


# --- the pure parts -------------------------------------------------------------------------


@given(
    owners=st.lists(st.sampled_from("abc"), max_size=30),
    client=st.sampled_from("abcd"),
    per_client=st.integers(1, 6),
    total=st.integers(1, 12),
)
def test_room_for_a_new_session_is_made_from_the_least_recently_used(
    owners: list[str], client: str, per_client: int, total: int
) -> None:
    limits = SessionLimits(total=total, per_client=per_client)
    # What a manager that applied the rule holds: within both bounds.
    held: list[tuple[str, str]] = []
    for number, owner in enumerate(owners):
        ending = set(sessions_to_end(held, owner, limits))
        held = [entry for entry in held if entry[0] not in ending] + [(f"s{number}", owner)]
    assert len(held) <= total
    assert all(sum(1 for _, o in held if o == c) <= per_client for c in "abc")

    ending = sessions_to_end(held, client, limits)
    kept = [entry for entry in held if entry[0] not in set(ending)]
    assert len(kept) + 1 <= total
    assert sum(1 for _, o in kept if o == client) + 1 <= per_client
    assert len(ending) == len(set(ending))
    # Only as many as needed end: the client's own least recently used, then the least
    # recently used of all.
    mine = [s for s, o in held if o == client]
    own = max(0, len(mine) - per_client + 1)
    assert ending[:own] == mine[:own]
    rest = [s for s, _ in held if s not in set(mine[:own])]
    assert ending[own:] == rest[: max(0, len(held) - own - total + 1)]


def test_the_connection_cap_leaves_room_for_the_servers_own_files() -> None:
    assert connection_cap(256, 1024) == 256
    assert connection_cap(256, 256) == 256 - FD_RESERVE
    assert connection_cap(256, 10) == 1


def test_a_connection_is_answered_without_deadline_only_once_its_request_is_in() -> None:
    import h11

    assert phase_of(h11.IDLE, h11.IDLE) is Phase.WAITING
    assert phase_of(h11.SEND_BODY, h11.SEND_RESPONSE) is Phase.BODY
    assert phase_of(h11.SEND_BODY, h11.DONE) is Phase.BODY  # answered early, body still due
    assert phase_of(h11.DONE, h11.SEND_RESPONSE) is Phase.ANSWERING
    assert phase_of(h11.DONE, h11.SEND_BODY) is Phase.ANSWERING
    assert phase_of(h11.MUST_CLOSE, h11.DONE) is Phase.WAITING
