"""``tangentft serve``: an OpenAI-compatible HTTP server for one base model and many LoRA / S2FT adapters,
batching concurrent requests for different adapters into one mixed-adapter forward per decode step, with at
most ``max_resident`` adapters in memory (least recently used ones read from disk again on demand).

engine (adapters and the mixed forward) · scheduler (continuous batching) · kvcache · sampling · api (the app)
· openai_routes · native_routes · bodies (fields honoured or refused) · http_errors · metrics · server.

Layering: imports adapters, methods and models; only the CLI imports this package.
"""

from .api import create_app
from .engine import AdapterConflict, AdapterInfo, Engine
from .scheduler import Generation, QueueFull, Scheduler
from .server import build_app, run

__all__ = ["AdapterConflict", "AdapterInfo", "Engine", "Generation", "QueueFull", "Scheduler", "build_app",
           "create_app", "run"]
