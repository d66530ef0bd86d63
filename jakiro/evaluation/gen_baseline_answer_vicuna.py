"""Plain-decoding baseline answers for Vicuna (FastChat vicuna_v1.1 template).

    python -m jakiro.evaluation.gen_baseline_answer_vicuna [--ea-model-path P] [--base-model-path P] [--bench-name mt_bench] ...

All flags: ``--help``; the protocol and file format: ``jakiro.evaluation.runner``.
"""

from .runner import main

if __name__ == "__main__":
    main("baseline", "vicuna")
