"""tau of a Jakiro* head with each expert weighting at drafting time: "sum" (softmax-weighted, as
trained; the default) and "top" (the unweighted top expert, as the reference drafts).

    python benchmarks/star_weighting_tau.py --ea-model-path RUN/jakiro_star/state_1 \\
        [--base-model-path BASE] [--questions 20] [--max-new-tokens 128] [--tree-choices mc_sim_7b_63] \\
        [--temperatures 0 1]

Prompts are MT-bench first turns through the tokenizer's chat template. Decoding is lossless with
either weighting (greedy outputs are identical, which the script checks); only tau = new tokens
per verification step differs. At T>0 both weightings use the same seed per question. float32,
one process; prints one JSON line per (temperature, weighting).
"""

from __future__ import annotations

import argparse
import json

import torch

from jakiro.evaluation.questions import load_questions
from jakiro_star.model.cnets import WEIGHTINGS
from jakiro_star.model.ea_model import EaModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ea-model-path", required=True)
    parser.add_argument("--base-model-path", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--tree-choices", default="mc_sim_7b_63")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    args = parser.parse_args()
    model = EaModel.from_pretrained(
        args.base_model_path, args.ea_model_path, tree_choices=args.tree_choices, dtype=torch.float32
    )
    tokenizer = model.tokenizer
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q["turns"][0]}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        for q in load_questions(end=args.questions)
    ]
    for temperature in args.temperatures:
        outputs = {}
        for weighting in WEIGHTINGS:
            model.ea_layer.expert_weighting = weighting
            new = steps = 0
            outputs[weighting] = []
            for number, ids in enumerate(prompts):
                torch.manual_seed(number)
                out, n, idx = model.eagenerate(
                    ids, temperature=temperature, max_new_tokens=args.max_new_tokens, log=True
                )
                new, steps = new + n, steps + idx + 1
                outputs[weighting].append(out)
            row = {
                "temperature": temperature,
                "expert_weighting": weighting,
                "tau": round(new / steps, 3),
                "tokens": new,
                "steps": steps,
                "questions": len(prompts),
                "tree_choices": args.tree_choices,
            }
            print(json.dumps(row), flush=True)
        if temperature == 0.0:
            same = sum(torch.equal(a, b) for a, b in zip(*outputs.values()))
            print(json.dumps({"greedy_outputs_identical": f"{same}/{len(prompts)}"}), flush=True)
    model.ea_layer.expert_weighting = "sum"


if __name__ == "__main__":
    main()
