#!/usr/bin/env bash
# Answer the six benchmarks with a speculative model and its plain-decoding baseline, then print the
# mean speed-up ratio and acceptance length. One implementation behind the eval_*_all.sh scripts:
#   eval_metric/eval_all.sh FAMILY VARIANT      FAMILY: vicuna | llama2 | llama3   VARIANT: Jakiro | Jakiro-star
# Settings (environment variables; every one optional):
#   BASE_MODEL_PATH, EA_MODEL_PATH   model folders (empty: the embedded SmolLM2-135M-Instruct + shipped head)
#   DATA_DIR     folder of <bench>/question.jsonl (empty: MT-bench from the installed package only)
#   BENCHES      benchmarks to run (default: mt_bench humaneval gsm8k alpaca sum qa, or mt_bench without DATA_DIR)
#   ANSWER_DIR   output folder (default: answers)           MODEL_ID   name in the answer files
#   TEMPERATURE  (default: 0.0 for Jakiro, 1.0 for Jakiro-star, as the reference)
#   TOTAL_TOKEN DEPTH TOP_K (Jakiro tree), TREE_CHOICES (Jakiro-star tree), MAX_NEW_TOKEN (512),
#   QUESTION_END (answer only the first N questions of each bench), PYTHON (default: python)
# GPUs: set CUDA_VISIBLE_DEVICES as usual; nothing here picks a device.
set -euo pipefail
FAMILY=${1:?usage: eval_all.sh vicuna|llama2|llama3 Jakiro|Jakiro-star}
VARIANT=${2:?usage: eval_all.sh vicuna|llama2|llama3 Jakiro|Jakiro-star}
case $FAMILY in
  vicuna) TEMPLATE=vicuna ;; llama2) TEMPLATE=llama2chat ;; llama3) TEMPLATE=llama3chat ;;
  *) echo "unknown family '$FAMILY' (vicuna, llama2 or llama3)" >&2; exit 2 ;;
esac
case $VARIANT in
  Jakiro) PACKAGE=jakiro; DEFAULT_T=0.0 ;; Jakiro-star) PACKAGE=jakiro_star; DEFAULT_T=1.0 ;;
  *) echo "unknown variant '$VARIANT' (Jakiro or Jakiro-star)" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python}
TEMPERATURE=${TEMPERATURE:-$DEFAULT_T}
ANSWER_DIR=${ANSWER_DIR:-answers}
MODEL_ID=${MODEL_ID:-$FAMILY-$VARIANT}
if [ -n "${DATA_DIR:-}" ]; then
  BENCHES=${BENCHES:-mt_bench humaneval gsm8k alpaca sum qa}
else
  BENCHES=${BENCHES:-mt_bench}
  echo "DATA_DIR is not set: running mt_bench only (set DATA_DIR to a folder of <bench>/question.jsonl for all six)"
fi
COMMON=(--answer-file "$ANSWER_DIR" --temperature "$TEMPERATURE")
[ -n "${BASE_MODEL_PATH:-}" ] && COMMON+=(--base-model-path "$BASE_MODEL_PATH")
[ -n "${EA_MODEL_PATH:-}" ] && COMMON+=(--ea-model-path "$EA_MODEL_PATH")
[ -n "${DATA_DIR:-}" ] && COMMON+=(--data-dir "$DATA_DIR")
[ -n "${QUESTION_END:-}" ] && COMMON+=(--question-end "$QUESTION_END")
[ -n "${MAX_NEW_TOKEN:-}" ] && COMMON+=(--max-new-token "$MAX_NEW_TOKEN")
TREE=()
[ -n "${TOTAL_TOKEN:-}" ] && TREE+=(--total-token "$TOTAL_TOKEN")
[ -n "${DEPTH:-}" ] && TREE+=(--depth "$DEPTH")
[ -n "${TOP_K:-}" ] && TREE+=(--top-k "$TOP_K")
[ -n "${TREE_CHOICES:-}" ] && TREE+=(--tree-choices "$TREE_CHOICES")

RATIOS=(); TAUS=(); TAUS_REF=()
for BENCH in $BENCHES; do
  echo "== $BENCH"
  $PYTHON -m "$PACKAGE.evaluation.gen_ea_answer_$TEMPLATE" --bench-name "$BENCH" --model-id "$MODEL_ID" \
      "${COMMON[@]}" "${TREE[@]}"
  $PYTHON -m "$PACKAGE.evaluation.gen_baseline_answer_$TEMPLATE" --bench-name "$BENCH" "${COMMON[@]}" \
      --model-id "$MODEL_ID-baseline"
  REPORT=$($PYTHON -m jakiro.evaluation.speed \
      "$ANSWER_DIR/$BENCH/$MODEL_ID-temperature-$TEMPERATURE.jsonl" \
      "$ANSWER_DIR/$BENCH/$MODEL_ID-baseline-temperature-$TEMPERATURE.jsonl")
  echo "$REPORT"
  RATIOS+=("$(echo "$REPORT" | sed -n 's/^#ratio: \([0-9.]*\).*/\1/p')")
  TAUS+=("$(echo "$REPORT" | sed -n 's/^#tau: \([0-9.]*\).*/\1/p')")
  TAUS_REF+=("$(echo "$REPORT" | sed -n 's/^#Mean accepted tokens: \([0-9.]*\).*/\1/p')")
done
mean() { $PYTHON -c 'import sys; v=[float(x) for x in sys.argv[1:] if x]; print(f"{sum(v)/len(v):.4f}" if v else "n/a")' "$@"; }
echo "== $FAMILY $VARIANT, T=$TEMPERATURE, benches: $BENCHES"
echo "mean speed-up ratio: $(mean "${RATIOS[@]}")"
echo "mean tau (tokens per verification step): $(mean "${TAUS[@]}")"
echo "mean accepted tokens (reference, new tokens / idx): $(mean "${TAUS_REF[@]}")"
