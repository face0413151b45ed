"""Shared fixtures: tiny seeded task models for the three architectures, and the shared task data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import tangentft.methods  # noqa: F401  (registers the methods and the selection term kinds they define)

# Property tests (test_cli_properties.py): "ci" runs 100 examples per property (300 in all, about a minute);
# `pytest --hypothesis-profile=long` runs 5,000 each. Examples use in-process CLI runs, hence no deadline.
_QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=_QUIET, database=None,
                          derandomize=True, print_blob=True)
settings.register_profile("long", max_examples=5000, deadline=None, suppress_health_check=_QUIET, database=None)
settings.load_profile("ci")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_DIR = Path(os.environ.get("TANGENTFT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
TINY_MODELS = ("tiny-llama", "tiny-bert", "tiny-gpt2")


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matrices: a second thread only adds contention (measured 40x slower on a busy 2-core machine).
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "sst2").is_dir():
        pytest.skip(f"shared task data not found at {DATA_DIR}")
    return DATA_DIR


def sst2_spec():
    from tangentft.data.types import TaskSpec

    return TaskSpec("sst2", "classification", "Review: {sentence}\nSentiment:", [" negative", " positive"])


def stsb_spec():
    from tangentft.data.types import TaskSpec

    return TaskSpec(
        "stsb", "regression", "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nSimilarity from 0 to 5:",
        [" 0", " 1", " 2", " 3", " 4", " 5"], [0, 1, 2, 3, 4, 5],
    )


def toy_examples(n: int = 8, seed: int = 0, regression: bool = False):
    """Short synthetic sentences with labels; deterministic for a seed."""
    import random

    from tangentft.data.types import Example

    rng = random.Random(seed)
    words = "good bad movie film great awful plot actor boring fun dull superb weak story".split()
    out = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))
        if regression:
            out.append(Example(text, round(rng.uniform(0, 5), 2), " ".join(rng.choice(words) for _ in range(4)), f"toy:{i}"))
        else:
            out.append(Example(text, i % 2, None, f"toy:{i}"))
    return out


def tiny_task_model(name: str, spec=None, seed: int = 0):
    from tangentft.models.task_model import build_task_model

    # On the CPU wherever the tests run: they compare against tensors they build there. The CLI tests keep the
    # default device (CUDA where present), which is how the library's own device handling is exercised.
    return build_task_model(name, spec or sst2_spec(), seed=seed, device="cpu")
