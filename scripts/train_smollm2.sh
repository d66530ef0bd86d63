#!/usr/bin/env bash
# Train the Jakiro and EAGLE-2 draft heads for the embedded SmolLM2-135M-Instruct on a CPU.
# Every stage resumes: rerun the same command after an interruption.
#   N conversations of ShareGPT V3 (seeded shuffle), at most MAX_LEN tokens each, EPOCHS epochs.
set -euo pipefail
N=${N:-1200}
MAX_LEN=${MAX_LEN:-1024}
EPOCHS=${EPOCHS:-3}
LR=${LR:-3e-4}
RUN=${RUN:-${JAKIRO_CACHE:-$HOME/.cache/jakiro}/runs/smollm2-sharegpt-n$N}
PY=${PY:-python}
mkdir -p "$RUN"
echo "run folder: $RUN"
# 1. base-model features (bf16 forward: twice as fast as fp32 on CPU, far below the training noise)
$PY -m jakiro.ge_data.allocation --outdir "$RUN/data" --template chat_template --start 0 --end "$N" \
    --workers 1 -- --max-len "$MAX_LEN" --dtype bfloat16
# 2. the two heads, same data, epochs and seed
for ARCH in jakiro eagle2; do
  $PY -m jakiro.train.main --tmpdir "$RUN/data" --cpdir "$RUN/$ARCH" --arch "$ARCH" --num-epochs "$EPOCHS" \
      --bs 4 --lr "$LR" --max-len "$MAX_LEN" --mixed-precision bf16 --save-steps 50 --save-dtype float16 --resume
done
echo "done: $RUN/jakiro/state_$((EPOCHS-1)) and $RUN/eagle2/state_$((EPOCHS-1))"
