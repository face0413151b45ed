#!/usr/bin/env bash
# Task arithmetic with LoRA fine-tunes of SmolLM2 on sst2, cola and cr (early-stopping paper §5.2, Figure 3):
# three runs, then `taskvec compare`, `add` (α grid-searched on validation) and `negate`.
#   bash experiments/taskvec_lora.sh [OUT=runs/taskvec]   (about 25 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/taskvec}
DATA=${DATA:-../shared/data}
T=.venv/bin/tangentft
for task in sst2 cola cr; do
  [ -f "$OUT/$task/summary.json" ] && continue
  $T train --model smollm2-135m --task "$DATA/$task" --method lora --params 'lora(r=8):q,v@0,15,29' \
    --reg selective --lam 0 --n-train 256 --max-steps 60 --n-eval 64 --eval-every 20 --lr 1e-3 --out "$OUT/$task"
done
$T taskvec compare "$OUT/sst2" "$OUT/cola" "$OUT/cr" --out "$OUT/compare"
$T taskvec add "$OUT/sst2" "$OUT/cola" "$OUT/cr" --n-eval 128 --n-val 32 --out "$OUT/add"
$T taskvec negate "$OUT/sst2" --eval "$DATA/sst2" --eval "$DATA/cola" --n-eval 128 --out "$OUT/negate"
