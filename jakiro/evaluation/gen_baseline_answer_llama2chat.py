"""Plain-decoding baseline answers for LLaMA-2-chat (llama-2 template with the safety system prompt).

    python -m jakiro.evaluation.gen_baseline_answer_llama2chat [--ea-model-path P] [--base-model-path P] [--bench-name mt_bench] ...

All flags: ``--help``; the protocol and file format: ``jakiro.evaluation.runner``.
"""

from .runner import main

if __name__ == "__main__":
    main("baseline", "llama2chat")
