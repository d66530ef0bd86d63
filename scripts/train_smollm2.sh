#!/usr/bin/env bash
# Train the Jakiro, EAGLE-2 and Jakiro* draft heads for the embedded SmolLM2-135M-Instruct on a CPU.
# Every stage resumes: rerun the same command after an interruption.
#   N conversations of ShareGPT V3 (seeded shuffle), at most MAX_LEN tokens each, EPOCHS epochs
#   (Jakiro* STAR_EPOCHS), then CONTINUE_EPOCHS more in a second run that starts from the first run's
#   head (--init-from, a fresh cosine cycle; not for Jakiro*; 0: none), in RUN/<arch>-2.
#   The defaults are the recipe of the shipped heads (docs/training_plan.md).
#   REGENERATE=1 replaces the assistant replies by SmolLM2's own greedy answers (self-distillation,
#   at most REPLY_TOKENS tokens each, first REGENERATE_TURNS exchanges) before recording features.
#   DRAFT_VOCAB=K trains the token loss over the K most frequent learned tokens (0: full vocabulary).
#   WARM_START=1 starts each head from SmolLM2's last decoder layer; INIT_FROM=DIR from an existing
#   head folder (one per ARCH: INIT_FROM=DIR is used for every arch, so give one ARCH with it).
#   SPLIT_FROM=PATH keeps an earlier run's held-out conversations held out (its split.json or --cpdir;
#   a shipped head folder carries its split.json): use it with INIT_FROM when N grows.
#   TIME_BUDGET=HOURS prints, before each head trains, the steps and tokens that fit (measured).
#   THREADS=N torch threads (0: torch's default). Features and training use bf16 only where the CPU
#   has native bf16 units (avx512_bf16 / AMX); elsewhere bf16 is slower than fp32.
set -euo pipefail
N=${N:-1830}
MAX_LEN=${MAX_LEN:-512}
EPOCHS=${EPOCHS:-2}
STAR_EPOCHS=${STAR_EPOCHS:-1}
CONTINUE_EPOCHS=${CONTINUE_EPOCHS:-2}
LR=${LR:-1e-3}
REGENERATE=${REGENERATE:-0}
REPLY_TOKENS=${REPLY_TOKENS:-256}
REGENERATE_TURNS=${REGENERATE_TURNS:-1}
ARCHS=${ARCHS:-jakiro eagle2 jakiro_star}
DRAFT_VOCAB=${DRAFT_VOCAB:-8192}
WARM_START=${WARM_START:-0}
INIT_FROM=${INIT_FROM:-}
SPLIT_FROM=${SPLIT_FROM:-}
TIME_BUDGET=${TIME_BUDGET:-2}
THREADS=${THREADS:-0}
SEED=${SEED:-0}
SUFFIX=$([ "$REGENERATE" = 1 ] && echo "-regen" || true)
RUN=${RUN:-${JAKIRO_CACHE:-$HOME/.cache/jakiro}/runs/smollm2-sharegpt-n$N$SUFFIX}
EXTRA=()
[ "$REGENERATE" = 1 ] && EXTRA=(--regenerate --regenerate-max-new-tokens "$REPLY_TOKENS" --regenerate-batch-size 32 --regenerate-turns "$REGENERATE_TURNS")
TRAIN=(--draft-vocab-size "$DRAFT_VOCAB" --time-budget "$TIME_BUDGET" --threads "$THREADS" --seed "$SEED" --eval-steps 150)
FIRST=()  # how the first run's head starts (the continuation starts from the first run's)
[ "$WARM_START" = 1 ] && FIRST+=(--warm-start-layer)
[ -n "$INIT_FROM" ] && FIRST+=(--init-from "$INIT_FROM" --eval-first)
[ -n "$SPLIT_FROM" ] && FIRST+=(--split-from "$SPLIT_FROM")
PY=${PY:-python}
FEATURE_DTYPE=$($PY -c "from jakiro.device import cpu_has_fast_bf16 as f; import torch; print('bfloat16' if torch.cuda.is_available() or f() else 'float32')")
mkdir -p "$RUN"
echo "run folder: $RUN; base-model features in $FEATURE_DTYPE"
# 1. base-model features
$PY -m jakiro.ge_data.allocation --outdir "$RUN/data" --template chat_template --start 0 --end "$N" \
    --workers 1 -- --max-len "$MAX_LEN" --dtype "$FEATURE_DTYPE" "${EXTRA[@]}"
# 2. the heads: same data, seed and lr schedule (Jakiro* with STAR_EPOCHS)
train() {  # CPDIR EPOCHS [extra flags]
  $PY -m jakiro.train.main --tmpdir "$RUN/data" --cpdir "$1" --arch "$ARCH" --num-epochs "$2" \
      --bs 4 --lr "$LR" --max-len "$MAX_LEN" --mixed-precision auto --save-steps 50 --save-dtype float16 --resume \
      "${TRAIN[@]}" "${@:3}"
}
for ARCH in $ARCHS; do
  ARCH_EPOCHS=$([ "$ARCH" = jakiro_star ] && echo "$STAR_EPOCHS" || echo "$EPOCHS")
  train "$RUN/$ARCH" "$ARCH_EPOCHS" "${FIRST[@]}"
  if [ "$ARCH" != jakiro_star ] && [ "$CONTINUE_EPOCHS" -gt 0 ]; then
    train "$RUN/$ARCH-2" "$CONTINUE_EPOCHS" --init-from "$RUN/$ARCH/state_$((ARCH_EPOCHS - 1))" --split-from "$RUN/$ARCH"
  fi
done
echo "done: each head is the last state_<epoch> of $RUN/<arch>-2 ($RUN/<arch> with CONTINUE_EPOCHS=0 and for Jakiro*)"
