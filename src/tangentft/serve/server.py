"""Build the served app from a model name and adapter folders, and run it under uvicorn."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ..errors import TangentError
from .api import create_app
from .engine import Engine

LOOPBACK = "127.0.0.1"
GRACE_S = 30


def _name_path(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise TangentError(f"adapter '{spec}': write NAME=PATH, e.g. sst2=runs/sst2/adapter")
    return name.strip(), path.strip()


def build_app(model: str, adapters: Iterable[str], *, seed: int = 0, api_key: str | None = None,
              max_batch: int = 16, max_queue: int = 64, batch_wait_ms: float = 5.0, max_resident: int | None = None):
    """Load ``model`` and the ``adapters``, each ``NAME=PATH`` as ``serve --adapter`` takes it, at most
    ``max_resident`` of them in memory at once (the others read from disk on demand, least recently used evicted);
    returns (app, engine)."""
    from ..models.registry import load_model

    if max_batch < 1 or max_queue < 1 or not math.isfinite(batch_wait_ms) or batch_wait_ms < 0:
        raise TangentError(f"max_batch = {max_batch}, max_queue = {max_queue}, batch_wait_ms = {batch_wait_ms}: "
                           "batch and queue must be at least 1, the wait finite and non-negative")
    if not -(2**63) <= seed < 2**63:
        raise TangentError(f"seed = {seed}: must fit in 64 bits (|seed| < 2**63)")
    if max_resident is not None and max_resident < 1:
        raise TangentError(f"at most {max_resident} adapters resident: keep at least 1 (or set no limit)")
    engine = Engine(load_model(model, seed=seed), max_resident=max_resident)
    for name, path in (_name_path(spec) for spec in adapters):
        engine.load(name, path)
    app = create_app(engine, api_key=api_key, max_batch=max_batch, max_queue=max_queue, batch_wait_ms=batch_wait_ms)
    return app, engine


def run(app, host: str = LOOPBACK, port: int = 8000, log_level: str = "warning") -> None:
    """Serve ``app`` with uvicorn until interrupted (one process: the model lives in this process's memory)."""
    import uvicorn

    # on SIGTERM uvicorn stops accepting, lets in-flight requests finish for up to GRACE_S, then the scheduler
    # stops and answers whatever still waits with an error
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1, timeout_graceful_shutdown=GRACE_S)
