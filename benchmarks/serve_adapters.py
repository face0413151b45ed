"""Random S2FT and LoRA adapters for a served base, laid out like training runs (``NAME/adapter`` + the run's
``NAME/config.json`` with the base fingerprint and the sst2 task, so /v1/classify can score them); used by
``serve_load.py``, which runs this in its own process (the load generator must not import torch).

    python benchmarks/serve_adapters.py --model tiny-llama --out DIR --s2ft 3 --lora 2

S2FT: a KV group of o's columns and ``--ffn-ratio`` of down's channels on every layer (``serve.py``'s
adapters); LoRA: the same modules at about the same number of parameters. Prints the ``NAME=PATH`` list as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_adapters(model: str, out: Path, n_s2ft: int, n_lora: int, ffn_ratio: float = 0.1, seed: int = 0) -> list[str]:
    """Write the adapters under ``out``; their ``NAME=PATH`` specs (S2FT ones first)."""
    from serve import lora_folder, sparse_adapters

    from tangentft.adapters.sparse import save_adapter
    from tangentft.data.tasks import get_builtin_spec
    from tangentft.io import write_json
    from tangentft.models.fingerprint import base_weights_fingerprint
    from tangentft.models.registry import load_model

    loaded = load_model(model)
    hf, smap = loaded.model.eval(), loaded.structure
    spec = get_builtin_spec("sst2")
    run = {"base_fingerprint": base_weights_fingerprint(hf),
           "task_spec": {"name": spec.name, "kind": spec.kind, "template": spec.template, "label_words": spec.label_words}}
    specs = []
    s2ft = sparse_adapters(hf, smap, n_s2ft, ffn_ratio, seed)
    for i, adapter in enumerate(s2ft):
        name = f"s2ft{i}"
        save_adapter(adapter, out / name / "adapter")
        write_json(out / name / "config.json", run)
        specs.append(f"{name}={out / name / 'adapter'}")
    per_rank = sum(sum(hf.get_submodule(smap.ref(layer, r).path).weight.shape)
                   for layer in range(smap.num_layers) for r in ("o", "down"))
    rank = max(1, round(sum(d.numel for d in s2ft[0].deltas) / per_rank)) if s2ft else 8
    for i in range(n_lora):
        name = f"lora{i}"
        lora_folder(hf, smap, name, rank, seed + 1000 + i, out / name / "adapter")
        write_json(out / name / "config.json", run)
        specs.append(f"{name}={out / name / 'adapter'}")
    return specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--s2ft", type=int, default=3)
    ap.add_argument("--lora", type=int, default=2)
    ap.add_argument("--ffn-ratio", type=float, default=0.1)
    args = ap.parse_args()
    print(json.dumps(make_adapters(args.model, args.out, args.s2ft, args.lora, args.ffn_ratio)))


if __name__ == "__main__":
    main()
