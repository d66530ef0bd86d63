"""The Jakiro* model loader for jakiro's answer runner."""

from __future__ import annotations

import argparse

from ..variant import DEFAULT_TREE


def load_model(args: argparse.Namespace):
    """``jakiro_star.model.ea_model.EaModel`` with ``--tree-choices`` (default: the reference's mc_sim_7b_63)."""
    from jakiro.evaluation.runner import base_model_kwargs

    from ..model.ea_model import EaModel

    return EaModel.from_pretrained(
        base_model_path=args.base_model_path,
        ea_model_path=args.ea_model_path,
        tree_choices=args.tree_choices or DEFAULT_TREE,
        **base_model_kwargs(args),
    )


def main(kind: str, template: str) -> str:
    from jakiro.evaluation.runner import main as run_main

    return run_main(kind, template, load=load_model)
