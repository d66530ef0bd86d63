"""Plain-decoding baseline answers for any chat model (--template auto: the tokenizer's chat template).

    python -m jakiro.evaluation.gen_baseline_answer [--ea-model-path P] [--base-model-path P] [--bench-name mt_bench] ...

All flags: ``--help``; the protocol and file format: ``jakiro.evaluation.runner``.
"""

from .runner import main

if __name__ == "__main__":
    main("baseline", "auto")
