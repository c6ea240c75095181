#!/bin/bash
# GPU smoke run of the whole training path: stage 1 (ZeRO-0) then stage 2 CLIP (ZeRO-2) from the
# stage-1 export, bf16, checkpoints and exports, on a small random cohort.
#   bash benchmarks/perf/gpu_e2e.sh            (E2E_DIR=/tmp/e2e E2E_STEPS=40 by default)
# Where the MiniLM package is not installed, CTCLIP_TOKENIZER_DIR=<folder with vocab.txt> builds a
# random-weight text tower with that tokenizer instead.
set -euo pipefail
D=${E2E_DIR:-/tmp/e2e}
S=${E2E_STEPS:-40}
PY=${PYTHON:-python3}
rm -rf "$D"
"$PY" -c "
from pathlib import Path
from benchmarks.perf.bench_train import write_cohort
write_cohort(Path('$D'), 32, (56, 112, 112))"
TXT=()
if [ -n "${CTCLIP_TOKENIZER_DIR:-}" ]; then
  TXT=(model.overrides.text_cfg.source=random "model.overrides.text_cfg.tokenizer=$CTCLIP_TOKENIZER_DIR")
fi
DATA=("data.cache=$D/cache.h5" "data.labels=$D/labels.csv" "data.reports=$D/reports.csv"
  data.val_split=null data.num_workers=4)
RUN=(train.steps="$S" train.epochs=null deepspeed.precision=bf16 train.progress=false
  train.ckpt_every=20 train.eval_every=0)
"$PY" -m ctclip train --config train/stage1-small "${DATA[@]}" "${TXT[@]}" "${RUN[@]}" \
  "train.output_dir=$D/s1"
"$PY" -m ctclip train --config train/stage2-clip-small "${DATA[@]}" "${TXT[@]}" "${RUN[@]}" \
  "train.init_from=$D/s1/final" deepspeed.config=zero2 "train.output_dir=$D/s2"
ls "$D/s1/final" "$D/s2/final" "$D/s2/checkpoints"
tail -n 1 "$D/s1/metrics.jsonl" "$D/s2/metrics.jsonl"
