#!/bin/bash
# How the held-out AUROC of the stage-1 head grows with cohort size, steps and tower width: the
# study behind "How far the demo is from 0.85" in docs/results.md. Meant for a GPU machine: it
# builds an N-scan synthetic cohort, then trains every variant at once, each its own process.
#   bash benchmarks/perf/gpu_scaling.sh N 'NAME=OVERRIDES' ...
#   bash benchmarks/perf/gpu_scaling.sh 1200 'tiny30=' \
#     'wide40=train.epochs=40 model.overrides.vision_cfg.block_inplanes=[16,32,64,128]'
# It prints val/head_auroc, the macro AUROC of each run's head on the held-out patients, scored
# against the rules labels (the tables in docs/results.md were scored against the cohort's ground
# truth, which the rules labels match at macro F1 0.996). SCALING_DIR (/tmp/scaling), WORKERS (16)
# and CTCLIP_TOKENIZER_DIR (see gpu_e2e.sh) can be set.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,11p' "$0"; exit 2; }
N=$1
shift
D=${SCALING_DIR:-/tmp/scaling}/n$N
W=${WORKERS:-16}
PY=${PYTHON:-python3}
if [ ! -f "$D/cache/ctrate.h5" ]; then
  "$PY" -m ctclip synth --out "$D/cohort" --n "$N" --seed 0 --layout ct-rate --small --workers "$W"
  "$PY" -m ctclip preprocess --input "$D/cohort" --out "$D/cache/ctrate.h5" --recipe small --workers "$W"
  mkdir -p "$D/labels"
  "$PY" -c "
import sys
from pathlib import Path
from ctclip.app.demo import concat_csv
ds = Path(sys.argv[1]) / 'cohort' / 'dataset' / 'radiology_text_reports'
concat_csv([ds / f'{x}_reports.csv' for x in ('train', 'validation')], Path(sys.argv[2]))
" "$D" "$D/labels/reports.csv"
  "$PY" -m ctclip label --reports "$D/labels/reports.csv" --out-dir "$D/labels" --backend rules
fi
TXT=()
if [ -n "${CTCLIP_TOKENIZER_DIR:-}" ]; then
  TXT=(model.overrides.text_cfg.source=random "model.overrides.text_cfg.tokenizer=$CTCLIP_TOKENIZER_DIR")
fi
mkdir -p "$D/runs"
set -f # the overrides hold [..] lists, not globs
for spec in "$@"; do
  name=${spec%%=*}
  read -r -a overrides <<<"${spec#*=}"
  # Each variant is a one-process run of its own: a RANK or MASTER_PORT from the calling
  # environment (an allocation, a launcher) would make them join one group or share one port.
  # eval_every beyond the last step: one validation, at the end.
  env -u MASTER_PORT RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 \
    "$PY" -m ctclip train --config train/stage1-small "data.cache=$D/cache/ctrate.h5" \
    "data.labels=$D/labels/labels.csv" "data.reports=$D/labels/reports.csv" data.num_workers=2 \
    "train.output_dir=$D/runs/$name" train.eval_every=1000000 train.progress=false "${TXT[@]}" \
    "${overrides[@]}" >"$D/runs/$name.log" 2>&1 &
done
wait
names=()
for spec in "$@"; do names+=("${spec%%=*}"); done
# one interpreter reads every run's last validation record; runs without one are named at the end
"$PY" - "$D/runs" "${names[@]}" <<'PY'
import sys
from pathlib import Path

from ctclip.training.trainer import final_metrics

runs, failed = Path(sys.argv[1]), []
for name in sys.argv[2:]:
    m = final_metrics(runs / name)
    if not m:
        failed.append(f'{name}: no validation record; see {runs / name}.log')
        continue
    print(f"{name:>12}  head AUROC {m.get('val/head_auroc', float('nan')):.3f}  step {m.get('step')}")
sys.exit('\n'.join(failed) or None)
PY
