"""Speculative (Jakiro) answers for LLaMA-3-instruct (the tokenizer's chat template, stops at <|eot_id|>).

    python -m jakiro.evaluation.gen_ea_answer_llama3chat [--ea-model-path P] [--base-model-path P] [--bench-name mt_bench] ...

All flags: ``--help``; the protocol and file format: ``jakiro.evaluation.runner``.
"""

from .runner import main

if __name__ == "__main__":
    main("ea", "llama3chat")
