"""Plain-decoding baseline answers (Jakiro* model loader), llama2chat template.

    python -m jakiro_star.evaluation.gen_baseline_answer_llama2chat [--ea-model-path P] [--base-model-path P] [--tree-choices mc_sim_7b_63] ...

Flags and file format: jakiro.evaluation.runner.
"""

from .load import main

if __name__ == "__main__":
    main("baseline", "llama2chat")
