"""The reference's command: ``python -m jakiro.evaluation.speed_accept_len BENCH BASE_MODEL_PATH SPEC BASE``.

Prints ``#ratio`` and ``#Mean accepted tokens`` (and our ``#tau``); baseline tokens are re-tokenized
from the text with BASE_MODEL_PATH's tokenizer, as the reference does. BENCH is unused (as in the
reference). See ``jakiro.evaluation.speed`` for the definitions.
"""

from __future__ import annotations

import sys

from .speed import main as speed_main


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 4:
        raise SystemExit(
            "usage: python -m jakiro.evaluation.speed_accept_len BENCH BASE_MODEL_PATH SPEC_JSONL BASE_JSONL"
        )
    _bench, base_model_path, spec, base = argv
    return speed_main([spec, base, "--base-model-path", base_model_path, "--retokenize"])


if __name__ == "__main__":
    main()
