"""Speed-up and acceptance length from two answer files (ours or the reference's published ones).

    python -m jakiro.evaluation.speed SPEC.jsonl BASE.jsonl [--base-model-path P] [--retokenize] [--per-question]

Per question (all turns and choices together):

* speed = Σ new_tokens / Σ wall_time, for both files;
* τ = Σ new_tokens / Σ (idx + 1): tokens per verification step (``idx + 1`` steps per turn);
* τ_ref = Σ new_tokens / Σ idx: the reference's "Mean accepted tokens", which divides by one step
  fewer per turn and so reads higher.

The ratio is the reference's: mean(speed) / mean(baseline speed) over the questions both files
answer. The reference's baseline files hold ``new_tokens = 0``; their token counts are then
re-tokenized from the text (without BOS) with the base model's tokenizer, as the reference does.
"""

from __future__ import annotations

import argparse
import json
import os
from statistics import mean

from ..metrics import acceptance_length


def read_jsonl(path: str) -> dict[int, dict]:
    """Answer records by question id; a clear error for a missing or malformed file."""
    if not os.path.isfile(path):
        raise SystemExit(f"answer file not found: {path}")
    records = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records[record["question_id"]] = record
            except (json.JSONDecodeError, KeyError) as error:
                raise SystemExit(f"{path}:{number} is not an answer record ({error})") from None
    return records


def totals(record: dict, count_tokens=None) -> dict[str, float]:
    """Σ new tokens, Σ wall time, Σ idx and Σ (idx + 1) over the record's choices and turns."""
    new = wall = idx = steps = 0.0
    for choice in record["choices"]:
        wall += sum(choice["wall_time"])
        idx += sum(choice["idxs"])
        steps += sum(i + 1 for i in choice["idxs"])
        new += sum(count_tokens(t) for t in choice["turns"]) if count_tokens else sum(choice["new_tokens"])
    return {"new": new, "wall": wall, "idx": idx, "steps": steps}


def tokenizer_counter(base_model_path: str | None):
    """The reference's baseline token count: re-tokenize the answer text, minus the BOS."""
    from transformers import AutoTokenizer

    if base_model_path is None:
        from ..embedded import smollm2_path

        base_model_path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    has_bos = tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    return lambda text: len(tokenizer(text)["input_ids"]) - (1 if has_bos else 0)


def compare(spec: dict[int, dict], base: dict[int, dict], count_tokens=None) -> dict:
    """Per-question and mean speeds, speed-up and acceptance lengths."""
    common = sorted(set(spec) & set(base))
    if not common:
        raise SystemExit("the two files answer no common question id")
    rows = []
    for qid in common:
        s, b = totals(spec[qid]), totals(base[qid], count_tokens)
        if s["wall"] <= 0 or b["wall"] <= 0:
            raise SystemExit(f"question {qid}: wall_time sums to 0")
        rows.append(
            {
                "question_id": qid,
                "speed": s["new"] / s["wall"],
                "baseline_speed": b["new"] / b["wall"],
                "tau": acceptance_length(s["new"], s["steps"]) or 0.0,
                "tau_ref": s["new"] / s["idx"] if s["idx"] else 0.0,
            }
        )
    speed, base_speed = mean(r["speed"] for r in rows), mean(r["baseline_speed"] for r in rows)
    return {
        "questions": len(rows),
        "only_in_spec": len(set(spec) - set(base)),
        "only_in_base": len(set(base) - set(spec)),
        "speed": speed,
        "baseline_speed": base_speed,
        "ratio": speed / base_speed,
        "tau": mean(r["tau"] for r in rows),
        "tau_ref": mean(r["tau_ref"] for r in rows),
        "rows": rows,
    }


def needs_retokenizing(base: dict[int, dict]) -> bool:
    return all(sum(sum(c["new_tokens"]) for c in r["choices"]) == 0 for r in base.values())


def report(result: dict, per_question: bool = False) -> str:
    lines = []
    if per_question:
        lines.append(f"{'question':>8} {'tok/s':>8} {'base tok/s':>10} {'speed-up':>8} {'tau':>6} {'tau_ref':>7}")
        for r in result["rows"]:
            lines.append(
                f"{r['question_id']:>8} {r['speed']:8.2f} {r['baseline_speed']:10.2f} "
                f"{r['speed'] / r['baseline_speed']:8.2f} {r['tau']:6.2f} {r['tau_ref']:7.2f}"
            )
    if result["only_in_spec"] or result["only_in_base"]:
        lines.append(
            f"(skipped {result['only_in_spec']} question(s) only in SPEC, {result['only_in_base']} only in BASE)"
        )
    lines += [
        f"questions: {result['questions']}",
        f"speculative: {result['speed']:.2f} tokens/s; baseline: {result['baseline_speed']:.2f} tokens/s",
        f"#ratio: {result['ratio']:.4f}",
        f"#Mean accepted tokens: {result['tau_ref']:.4f}   (reference: new tokens / idx)",
        f"#tau: {result['tau']:.4f}   (new tokens per verification step: new tokens / (idx + 1))",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="speculative answers (.jsonl)")
    parser.add_argument("base", help="baseline answers (.jsonl)")
    parser.add_argument(
        "--base-model-path",
        "--base_model_path",
        default=None,
        help="tokenizer for re-tokenizing baseline answers (default: the embedded SmolLM2)",
    )
    parser.add_argument(
        "--retokenize",
        action="store_true",
        help="count baseline tokens from the text even when new_tokens are recorded",
    )
    parser.add_argument("--per-question", action="store_true")
    args = parser.parse_args(argv)
    spec, base = read_jsonl(args.spec), read_jsonl(args.base)
    counter = None
    if args.retokenize or needs_retokenizing(base):
        counter = tokenizer_counter(args.base_model_path)
    result = compare(spec, base, counter)
    print(report(result, args.per_question))
    return result


if __name__ == "__main__":
    main()
