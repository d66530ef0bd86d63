"""Train a Jakiro* draft head on features written by ``jakiro.ge_data``.

    python -m jakiro_star.train.main --basepath BASE --tmpdir DATA --cpdir CKPT [--configpath CFG]
    accelerate launch -m jakiro_star.train.main ...            # several GPUs / processes

This is ``jakiro.train.main`` with ``--arch jakiro_star`` as the default: the same data, loop,
checkpoints and metrics; the head has two GELU experts of the base model's intermediate width
and one output (their softmax-weighted sum), trained with the EAGLE loss ``v_w*vloss + p_w*ploss``.
All ``jakiro.train.main`` options apply; draft configs have the same format as Jakiro's.
"""

from __future__ import annotations

from jakiro.train.main import main as jakiro_main


def main(argv=None) -> None:
    jakiro_main(argv, default_arch="jakiro_star")


if __name__ == "__main__":
    main()
