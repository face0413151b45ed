"""The HTTP app (FastAPI on uvicorn): the OpenAI-compatible routes (:mod:`.openai_routes`), tangentft's own
(:mod:`.native_routes`), errors in OpenAI's shape (:mod:`.http_errors`), the API key check and a count of
every answer by route, model and status."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI
from starlette.routing import Match

from . import native_routes, openai_routes
from .counters import Metrics
from .engine import Engine
from .http_errors import APIError, add_error_handlers
from .scheduler import Scheduler

OPEN_PATHS = {"/health"}  # answered without the API key
MAX_BODY_BYTES = 1 << 20  # a full 8k-token context is ~40 kB of JSON; far larger bodies are refused unread


def create_app(engine: Engine, *, api_key: str | None = None, max_batch: int = 16, max_queue: int = 64,
               batch_wait_ms: float = 5.0) -> FastAPI:
    """The ASGI app serving ``engine``; the scheduler thread starts and stops with the app's lifespan."""
    metrics = Metrics()
    scheduler = Scheduler(engine, max_batch=max_batch, max_queue=max_queue, batch_wait_ms=batch_wait_ms,
                          on_step=metrics.step)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="tangentft serve", lifespan=lifespan)
    app.state.engine, app.state.scheduler, app.state.metrics = engine, scheduler, metrics
    add_error_handlers(app)
    app.include_router(openai_routes.router)
    app.include_router(native_routes.router)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    if api_key:
        app.add_middleware(APIKey, key=api_key)
    # added last: outermost, so it counts the 401s too
    app.add_middleware(CountAnswers, metrics=metrics, routes=[*openai_routes.router.routes, *native_routes.router.routes])
    return app


class APIKey:
    """ASGI middleware: 401 unless ``Authorization: Bearer KEY`` (every path but :data:`OPEN_PATHS`)."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            if dict(scope["headers"]).get(b"authorization", b"") != self.expected:
                response = APIError(401, "missing or wrong API key (Authorization: Bearer …)", code="invalid_api_key").response()
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, by its Content-Length or, without one, as it
    arrives (the body is read here, then handed on whole: bodies are small)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = APIError(413, f"request body larger than {self.limit} bytes", code="request_too_large").response()
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await too_large(scope, receive, send)
        body, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
            if sum(map(len, body)) > self.limit:
                return await too_large(scope, receive, send)
        whole = {"type": "http.request", "body": b"".join(body), "more_body": False}

        async def replay():
            nonlocal whole
            if whole is not None:
                message, whole = whole, None
                return message
            return await receive()  # after the body: waits for the disconnect, as streaming responses need

        await self.app(scope, replay, send)


class CountAnswers:
    """ASGI middleware: counts every answer by route name, model (when the body named one) and HTTP status,
    500 for a failure no handler answered."""

    def __init__(self, app, metrics: Metrics, routes: list):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.request(self.route_name(scope), scope.get("state", {}).get("model", ""), status)

    def route_name(self, scope) -> str:
        """The name of the route ``scope`` asks for (matched here too: a 401 is answered before routing)."""
        if "route" in scope:
            return scope["route"].name
        return next((r.name for r in self.routes if r.matches(scope)[0] == Match.FULL), "unrouted")
