"""tangentft's own routes: POST /v1/classify, the adapter registry (/v1/adapters), GET /health and /metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from ..errors import TangentError
from .bodies import AdapterRequest, ClassifyRequest
from .engine import AdapterConflict
from .http_errors import APIError, not_found
from .openai_routes import label_of
from .scheduler import QueueFull

router = APIRouter()


@router.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request):
    """Label-word scores f(x) ∈ R^K of the task model under the adapter, and the predicted label, per input."""
    request.state.model = body.model
    engine, scheduler = request.app.state.engine, request.app.state.scheduler
    label = label_of(request, body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or any(not t for t in texts):
        raise APIError(400, "input: give one or more non-empty strings", param="input")
    try:
        spec, scores = await on_worker(scheduler, lambda: engine.classify(body.model, texts, body.task), needs=label)
    except TangentError as exc:  # every refusal of classify is about the task it would score
        raise APIError(400, exc.message, param="task") from None
    except KeyError:  # unloaded while this call waited for the worker
        raise not_found("model", body.model, "model", engine.model_names()) from None
    words = [w.strip() for w in spec.label_words]
    data = []
    for i, row in enumerate(scores.tolist()):
        item = {"index": i, "scores": row}
        if spec.kind == "classification":
            k = max(range(len(row)), key=row.__getitem__)
            item.update(label=words[k], label_index=k)
        else:
            item.update(score=row[0])
        data.append(item)
    return {"object": "classification", "model": body.model, "task": spec.name, "kind": spec.kind,
            "labels": words, "data": data}


@router.get("/v1/adapters")
async def adapters(request: Request):
    """Every registered adapter, and whether it is resident now."""
    engine = request.app.state.engine
    return {"object": "list", "data": [adapter_json(a, a.name in engine.resident) for a in engine.adapters.values()]}


@router.post("/v1/adapters")
async def load_adapter(body: AdapterRequest, request: Request):
    """Register the adapter folder ``path`` as ``name`` (read and checked now, on the worker thread)."""
    engine, scheduler = request.app.state.engine, request.app.state.scheduler
    try:
        engine.check_name(body.name)
        if scheduler.draining(body.name):
            raise AdapterConflict(f"adapter '{body.name}' is being unloaded; load it again once it is gone")
    except AdapterConflict as exc:
        raise APIError(409, exc.message, param="name", code="adapter_conflict") from None
    except TangentError as exc:
        raise APIError(400, exc.message, param="name") from None
    try:
        info = await on_worker(scheduler, lambda: engine.load(body.name, body.path, scheduler.busy()))
    except AdapterConflict as exc:
        param = "name" if body.name in engine.adapters else "path"  # lost a race for the name, or another base
        raise APIError(409, exc.message, param=param, code="adapter_conflict") from None
    except TangentError as exc:
        raise APIError(400, exc.message, param="path") from None
    return adapter_json(info, info.name in engine.resident)


@router.delete("/v1/adapters/{name}")
async def unload_adapter(name: str, request: Request):
    """Stop serving adapter ``name`` once no running or waiting request uses it."""
    engine, scheduler = request.app.state.engine, request.app.state.scheduler
    if name not in engine.adapters or scheduler.draining(name):
        raise not_found("adapter", name, "name")
    await asyncio.wrap_future(scheduler.unload(name))
    return {"id": name, "object": "adapter", "deleted": True}


@router.get("/health")
async def health(request: Request):
    """Liveness, the models served, running rows and queue depth (no API key needed)."""
    engine, scheduler = request.app.state.engine, request.app.state.scheduler
    return {"status": "ok", "model": engine.name, "adapters": list(engine.adapters), "resident": list(engine.resident),
            "running": scheduler.running_rows, "queued": scheduler.queue_depth}


@router.get("/metrics")
async def metrics(request: Request):
    """The counters in Prometheus' text format."""
    state = request.app.state
    return PlainTextResponse(state.metrics.render(state.scheduler.queue_depth, state.scheduler.running_rows, state.engine),
                             media_type="text/plain; version=0.0.4")


async def on_worker(scheduler, fn, needs: str | None = None):
    """``fn()`` run on the scheduler's thread between steps; 429 when too many calls wait already."""
    try:
        future = scheduler.call(fn, needs=needs)
    except QueueFull as exc:
        raise APIError(429, f"server busy: {exc}; retry later", "rate_limit_error", code="rate_limit_exceeded") from None
    return await asyncio.wrap_future(future)


def adapter_json(a, resident: bool) -> dict:
    """An adapter as /v1/adapters lists it."""
    return {"id": a.name, "object": "adapter", "kind": a.kind, "path": a.path, "parameters": a.parameters,
            "task": a.task.name if a.task else None, "resident": resident}
