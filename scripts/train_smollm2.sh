#!/usr/bin/env bash
# Train the Jakiro, EAGLE-2 and Jakiro* draft heads for the embedded SmolLM2-135M-Instruct on a CPU.
# Every stage resumes: rerun the same command after an interruption.
#   STAGES="N:EPOCHS[:SEED[:REPLAY[:LR[:TEST[:FLAGS]]]]] ...": one training run per stage. A stage first records base-model
#   features for the first N conversations of ShareGPT V3 (seeded shuffle; a later, larger N only adds the
#   new ones), at most MAX_LEN tokens each, then trains EPOCHS epochs over all of them. Stage k>1 starts
#   from stage k-1's head (--init-from, a fresh cosine cycle from LR), keeps its held-out conversations held
#   out (--split-from) and logs its starting point (--eval-first); its folder is RUN/<arch>-k. With REPLAY
#   (a ratio, e.g. 0.5) a stage trains on the conversations added since the stage before plus REPLAY
#   times as many of that stage's training conversations (--replay), not on all of them. LR (the stage's
#   peak learning rate, default $LR) and TEST (the held-out fraction of its new conversations, default
#   train.main's 0.05) override the defaults for one stage; an empty field keeps its default
#   ("11500:2:4::5e-4:0.02": seed 4, no replay, lr 5e-4, 2 % of the new conversations held out).
#   FLAGS passes any other train.main flags to the stage, comma-separated, each --name or --name=value
#   ("--ttt-length=3,--warmup-steps=60": the training-time test over 3 steps, 60 warm-up steps).
#   A stage with --feature-layers=auto (the head also reads a low and a middle base layer, EAGLE-3's fused
#   features) records those layers' outputs with its new samples and adds them to earlier stages' samples
#   (jakiro.ge_data.layer_features).
#   Jakiro* runs the first stage only, with STAR_EPOCHS epochs (the smaller budget issue #10 allows).
#   The default STAGES is the recipe of the shipped heads (docs/training_plan.md). The older two-run
#   form N=.. EPOCHS=.. CONTINUE_EPOCHS=.. still works (STAGES="N:EPOCHS N:CONTINUE_EPOCHS").
#   REGENERATE=1 replaces the assistant replies by SmolLM2's own greedy answers (self-distillation,
#   at most REPLY_TOKENS tokens each, first REGENERATE_TURNS exchanges) before recording features.
#   REGENERATE_FROM=K does so only for the conversations from position K of the shuffle on (their features
#   go to RUN/data/regen/, the earlier ones keep their original replies): a stage growing N past K adds
#   self-distilled conversations to the original ones (the default STAGES: K=11500; "none" turns it off).
#   A stage's FLAGS may hold --self-distil=START-END: SmolLM2's own greedy replies for shuffle positions START to
#   END-1 are recorded into RUN/data/self-distilled-START-END before the stage trains, new samples even where earlier
#   stages (or the INIT_FROM head) trained on those conversations with their original replies; with REPLAY the
#   stage trains on them plus REPLAY times as many earlier files (--replay-new-folder). Continuing the shipped heads
#   on self-distilled replies is then one command (README, Training).
#   DRAFT_VOCAB=K trains the token loss over the K most frequent learned tokens (0: full vocabulary).
#   WARM_START=1 starts each head from SmolLM2's last decoder layer; INIT_FROM=DIR from an existing
#   head folder (one per ARCH: INIT_FROM=DIR is used for every arch, so give one ARCH with it).
#   SPLIT_FROM=PATH keeps an earlier run's held-out conversations held out (its split.json or --cpdir;
#   a shipped head folder carries its split.json): use it with INIT_FROM when N grows.
#   TIME_BUDGET=HOURS prints, before each head trains, the steps and tokens that fit (measured).
#   EVAL_STEPS=N evaluates the held-out split every N steps besides each epoch's end (default 500; one
#   evaluation costs about as much as 200 training steps).
#   THREADS=N torch threads (0: torch's default). Features and training use bf16 only where the CPU
#   has native bf16 units (avx512_bf16 / AMX); elsewhere bf16 is slower than fp32.
#   BASEPATH=DIR and DATA=FILE replace the embedded SmolLM2 and ShareGPT package (another base model
#   needs its own chat template; the tests use a tiny model).
set -euo pipefail
DEFAULT_STAGES="1830:2 1830:2 3600:1 3600:1:1 5000:4:3 11500:2:4::5e-4:0.02 11500:1:5::2e-4:0.02:--ttt-length=3,--warmup-steps=60,--eval-steps=1250 13800:1:6:1:2e-4:0.02:--ttt-length=3,--warmup-steps=60,--eval-steps=1250 13800:1:7::2e-4:0.02:--ttt-length=3,--warmup-steps=60,--max-steps=900,--eval-steps=450,--feature-layers=auto 13800:1:10::2e-4:0.02:--ttt-length=3,--warmup-steps=60,--max-steps=2400,--eval-steps=1200,--feature-layers=auto 13800:1:11::2e-4:0.02:--ttt-length=3,--warmup-steps=60,--max-steps=900,--eval-steps=900,--feature-layers=auto,--const=0.1 13800:1:12::2e-4:0.02:--ttt-length=3,--warmup-steps=60,--max-steps=2400,--eval-steps=1200,--feature-layers=auto,--const=0.1"
if [ -z "${STAGES:-}" ]; then
  if [ -n "${N:-}${EPOCHS:-}${CONTINUE_EPOCHS:-}" ]; then
    N=${N:-1830}
    STAGES="$N:${EPOCHS:-2}"
    [ "${CONTINUE_EPOCHS:-2}" -gt 0 ] && STAGES+=" $N:${CONTINUE_EPOCHS:-2}"
  else
    STAGES=$DEFAULT_STAGES
  fi
fi
MAX_LEN=${MAX_LEN:-512}
STAR_EPOCHS=${STAR_EPOCHS:-1}
LR=${LR:-1e-3}
REGENERATE=${REGENERATE:-0}
if [ -z "${REGENERATE_FROM:-}" ]; then  # the default STAGES' last stage is self-distilled from 11,500 on
  REGENERATE_FROM=$([ "$STAGES" = "$DEFAULT_STAGES" ] && [ "$REGENERATE" = 0 ] && echo 11500 || echo none)
fi
[[ "$REGENERATE_FROM" =~ ^([0-9]+|none)$ ]] || { echo "REGENERATE_FROM: '$REGENERATE_FROM' is not a position or none" >&2; exit 2; }
if [ "$REGENERATE" = 1 ] && [ "$REGENERATE_FROM" != none ]; then
  echo "REGENERATE=1 self-distils every conversation: leave REGENERATE_FROM unset" >&2
  exit 2
fi
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
EVAL_STEPS=${EVAL_STEPS:-500}
DECIMAL='[0-9]+(\.[0-9]+)?'  # REPLAY and TEST
LR_VALUE="$DECIMAL([eE]-?[0-9]+)?"  # LR may be written 5e-4
FLAG='--[a-z][a-z0-9-]*(=[A-Za-z0-9._/+-]+)?'  # one item of FLAGS
self_distil_range() {  # the START-END of a stage's --self-distil flag, or nothing
  grep -o -- '--self-distil=[^,]*' <<< "$1" | cut -d= -f2 || true
}
for STAGE in $STAGES; do
  [[ "$STAGE" =~ ^[0-9]+:[1-9][0-9]*(:([0-9]+)?(:($DECIMAL)?(:($LR_VALUE)?(:($DECIMAL)?(:($FLAG(,$FLAG)*)?)?)?)?)?)?$ ]] \
      || { echo "STAGES: '$STAGE' is not N:EPOCHS[:SEED[:REPLAY[:LR[:TEST[:FLAGS]]]]]" >&2; exit 2; }
  RANGE=$(self_distil_range "$STAGE")
  if [ -n "$RANGE" ]; then
    [[ "$RANGE" =~ ^([0-9]+)-([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -lt "${BASH_REMATCH[2]}" ] \
        || { echo "STAGES: --self-distil=$RANGE in '$STAGE' is not START-END with START < END" >&2; exit 2; }
    if [ "$REGENERATE" = 1 ]; then
      echo "STAGES: --self-distil in '$STAGE': REGENERATE=1 already self-distils every conversation" >&2
      exit 2
    fi
    if [ "$REGENERATE_FROM" != none ] && [ "${BASH_REMATCH[2]}" -gt "$REGENERATE_FROM" ]; then
      echo "STAGES: --self-distil=$RANGE in '$STAGE' reaches REGENERATE_FROM=$REGENERATE_FROM," \
          "from which the recipe self-distils conversations already" >&2
      exit 2
    fi
  fi
done
IFS=: read -r _ _ _ FIRST_REPLAY _ <<< "${STAGES%% *}"  # checked now, before any features are recorded
if [ -n "$FIRST_REPLAY" ] && [ -z "$SPLIT_FROM" ]; then
  echo "STAGES: the first stage '${STAGES%% *}' replays an earlier run's conversations: give SPLIT_FROM" >&2
  exit 2
fi
LAST_N=${STAGES##* }
LAST_N=${LAST_N%%:*}
SUFFIX=$([ "$REGENERATE" = 1 ] && echo "-regen" || true)
RUN=${RUN:-${JAKIRO_CACHE:-$HOME/.cache/jakiro}/runs/smollm2-sharegpt-n$LAST_N$SUFFIX}
SOURCE=()  # base model and conversations, when not the embedded ones
[ -n "${BASEPATH:-}" ] && SOURCE+=(--basepath "$BASEPATH")
FEATURES=("${SOURCE[@]}")
[ -n "${DATA:-}" ] && FEATURES+=(--data "$DATA")
SELF_DISTIL=(--regenerate --regenerate-max-new-tokens "$REPLY_TOKENS" --regenerate-batch-size 32 --regenerate-turns "$REGENERATE_TURNS")
EXTRA=()
[ "$REGENERATE" = 1 ] && EXTRA=("${SELF_DISTIL[@]}")
TRAIN=(--draft-vocab-size "$DRAFT_VOCAB" --time-budget "$TIME_BUDGET" --threads "$THREADS" --eval-steps "$EVAL_STEPS" "${SOURCE[@]}")
FIRST=()  # how the first stage's head starts (each later stage starts from the one before)
[ "$WARM_START" = 1 ] && FIRST+=(--warm-start-layer)
[ -n "$INIT_FROM" ] && FIRST+=(--init-from "$INIT_FROM" --eval-first)
[ -n "$SPLIT_FROM" ] && FIRST+=(--split-from "$SPLIT_FROM")
PY=${PY:-python}
FEATURE_DTYPE=$($PY -c "from jakiro.device import cpu_has_fast_bf16 as f; import torch; print('bfloat16' if torch.cuda.is_available() or f() else 'float32')")
mkdir -p "$RUN"
echo "run folder: $RUN; stages (conversations:epochs[:seed[:replay]]): $STAGES; base-model features in $FEATURE_DTYPE"
train() {  # CPDIR EPOCHS SEED [extra flags]
  $PY -m jakiro.train.main --tmpdir "$RUN/data" --cpdir "$1" --arch "$ARCH" --num-epochs "$2" --seed "$3" \
      --bs 4 --lr "$LR" --max-len "$MAX_LEN" --mixed-precision auto --save-steps 50 --save-dtype float16 --resume \
      "${TRAIN[@]}" "${@:4}"
}
self_distil() {  # OUTDIR START END: features of SmolLM2's own replies to those conversations (the stage's taps too)
  $PY -m jakiro.ge_data.allocation --outdir "$1" --template chat_template --start "$2" --end "$3" --workers 1 \
      "${FEATURES[@]}" -- --max-len "$MAX_LEN" --dtype "$FEATURE_DTYPE" "${TAPS[@]}" "${SELF_DISTIL[@]}"
}
STAGE_NUMBER=0
PREVIOUS_EPOCHS=0
for STAGE in $STAGES; do
  STAGE_NUMBER=$((STAGE_NUMBER + 1))
  IFS=: read -r STAGE_N STAGE_EPOCHS STAGE_SEED STAGE_REPLAY STAGE_LR STAGE_TEST STAGE_EXTRA <<< "$STAGE"
  STAGE_SEED=${STAGE_SEED:-$SEED}
  STAGE_FLAGS=()  # passed after train()'s own flags: argparse keeps the last --lr
  [ -n "$STAGE_REPLAY" ] && STAGE_FLAGS+=(--replay "$STAGE_REPLAY")
  [ -n "$STAGE_LR" ] && STAGE_FLAGS+=(--lr "$STAGE_LR")
  [ -n "$STAGE_TEST" ] && STAGE_FLAGS+=(--test-fraction "$STAGE_TEST")
  DISTIL=$(self_distil_range "$STAGE_EXTRA")
  if [ -n "$STAGE_EXTRA" ]; then  # train.main's flags (--self-distil is this script's)
    IFS=, read -r -a MORE <<< "$STAGE_EXTRA"
    for ITEM in "${MORE[@]}"; do [[ "$ITEM" == --self-distil=* ]] || STAGE_FLAGS+=("$ITEM"); done
  fi
  echo "stage $STAGE_NUMBER: features for conversations 0-$((STAGE_N - 1)), then $STAGE_EPOCHS epoch(s), seed $STAGE_SEED, lr ${STAGE_LR:-$LR}" \
      "$([ -n "$STAGE_REPLAY" ] && echo "over the new conversations and ${STAGE_REPLAY}x as many earlier ones" || echo "over all")" \
      "${STAGE_EXTRA:+with ${STAGE_EXTRA//,/ }}"
  ORIGINAL_END=$([ "$REGENERATE_FROM" != none ] && [ "$REGENERATE_FROM" -lt "$STAGE_N" ] && echo "$REGENERATE_FROM" || echo "$STAGE_N")
  LAYERS=$(grep -o -- '--feature-layers=[^,]*' <<< "$STAGE_EXTRA" | cut -d= -f2 || true)
  TAPS=()  # new samples record the stage's tapped layers in the same forward
  [ -n "$LAYERS" ] && TAPS=(--feature-layers "$LAYERS")
  $PY -m jakiro.ge_data.allocation --outdir "$RUN/data" --template chat_template --start 0 --end "$ORIGINAL_END" \
      --workers 1 "${FEATURES[@]}" -- --max-len "$MAX_LEN" --dtype "$FEATURE_DTYPE" "${TAPS[@]}" "${EXTRA[@]}"
  if [ "$ORIGINAL_END" -lt "$STAGE_N" ]; then
    echo "conversations $ORIGINAL_END-$((STAGE_N - 1)) with SmolLM2's own greedy replies (REGENERATE_FROM)"
    self_distil "$RUN/data/regen" "$ORIGINAL_END" "$STAGE_N"
  fi
  if [ -n "$DISTIL" ]; then
    echo "conversations ${DISTIL%-*}-$((${DISTIL#*-} - 1)) again with SmolLM2's own greedy replies (--self-distil):" \
        "new samples of known conversations"
    self_distil "$RUN/data/self-distilled-$DISTIL" "${DISTIL%-*}" "${DISTIL#*-}"
    [ -n "$STAGE_REPLAY" ] && STAGE_FLAGS+=(--replay-new-folder "self-distilled-$DISTIL")
  fi
  if [ -n "$LAYERS" ]; then  # samples of earlier stages, recorded without them
    echo "outputs of base layers '$LAYERS' added to every sample (the stage's --feature-layers)"
    $PY -m jakiro.ge_data.layer_features "$RUN/data" --feature-layers "$LAYERS" --dtype "$FEATURE_DTYPE" "${SOURCE[@]}"
  fi
  for ARCH in $ARCHS; do
    if [ "$STAGE_NUMBER" = 1 ]; then
      ARCH_EPOCHS=$([ "$ARCH" = jakiro_star ] && echo "$STAR_EPOCHS" || echo "$STAGE_EPOCHS")
      train "$RUN/$ARCH" "$ARCH_EPOCHS" "$STAGE_SEED" "${FIRST[@]}" "${STAGE_FLAGS[@]}"
    elif [ "$ARCH" != jakiro_star ]; then
      BEFORE=$RUN/$ARCH$([ "$STAGE_NUMBER" -gt 2 ] && echo "-$((STAGE_NUMBER - 1))" || true)
      train "$RUN/$ARCH-$STAGE_NUMBER" "$STAGE_EPOCHS" "$STAGE_SEED" \
          --init-from "$BEFORE/state_$((PREVIOUS_EPOCHS - 1))" --split-from "$BEFORE" --eval-first "${STAGE_FLAGS[@]}"
    fi
  done
  PREVIOUS_EPOCHS=$STAGE_EPOCHS
done
LAST=$([ "$STAGE_NUMBER" -gt 1 ] && echo "-$STAGE_NUMBER" || true)
echo "done: each head is the last state_<epoch> of $RUN/<arch>$LAST (Jakiro*: of $RUN/jakiro_star)"
