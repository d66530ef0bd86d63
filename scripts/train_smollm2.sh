#!/usr/bin/env bash
# Train the Jakiro and EAGLE-2 draft heads for the embedded SmolLM2-135M-Instruct on a CPU.
# Every stage resumes: rerun the same command after an interruption.
#   N conversations of ShareGPT V3 (seeded shuffle), at most MAX_LEN tokens each, EPOCHS epochs.
#   REGENERATE=1 replaces the assistant replies by SmolLM2's own greedy answers (self-distillation,
#   at most REPLY_TOKENS tokens each, first REGENERATE_TURNS exchanges) before recording features.
set -euo pipefail
N=${N:-1200}
MAX_LEN=${MAX_LEN:-1024}
EPOCHS=${EPOCHS:-3}
LR=${LR:-3e-4}
REGENERATE=${REGENERATE:-0}
REPLY_TOKENS=${REPLY_TOKENS:-256}
REGENERATE_TURNS=${REGENERATE_TURNS:-1}
ARCHS=${ARCHS:-jakiro eagle2}
SUFFIX=$([ "$REGENERATE" = 1 ] && echo "-regen" || true)
RUN=${RUN:-${JAKIRO_CACHE:-$HOME/.cache/jakiro}/runs/smollm2-sharegpt-n$N$SUFFIX}
EXTRA=()
[ "$REGENERATE" = 1 ] && EXTRA=(--regenerate --regenerate-max-new-tokens "$REPLY_TOKENS" --regenerate-batch-size 32 --regenerate-turns "$REGENERATE_TURNS")
PY=${PY:-python}
mkdir -p "$RUN"
echo "run folder: $RUN"
# 1. base-model features (bf16 forward: twice as fast as fp32 on CPU, far below the training noise)
$PY -m jakiro.ge_data.allocation --outdir "$RUN/data" --template chat_template --start 0 --end "$N" \
    --workers 1 -- --max-len "$MAX_LEN" --dtype bfloat16 "${EXTRA[@]}"
# 2. the heads, same data, epochs and seed
for ARCH in $ARCHS; do
  $PY -m jakiro.train.main --tmpdir "$RUN/data" --cpdir "$RUN/$ARCH" --arch "$ARCH" --num-epochs "$EPOCHS" \
      --bs 4 --lr "$LR" --max-len "$MAX_LEN" --mixed-precision bf16 --save-steps 50 --save-dtype float16 --resume
done
echo "done: $RUN/<arch>/state_$((EPOCHS-1)) for $ARCHS"
