"""The emulator's HTTP surface: the Messages API routes and the /_emulator/ controls."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from corpus_cache.models.catalog import Catalog
from corpus_cache.models.pricing import Usage, cost_usd

from .control import Fault
from .errors import ApiError, invalid, not_found
from .latency import wait_until
from .service import Completion, EmulatorService
from .sse import error_event, message_events

MAX_BODY_BYTES = 32 * 1024 * 1024

Handler = Callable[[Request], Awaitable[Response]]


def _error_response(error: ApiError, request_id: str) -> JSONResponse:
    headers = {"request-id": request_id, "x-corpus-cache-emulator": "1", **error.headers}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _workspace(request: Request) -> str:
    """Caches are isolated per key, the emulator's stand-in for a workspace."""
    key = request.headers.get("x-api-key", "").strip()
    if not key:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
    if not key:
        raise ApiError(401, "authentication_error", "x-api-key header is required")
    return hashlib.sha256(key.encode()).hexdigest()[:16]


async def _read_json(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "request_too_large", "Request exceeds the maximum size of 32 MB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "request_too_large", "Request exceeds the maximum size of 32 MB")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"request body is not valid JSON: {exc}") from None


def build_app(
    catalog: Catalog, service: EmulatorService | None = None, *, controls: bool = True
) -> Starlette:
    """The Messages API routes, and the /_emulator/ controls when `controls` (they reveal
    every request's body and can make the next request fail)."""
    emulator = service or EmulatorService(catalog)

    def api(handler: Callable[[Request, str], Awaitable[Response]]) -> Handler:
        """Authentication, version header, error faults and error shapes for /v1 routes."""

        async def wrapped(request: Request) -> Response:
            request_id = emulator.next_id("req")
            workspace: str | None = None
            try:
                workspace = _workspace(request)
                if not request.headers.get("anthropic-version"):
                    raise invalid("anthropic-version: header is required")
                fault = emulator.faults.take(request.url.path, "error")
                if fault is not None:
                    raise fault.to_error()
                if emulator.faults.take(request.url.path, "malformed") is not None:
                    emulator.log.record(
                        {"id": request_id, "path": request.url.path, "status": 200,
                         "time": emulator.clock.now(), "workspace": workspace, "malformed": True}
                    )  # fmt: skip
                    return Response(
                        b'{"type": "message", "id": "msg_', media_type="application/json"
                    )
                response = await handler(request, workspace)
            except ApiError as error:
                emulator.log.record(
                    {"id": request_id, "path": request.url.path, "status": error.status,
                     "time": emulator.clock.now(), "workspace": workspace,
                     "error": error.body()["error"], **error.details}
                )  # fmt: skip
                return _error_response(error, request_id)
            response.headers["request-id"] = request_id
            response.headers["x-corpus-cache-emulator"] = "1"
            return response

        return wrapped

    async def delay_for(path: str) -> None:
        fault: Fault | None = emulator.faults.take(path, "delay")
        if fault is not None:
            await anyio.sleep(fault.delay)

    def billed(completion: Completion, output_tokens: int) -> dict[str, Any]:
        """What a request is billed: its prompt, and `output_tokens`, in tokens and dollars
        at the model's list prices (docs/emulator.md, "What the log says was billed")."""
        usage = {**completion.message["usage"], "output_tokens": output_tokens}
        priced = Usage(
            input_tokens=usage["input_tokens"],
            cache_read_tokens=usage["cache_read_input_tokens"],
            cache_write_5m_tokens=usage["cache_creation"]["ephemeral_5m_input_tokens"],
            cache_write_1h_tokens=usage["cache_creation"]["ephemeral_1h_input_tokens"],
            output_tokens=output_tokens,
        )
        spec = emulator.catalog.get(completion.message["model"])
        return {"usage": usage, "usd": round(cost_usd(priced, spec), 9)}

    def record(
        completion: Completion,
        body: Any,
        stream: bool,
        work: float,
        cut: Fault | None,
        timing: tuple[float, float] | None,
    ) -> dict[str, Any]:
        prompt_usage = completion.message["usage"]
        entry: dict[str, Any] = {
            "id": completion.message["id"],
            "path": "/v1/messages",
            "status": 200,
            "time": emulator.clock.now(),
            "workspace": completion.workspace,
            "model": completion.message["model"],
            "stream": stream,
            "usage": prompt_usage,
            "hit_position": completion.outcome.hit_position,
            "written_positions": list(completion.outcome.written_positions),
            "emulator_seconds": round(work, 6),
            # A response that has begun runs to its end whether or not the client listens,
            # and is billed in full; one the emulator itself cuts is corrected at the cut.
            "billed": billed(completion, prompt_usage["output_tokens"]),
            **({"truncated": cut.ending} if cut is not None else {}),
            "body": body,
        }
        admission = completion.admission
        if admission is not None:
            entry["limits"] = {
                "class": admission.bucket_class,
                "before": admission.before,
                "after": admission.after,
            }
        if timing is not None:
            entry["latency"] = {"first_token": round(timing[0], 6), "output": round(timing[1], 6)}
        emulator.log.record(entry)
        return entry

    def finish(completion: Completion, entry: dict[str, Any]) -> None:
        """The response has ended: its output-token reservation is corrected."""
        settled = emulator.finish(completion, completion.message["usage"]["output_tokens"])
        if settled and "limits" in entry:
            entry["limits"]["settled"] = settled

    async def messages(request: Request, workspace: str) -> Response:
        started = time.perf_counter()
        body = await _read_json(request)
        parsed = emulator.parse(body)
        completion = emulator.complete(workspace, parsed)  # a rate limit refuses here
        work = time.perf_counter() - started  # what the emulator itself costs, waits aside
        timing = emulator.timing(completion)
        headers = completion.admission.headers if completion.admission is not None else None
        # Until the response begins (its first token), the entries it writes stay unreadable.
        first_token_at = completion.started + timing[0] if timing is not None else 0.0
        try:
            await delay_for(request.url.path)
            if timing is not None and not parsed.stream:
                await wait_until(emulator.clock, first_token_at)
        except BaseException:
            emulator.abandon(completion)
            raise
        if not parsed.stream:
            emulator.begin(completion)
            entry = record(completion, body, False, work, None, timing)
            try:
                if timing is not None:
                    await wait_until(emulator.clock, first_token_at + timing[1])
            finally:
                finish(completion, entry)
            return JSONResponse(completion.message, headers=headers)

        cut = emulator.faults.take(request.url.path, "truncated")

        async def events() -> AsyncIterator[bytes]:
            entry: dict[str, Any] | None = None
            try:
                if timing is not None:
                    await wait_until(emulator.clock, first_token_at)
                emulator.begin(completion)
                entry = record(completion, body, True, work, cut, timing)
                chunks = list(message_events(completion.message))
                paced = len(chunks) - 1
                if cut is not None:
                    chunks = chunks[: max(1, len(chunks) // 2)]  # message_start and some text
                for index, event in enumerate(chunks):
                    if timing is not None and index > 0:  # output at a steady rate
                        await wait_until(emulator.clock, first_token_at + timing[1] * index / paced)
                    yield event
                if cut is None:
                    return
                # The emulator's own failure stops the answer where it is cut: it bills the
                # output its stream had reported (message_start's), as the client knows it.
                reported = min(1, completion.message["usage"]["output_tokens"])
                entry["billed"] = billed(completion, reported)
                await anyio.sleep(cut.delay)
                if cut.ending == "error":
                    yield error_event(cut.error_type, cut.message)
                elif cut.ending == "drop":
                    raise ConnectionAbortedError("the stream was cut by an injected fault")
            finally:
                if entry is None:
                    emulator.abandon(completion)
                else:
                    finish(completion, entry)

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def count_tokens(request: Request, workspace: str) -> Response:
        body = await _read_json(request)
        result = emulator.count_tokens(body)
        admission = emulator.admit_count(workspace, body.get("model"))
        await delay_for(request.url.path)
        entry: dict[str, Any] = {
            "id": emulator.next_id("count"), "path": request.url.path, "status": 200,
            "time": emulator.clock.now(), "workspace": workspace, "model": body.get("model"),
            "input_tokens": result["input_tokens"], "body": body,
        }  # fmt: skip
        if admission is not None:
            entry["limits"] = {
                "class": admission.bucket_class,
                "before": admission.before,
                "after": admission.after,
            }
        emulator.log.record(entry)
        return JSONResponse(result, headers=admission.headers if admission is not None else None)

    async def list_models(request: Request, workspace: str) -> Response:
        raw_limit = request.query_params.get("limit", "20")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
            raise invalid("limit: Input should be an integer between 1 and 1000")
        after = request.query_params.get("after_id")
        return JSONResponse(emulator.list_models(int(raw_limit), after))

    async def get_model(request: Request, workspace: str) -> Response:
        return JSONResponse(emulator.get_model(request.path_params["model_id"]))

    async def control_json(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise invalid(f"not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise invalid("expected a JSON object")
        return value

    def control(handler: Callable[[Request], Awaitable[Any]]) -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                return JSONResponse(await handler(request))
            except ApiError as error:
                return _error_response(error, emulator.next_id("req"))

        return wrapped

    async def clock(request: Request) -> Any:
        if request.method == "POST":
            emulator.clock.apply(await control_json(request))
        return emulator.clock.describe()

    async def reset(request: Request) -> Any:
        emulator.reset()
        return {"reset": True}

    async def faults(request: Request) -> Any:
        if request.method == "POST":
            emulator.faults.add(await control_json(request))
        elif request.method == "DELETE":
            emulator.faults.clear()
        return {"faults": emulator.faults.describe()}

    async def limits(request: Request) -> Any:
        if request.method == "POST":
            emulator.set_limits(await control_json(request))
        return emulator.describe_limits()

    async def latency(request: Request) -> Any:
        if request.method == "POST":
            emulator.set_latency(await control_json(request))
        return emulator.describe_latency()

    async def models(request: Request) -> Any:
        if request.method == "POST":
            emulator.set_models(await control_json(request))
        return emulator.describe_models()

    async def request_log(request: Request) -> Any:
        limit = request.query_params.get("limit", "100")
        bodies = request.query_params.get("bodies", "0") in ("1", "true")
        return {
            "requests": emulator.log.recent(int(limit) if limit.isdigit() else 100, bodies),
            "counts": dict(emulator.log.counts),
        }

    async def cache_state(request: Request) -> Any:
        workspace = _workspace(request)
        return {"entries": emulator.cache.state(workspace, emulator.clock.now())}

    routes = [
        Route("/v1/messages", api(messages), methods=["POST"]),
        Route("/v1/messages/count_tokens", api(count_tokens), methods=["POST"]),
        Route("/v1/models", api(list_models), methods=["GET"]),
        Route("/v1/models/{model_id:path}", api(get_model), methods=["GET"]),
    ]
    control_routes = [
        Route("/_emulator/clock", control(clock), methods=["GET", "POST"]),
        Route("/_emulator/reset", control(reset), methods=["POST"]),
        Route("/_emulator/faults", control(faults), methods=["GET", "POST", "DELETE"]),
        Route("/_emulator/limits", control(limits), methods=["GET", "POST"]),
        Route("/_emulator/latency", control(latency), methods=["GET", "POST"]),
        Route("/_emulator/models", control(models), methods=["GET", "POST"]),
        Route("/_emulator/log", control(request_log), methods=["GET"]),
        Route("/_emulator/cache", control(cache_state), methods=["GET"]),
    ]

    async def no_route(request: Request, exc: Exception) -> Response:
        return _error_response(not_found(f"no route {request.url.path}"), emulator.next_id("req"))

    app = Starlette(
        routes=routes + control_routes if controls else routes,
        exception_handlers={404: no_route},
    )
    app.state.emulator = emulator
    return app
