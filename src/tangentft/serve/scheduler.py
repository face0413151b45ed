"""Continuous batching of generation requests for different adapters on one engine, in one worker thread.

What it does, exactly:

1. Requests wait in a bounded FIFO (``max_queue``; full -> :class:`QueueFull`, HTTP 429).
2. When nothing is running, the worker waits for a request, then keeps collecting for ``batch_wait_ms``
   so that concurrent requests start together.
3. Each iteration admits waiting requests up to ``max_batch`` running rows: their prompts are left-padded
   and prefilled in ONE mixed-adapter forward (each row its own adapter), giving each its first token;
   their KV caches are then joined to the running batch's cache (see :mod:`.kvcache`).
4. One decode forward then advances every running row by one token, each row under its own adapter, with
   its own attention mask and positions over the shared per-row KV cache.
5. A row that finishes (stop string, EOS, ``max_tokens``) or whose client went away leaves the batch
   before the next step; newcomers join at the next iteration (continuous batching).

Tokens are streamed to each request as they are produced (``emit`` callbacks, thread-safe on the caller
side). Adapter loads/unloads and classify calls run on the same thread between steps (:meth:`call`), so a
forward never sees a half-loaded adapter; an unload waits until no running or waiting row uses the adapter.
"""

from __future__ import annotations

import collections
import concurrent.futures
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .decoding import next_token
from .engine import Engine
from .kvcache import join, select_rows


class QueueFull(Exception):
    """The waiting queue holds ``max_queue`` requests already."""


@dataclass
class Generation:
    """One generation request and its progress. ``emit(kind, payload)`` receives ``("text", str)`` pieces,
    then one ``("done", finish_reason)`` or ``("error", message)``."""

    label: str  # adapter name or __base__
    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[str, object], None]
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    eos: int | None = None
    cancelled: bool = False
    out_ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the completion already emitted
    text: str = ""
    submitted: float = 0.0
    first_token: float | None = None
    finished: float | None = None
    finish_reason: str | None = None

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed if self.seed is not None else random.getrandbits(63))


class Scheduler:
    """Batches :class:`Generation` requests over adapters on ``engine``; see the module docstring."""

    def __init__(self, engine: Engine, max_batch: int = 16, max_queue: int = 64, batch_wait_ms: float = 5.0,
                 on_step: Callable[[int, int, float], None] | None = None):
        self.engine = engine
        self.tokenizer = engine.worker_tokenizer
        self.max_batch, self.max_queue, self.batch_wait = max_batch, max_queue, batch_wait_ms / 1000.0
        self.on_step = on_step  # (rows, new tokens, seconds) after every forward, for metrics
        self._waiting: collections.deque[Generation] = collections.deque()
        self._calls: collections.deque[tuple[Callable, concurrent.futures.Future, str | None]] = collections.deque()
        self._draining: dict[str, list[concurrent.futures.Future]] = {}
        self._cond = threading.Condition()
        self._running: list[Generation] = []
        self._cache = None
        self._mask: torch.Tensor | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="tangentft-scheduler", daemon=True)

    # -- public, any thread ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker after its current step; requests still running or waiting get an error."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        with self._cond:
            left, self._waiting, self._running = [*self._running, *self._waiting], collections.deque(), []
            calls, self._calls = list(self._calls), collections.deque()
        for g in left:
            if g.finish_reason is None:
                g.emit("error", "the server is shutting down")
        for _fn, fut, _needs in calls:
            fut.cancel()

    def submit(self, gen: Generation) -> None:
        """Queue a request; raises :class:`QueueFull` when ``max_queue`` requests are already waiting."""
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (max_queue {self.max_queue})")
            gen.submitted = time.perf_counter()
            self._waiting.append(gen)
            self._cond.notify_all()

    def call(self, fn: Callable[[], object], needs: str | None = None) -> concurrent.futures.Future:
        """Run ``fn`` on the worker thread between two steps, once adapter ``needs`` (a row label) is resident;
        the future holds its result or exception. Raises :class:`QueueFull` when ``max_queue`` calls wait."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if len(self._calls) >= self.max_queue:
                raise QueueFull(f"{len(self._calls)} calls are waiting (max_queue {self.max_queue})")
            self._calls.append((fn, fut, needs))
            self._cond.notify_all()
        return fut

    def busy(self) -> set[str]:
        """Adapters the running batch uses (worker thread): they cannot be evicted now."""
        return {g.label for g in self._running}

    def unload(self, name: str) -> concurrent.futures.Future:
        """Unload adapter ``name`` once no running or waiting request uses it (new requests are refused meanwhile)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._draining.setdefault(name, []).append(fut)
            self._cond.notify_all()
        return fut

    def draining(self, name: str) -> bool:
        """True while adapter ``name`` is being unloaded."""
        return name in self._draining

    @property
    def queue_depth(self) -> int:
        """Requests waiting to be admitted."""
        return len(self._waiting)

    @property
    def running_rows(self) -> int:
        """Rows in the running batch."""
        return len(self._running)

    # -- worker ------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stop or self._waiting or self._calls or self._running or self._draining):
                    self._cond.wait(timeout=0.5)
                if self._stop:
                    return
                idle = not self._running and bool(self._waiting)
            if idle and self.batch_wait > 0:
                time.sleep(self.batch_wait)  # let concurrent requests arrive and start together
            self._run_calls()
            self._finish_drains()
            admitted: list[Generation] = []
            try:
                admitted = self._admit()
                if admitted:
                    self._prefill(admitted)
                if self._running:
                    self._decode()
            except Exception as exc:  # a failed forward ends the batch it ran, never the server
                message = f"generation failed: {type(exc).__name__}: {exc}"
                for g in {id(g): g for g in self._running + admitted}.values():
                    if g.finish_reason is None:
                        g.emit("error", message)
                self._running, self._cache, self._mask = [], None, None
            if not self._running and self._draining and not self._waiting:
                self._finish_drains()

    def _run_calls(self) -> None:
        # one call per decode step while rows are running: a burst of classify calls would otherwise run
        # back to back and starve generation (seen at 128 users: 6 completions in 5 minutes)
        budget = 1 if self._running else len(self._calls)
        for _ in range(len(self._calls)):
            if budget == 0:
                return
            with self._cond:
                fn, fut, needs = self._calls.popleft()
            try:
                ready = needs is None or self.engine.ensure(needs, self.busy())
            except BaseException as exc:  # the adapter could not be read again
                fut.set_exception(exc)
                continue
            if not ready:  # every resident adapter is in use: after the next step
                with self._cond:
                    self._calls.append((fn, fut, needs))
                continue
            budget -= 1
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # handed to the caller, who turns it into an HTTP error
                    fut.set_exception(exc)

    def _finish_drains(self) -> None:
        with self._cond:
            busy = {g.label for g in self._running} | {g.label for g in self._waiting}
            done = [n for n in self._draining if n not in busy]
            futures = {n: self._draining.pop(n) for n in done}
        for name, futs in futures.items():
            try:
                self.engine.unload(name)
                for f in futs:
                    f.set_result(None)
            except BaseException as exc:
                for f in futs:
                    f.set_exception(exc)

    def _admit(self) -> list[Generation]:
        """Waiting requests for the free rows, in order, whose adapters can be made resident now; the others
        keep their place in the queue."""
        candidates = []
        with self._cond:
            while self._waiting and len(self._running) + len(candidates) < self.max_batch:
                g = self._waiting.popleft()
                if not g.cancelled:
                    candidates.append(g)
        busy, out, blocked = self.busy(), [], []
        for g in candidates:
            try:
                ready = self.engine.ensure(g.label, busy)
            except Exception as exc:  # the adapter's files changed or vanished since it was registered
                g.emit("error", f"adapter '{g.label}' could not be read again: {type(exc).__name__}: {exc}")
                continue
            if ready:
                out.append(g)
                busy.add(g.label)
            else:
                blocked.append(g)
        if blocked:
            with self._cond:
                self._waiting.extendleft(reversed(blocked))
        return out

    def _prefill(self, gens: list[Generation]) -> None:
        length = max(len(g.prompt_ids) for g in gens)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (length - len(g.prompt_ids)) + g.prompt_ids for g in gens])
        mask = torch.tensor([[0] * (length - len(g.prompt_ids)) + [1] * len(g.prompt_ids) for g in gens])
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        t0 = time.perf_counter()
        logits, cache = self.engine.forward(ids, mask, pos, None, [g.label for g in gens])
        self._report(len(gens), len(gens), time.perf_counter() - t0)
        if self._cache is None:
            self._cache, self._mask = cache, mask
        else:
            self._mask = join(self._cache, self._mask, cache, mask)
        self._running.extend(gens)
        self._advance(gens, logits)

    def _decode(self) -> None:
        rows = self._running
        ids = torch.tensor([[g.out_ids[-1]] for g in rows])
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(rows), 1)], dim=1)
        pos = torch.tensor([[len(g.prompt_ids) + len(g.out_ids) - 1] for g in rows])
        t0 = time.perf_counter()
        logits, self._cache = self.engine.forward(ids, self._mask, pos, self._cache, [g.label for g in rows])
        self._report(len(rows), len(rows), time.perf_counter() - t0)
        self._advance(rows, logits)

    def _report(self, rows: int, tokens: int, seconds: float) -> None:
        if self.on_step is not None:
            self.on_step(rows, tokens, seconds)

    def _advance(self, gens: list[Generation], logits: torch.Tensor) -> None:
        """Sample one token for each row of ``gens`` (rows of ``logits`` in order), stream, retire finished rows."""
        for g, row_logits in zip(gens, logits, strict=True):
            if g.cancelled:
                continue
            tok = next_token(row_logits, g.temperature, g.top_p, g.generator)
            g.out_ids.append(tok)
            if g.first_token is None:
                g.first_token = time.perf_counter()
            self._stream(g, eos=g.eos is not None and tok == g.eos)
        keep = [i for i, g in enumerate(self._running) if not g.cancelled and g.finish_reason is None]
        if len(keep) < len(self._running):
            self._running = [self._running[i] for i in keep]
            if keep:
                self._mask = select_rows(self._cache, self._mask, torch.tensor(keep))
            else:
                self._cache, self._mask = None, None

    def _stream(self, g: Generation, eos: bool) -> None:
        ids = g.out_ids[:-1] if eos else g.out_ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        reason = "stop" if eos else None
        cut = min((i for i in (text.find(s) for s in g.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        elif reason is None and len(g.out_ids) >= g.max_tokens:
            reason = "length"
        g.text = text
        if reason is None:
            # hold back what could still become a stop string, and an unfinished multi-byte character
            safe = len(text) - max((len(s) - 1 for s in g.stop), default=0)
            while safe > g.sent and text[safe - 1] == "\ufffd":
                safe -= 1
        else:
            safe = len(text)
        if safe > g.sent:
            g.emit("text", text[g.sent : safe])
            g.sent = safe
        if reason is not None:
            g.finish_reason, g.finished = reason, time.perf_counter()
            g.emit("done", reason)
