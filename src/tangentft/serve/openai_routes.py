"""The OpenAI-compatible routes: GET /v1/models, POST /v1/completions and /v1/chat/completions (streamed as
server-sent events or whole), each request one :class:`Generation` on the app's scheduler."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from .bodies import ChatMessage, ChatRequest, CompletionRequest, check_fields
from .http_errors import APIError, error_body, not_found
from .scheduler import Generation, QueueFull

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the rest of the context
DISCONNECT_POLL_S = 0.5
CLIENT_GONE = 499  # nginx's "client closed request": counted in /metrics, never sent

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request):
    """OpenAI's model list: the base, then every registered adapter."""
    engine, created = request.app.state.engine, int(request.app.state.metrics.started)
    data = [{"id": engine.name, "object": "model", "created": created, "owned_by": "tangentft", "kind": "base"}]
    data += [{"id": a.name, "object": "model", "created": created, "owned_by": "tangentft", "kind": a.kind,
              "parent": engine.name} for a in engine.adapters.values()]
    return {"object": "list", "data": data}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    """OpenAI's text completion of one prompt under the named adapter (or the base)."""
    request.state.model = body.model
    check_fields(body)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise APIError(400, "prompt: exactly one prompt string per request", param="prompt")
    prompt_ids = request.app.state.engine.tokenizer(prompts[0])["input_ids"]
    echo = prompts[0] if body.echo else ""
    return await generate(request, body, prompt_ids, (body.max_tokens, "max_tokens", DEFAULT_MAX_TOKENS),
                          _CompletionShape(echo), "prompt")


@router.post("/v1/chat/completions")
async def chat(body: ChatRequest, request: Request):
    """OpenAI's chat completion: the messages through the chat template, then one generation."""
    request.state.model = body.model
    check_fields(body)
    tok = request.app.state.engine.tokenizer
    prompt_ids = tok(chat_prompt(tok, body.messages), add_special_tokens=False)["input_ids"]
    limit = ((body.max_completion_tokens, "max_completion_tokens") if body.max_completion_tokens is not None
             else (body.max_tokens, "max_tokens"))
    return await generate(request, body, prompt_ids, (*limit, None), _ChatShape(), "messages")


def chat_prompt(tok, messages: list[ChatMessage]) -> str:
    """The prompt text: the tokenizer's chat template when it has one, else ``role: content`` lines and
    ``assistant:`` to answer."""
    msgs = [{"role": m.role, "content": m.text(f"messages.{i}")} for i, m in enumerate(messages)]
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:"


def label_of(request: Request, model: str) -> str:
    """The row label of ``model`` (an adapter name or the base); 404 when it is unknown or being unloaded."""
    engine, scheduler = request.app.state.engine, request.app.state.scheduler
    if scheduler.draining(model):
        raise APIError(404, f"model '{model}' is being unloaded", "not_found_error", "model", "model_not_found")
    try:
        return engine.resolve(model)
    except KeyError:
        raise not_found("model", model, "model", engine.model_names()) from None


def check_length(context: int, prompt_ids: list[int], limit: tuple[int | None, str, int | None], prompt_param: str) -> int:
    """The number of tokens to generate: ``limit`` = (requested, its field name, default or None for the rest
    of the context), checked against the context length."""
    requested, param, default = limit
    n = len(prompt_ids)
    if n == 0:
        raise APIError(400, "the prompt is empty", param=prompt_param)
    if n >= context:
        raise APIError(400, f"the prompt has {n} tokens; the model's context is {context} tokens",
                       param=prompt_param, code="context_length_exceeded")
    max_tokens = requested if requested is not None else (default if default is not None else context - n)
    if max_tokens <= 0:
        raise APIError(400, f"{param} = {max_tokens}: must be at least 1", param=param)
    if n + max_tokens > context:
        raise APIError(400, f"{param} = {max_tokens} plus the prompt's {n} tokens exceeds the context of "
                       f"{context} tokens", param=param, code="context_length_exceeded")
    return max_tokens


def stops(stop) -> list[str]:
    """``stop`` as a list of at most 4 non-empty strings."""
    out = [stop] if isinstance(stop, str) else list(stop or [])
    if len(out) > 4 or any(not s for s in out):
        raise APIError(400, "stop: at most 4 non-empty strings", param="stop")
    return out


def submit(request: Request, label: str, prompt_ids: list[int], max_tokens: int, body) -> tuple[Generation, asyncio.Queue]:
    """Queue the generation; its events arrive on the returned asyncio queue. 429 when the queue is full."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def emit(kind, payload):
        loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

    gen = Generation(label, prompt_ids, max_tokens, emit, 1.0 if body.temperature is None else body.temperature,
                     1.0 if body.top_p is None else body.top_p, stops(body.stop), body.seed,
                     request.app.state.engine.tokenizer.eos_token_id)
    try:
        request.app.state.scheduler.submit(gen)
    except QueueFull as exc:
        raise APIError(429, f"server busy: {exc}; retry later", "rate_limit_error", code="rate_limit_exceeded") from None
    return gen, events


def usage(gen: Generation) -> dict:
    """OpenAI's usage object."""
    n, m = len(gen.prompt_ids), len(gen.out_ids)
    return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}


async def generate(request: Request, body, prompt_ids: list[int], limit: tuple, shape, prompt_param: str):
    """Run one generation request: a JSON answer, or an SSE stream when ``body.stream``."""
    engine, metrics = request.app.state.engine, request.app.state.metrics
    label = label_of(request, body.model)
    max_tokens = check_length(engine.context, prompt_ids, limit, prompt_param)
    gen, events = submit(request, label, prompt_ids, max_tokens, body)
    rid, created = f"{shape.prefix}-{uuid.uuid4().hex[:24]}", int(time.time())

    def finished():
        gen.cancelled = gen.finish_reason is None  # the client went away: the row leaves the batch
        metrics.tokens(body.model, len(gen.prompt_ids), len(gen.out_ids), time.perf_counter() - gen.submitted)

    if body.stream:
        options = body.stream_options or {}
        return StreamingResponse(_events(gen, events, shape, (rid, created, body.model), bool(options.get("include_usage")),
                                         metrics, finished),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        event = await _outcome(events, request)
        if event is None:  # the client went away before the answer: nobody to answer
            return Response(status_code=CLIENT_GONE)
        if event[0] == "error":
            raise APIError(500, str(event[1]), "server_error")
    finally:
        finished()
    return shape.full(rid, created, body.model, gen.text, gen.finish_reason, usage(gen))


async def _outcome(events: asyncio.Queue, request: Request):
    """The generation's last event (``done`` or ``error``; text pieces are skipped, the answer is whole), or
    None once the client has disconnected — checked every DISCONNECT_POLL_S, so an abandoned request leaves
    the queue or batch instead of being served to nobody."""
    loop = asyncio.get_running_loop()
    checked = loop.time()
    getter = asyncio.ensure_future(events.get())
    while True:
        done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
        if done:
            event = getter.result()
            if event[0] != "text":
                return event
            getter = asyncio.ensure_future(events.get())
        if loop.time() - checked >= DISCONNECT_POLL_S:
            checked = loop.time()
            if await request.is_disconnected():
                getter.cancel()
                return None


async def _events(gen: Generation, events: asyncio.Queue, shape, ident: tuple, include_usage: bool, metrics, finished):
    """The SSE stream of one generation: text chunks, the finish chunk, usage when asked, ``[DONE]``."""
    outcome = "client_gone"
    try:
        first = True
        while True:
            kind, payload = await events.get()
            if kind == "text":
                yield _sse(shape.chunk(*ident, payload, None, first))
                first = False
            elif kind == "done":
                yield _sse(shape.chunk(*ident, "", payload, first))
                if include_usage:
                    yield _sse({**shape.chunk(*ident, "", None, False), "choices": [], "usage": usage(gen)})
                yield "data: [DONE]\n\n"
                outcome = "done"
                return
            else:
                outcome = "error"
                yield _sse(error_body(str(payload), "server_error"))
                return
    finally:
        finished()
        if outcome != "done":
            metrics.stream_end(outcome)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


class _CompletionShape:
    """Completion objects; ``echo``: the prompt text, put before the completion (OpenAI's ``echo``)."""

    prefix = "cmpl"

    def __init__(self, echo: str = ""):
        self.echo = echo

    def chunk(self, rid, created, model, text, finish, first):
        text = self.echo + text if first else text
        return {"id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

    def full(self, rid, created, model, text, finish, usage):
        return {"id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"text": self.echo + text, "index": 0, "logprobs": None, "finish_reason": finish}],
                "usage": usage}


class _ChatShape:
    prefix = "chatcmpl"

    def chunk(self, rid, created, model, text, finish, first):
        delta = ({"role": "assistant"} if first else {}) | ({"content": text} if text or first else {})
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    def full(self, rid, created, model, text, finish, usage):
        return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                             "logprobs": None}], "usage": usage}
