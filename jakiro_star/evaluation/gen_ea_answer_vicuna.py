"""Jakiro* speculative answers, vicuna template.

    python -m jakiro_star.evaluation.gen_ea_answer_vicuna [--ea-model-path P] [--base-model-path P] [--tree-choices mc_sim_7b_63] ...

Flags and file format: jakiro.evaluation.runner.
"""

from .load import main

if __name__ == "__main__":
    main("ea", "vicuna")
