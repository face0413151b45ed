"""Server counters in the Prometheus text format: requests and tokens per adapter, batch sizes, tokens/s."""

from __future__ import annotations

import collections
import threading
import time

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """Thread-safe counters; :meth:`render` writes them as Prometheus exposition text."""

    def __init__(self):
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: collections.Counter = collections.Counter()  # (endpoint, model, status)
        self.prompt_tokens: collections.Counter = collections.Counter()  # model
        self.completion_tokens: collections.Counter = collections.Counter()  # model
        self.latency_sum: collections.Counter = collections.Counter()  # model
        self.forwards = 0
        self.forward_rows = 0
        self.forward_seconds = 0.0
        self.batch_hist = [0] * (len(BATCH_BUCKETS) + 1)
        self.stream_ends: collections.Counter = collections.Counter()  # streams that did not finish, by why

    def stream_end(self, outcome: str) -> None:
        """Count a stream that ended early: ``client_gone`` (disconnected) or ``error``."""
        with self._lock:
            self.stream_ends[outcome] += 1

    def request(self, endpoint: str, model: str, status: int) -> None:
        """Count one answer, whatever its status."""
        with self._lock:
            self.requests[(endpoint, model, status)] += 1

    def tokens(self, model: str, prompt: int, completion: int, seconds: float) -> None:
        """Count a finished generation's tokens and latency."""
        with self._lock:
            self.prompt_tokens[model] += prompt
            self.completion_tokens[model] += completion
            self.latency_sum[model] += seconds

    def step(self, rows: int, tokens: int, seconds: float) -> None:
        """Count one forward of the scheduler (``rows`` in the batch, ``tokens`` new tokens)."""
        with self._lock:
            self.forwards += 1
            self.forward_rows += rows
            self.forward_seconds += seconds
            i = next((k for k, b in enumerate(BATCH_BUCKETS) if rows <= b), len(BATCH_BUCKETS))
            self.batch_hist[i] += 1

    def render(self, queue_depth: int, running: int, engine=None) -> str:
        """The exposition text (with ``engine``: its adapters' residency, loads, evictions and uses)."""
        with self._lock:
            lines = [
                "# TYPE tangentft_requests_total counter",
                *(f'tangentft_requests_total{{endpoint="{e}",model="{m}",status="{s}"}} {n}'
                  for (e, m, s), n in sorted(self.requests.items())),
                "# TYPE tangentft_prompt_tokens_total counter",
                *(f'tangentft_prompt_tokens_total{{model="{m}"}} {n}' for m, n in sorted(self.prompt_tokens.items())),
                "# TYPE tangentft_completion_tokens_total counter",
                *(f'tangentft_completion_tokens_total{{model="{m}"}} {n}' for m, n in sorted(self.completion_tokens.items())),
                "# TYPE tangentft_request_seconds_sum counter",
                *(f'tangentft_request_seconds_sum{{model="{m}"}} {v:.6f}' for m, v in sorted(self.latency_sum.items())),
                "# TYPE tangentft_request_tokens_per_second gauge",
                *(f'tangentft_request_tokens_per_second{{model="{m}"}} {n / self.latency_sum[m] if self.latency_sum[m] else 0.0:.3f}'
                  for m, n in sorted(self.completion_tokens.items())),
                "# TYPE tangentft_batch_rows histogram",
            ]
            acc = 0
            for b, n in zip((*BATCH_BUCKETS, "+Inf"), self.batch_hist, strict=True):
                acc += n
                lines.append(f'tangentft_batch_rows_bucket{{le="{b}"}} {acc}')
            generated = sum(self.completion_tokens.values())
            lines += [
                f"tangentft_batch_rows_sum {self.forward_rows}",
                f"tangentft_batch_rows_count {self.forwards}",
                "# TYPE tangentft_forward_seconds_total counter",
                f"tangentft_forward_seconds_total {self.forward_seconds:.6f}",
                "# TYPE tangentft_tokens_per_second gauge",
                f"tangentft_tokens_per_second {generated / self.forward_seconds if self.forward_seconds else 0.0:.3f}",
                "# TYPE tangentft_queue_depth gauge",
                f"tangentft_queue_depth {queue_depth}",
                "# TYPE tangentft_running_rows gauge",
                f"tangentft_running_rows {running}",
                "# TYPE tangentft_uptime_seconds gauge",
                f"tangentft_uptime_seconds {time.time() - self.started:.3f}",
                "# TYPE tangentft_stream_ended_early_total counter",
                *(f'tangentft_stream_ended_early_total{{reason="{r}"}} {n}' for r, n in sorted(self.stream_ends.items())),
            ]
        return "\n".join(lines + (residency(engine) if engine is not None else [])) + "\n"


def residency(engine) -> list[str]:
    """Adapter residency lines: registered, resident and their limit; per adapter resident (0/1), reads from
    disk, evictions and admitted requests (the base's requests under its own name)."""
    resident, limit = set(engine.resident), engine.max_resident
    loads, evictions, uses = dict(engine.loads), dict(engine.evictions), dict(engine.uses)
    return [
        "# TYPE tangentft_adapters_registered gauge", f"tangentft_adapters_registered {len(engine.adapters)}",
        "# TYPE tangentft_adapters_resident gauge", f"tangentft_adapters_resident {len(resident)}",
        "# TYPE tangentft_adapters_max_resident gauge", f"tangentft_adapters_max_resident {-1 if limit is None else limit}",
        "# TYPE tangentft_adapter_resident gauge",
        *(f'tangentft_adapter_resident{{adapter="{a}"}} {int(a in resident)}' for a in sorted(engine.adapters)),
        "# TYPE tangentft_adapter_loads_total counter",
        *(f'tangentft_adapter_loads_total{{adapter="{a}"}} {n}' for a, n in sorted(loads.items())),
        "# TYPE tangentft_adapter_evictions_total counter",
        *(f'tangentft_adapter_evictions_total{{adapter="{a}"}} {n}' for a, n in sorted(evictions.items())),
        "# TYPE tangentft_model_requests_total counter",
        *(f'tangentft_model_requests_total{{model="{a}"}} {n}' for a, n in sorted(uses.items())),
    ]
