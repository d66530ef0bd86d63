"""The embedded real model (SmolLM2-135M-Instruct, Llama architecture, GQA 3:1, rope theta 1e5)."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from jakiro.embedded import smollm2_path
from jakiro.model.configs import EConfig
from jakiro.model.ea_model import EaModel, build_head


def test_speculative_greedy_equals_generate_on_smollm2():
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert base.config.num_key_value_heads == 3 and tokenizer.eos_token_id == 2
    head = build_head(EConfig.from_base_config(base.config), base)
    model = EaModel(base, head, tokenizer, total_token=8, depth=2, top_k=3)
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]
    reference = base.generate(ids, max_new_tokens=24, do_sample=False)
    out = model.eagenerate(ids, max_new_tokens=24)
    assert out.tolist() == reference.tolist()
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])
