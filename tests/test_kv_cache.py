"""The preallocated cache: transformers writes into it, ``keep`` retains an arbitrary path in place."""

import torch

from jakiro.model.kv_cache import KVCache, KVCacheLayer, cache_argument
from jakiro.testing import prompt, tiny_base


def test_keep_moves_selected_positions_to_the_front_of_the_block():
    layer = KVCacheLayer(capacity=16)
    k = torch.arange(8.0).view(1, 1, 8, 1).expand(1, 2, 8, 3).contiguous()
    layer.update(k, -k)
    layer.keep(3, torch.tensor([0, 2, 4]))
    assert layer.get_seq_length() == 6
    keys, values = layer.update(k[:, :, :1], -k[:, :, :1])
    assert keys[0, 0, :, 0].tolist() == [0, 1, 2, 3, 5, 7, 0]
    torch.testing.assert_close(values, -keys)


def test_overflow_is_an_error():
    layer = KVCacheLayer(capacity=4)
    layer.update(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    try:
        layer.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    except RuntimeError as e:
        assert "overflow" in str(e)
    else:
        raise AssertionError("no overflow error")


def test_kept_path_continues_like_a_full_forward():
    """Tree of 6 tokens, keep the path 0-2-5, continue: logits equal a plain forward of prompt+path."""
    base = tiny_base()
    ids = prompt(0)
    L = ids.shape[1]
    tree_tokens = torch.tensor([[20, 30, 31, 40, 41, 42]])
    parents = [-1, 0, 0, 1, 2, 2]
    allowed = torch.zeros(6, L + 6, dtype=torch.bool)
    allowed[:, :L] = True
    depth = []
    for i in range(6):
        node, d = i, 0
        while node >= 0:
            allowed[i, L + node] = True
            node, d = parents[node], d + 1
        depth.append(d - 1)
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
    cache = KVCache(base.config.num_hidden_layers, 64)
    kwarg = cache_argument(base)
    with torch.no_grad():
        base(ids, **{kwarg: cache})
        base(tree_tokens, attention_mask=mask, position_ids=torch.tensor([depth]) + L, **{kwarg: cache})
        cache.keep(L, torch.tensor([0, 2, 5]))
        nxt = base(torch.tensor([[50]]), **{kwarg: cache}).logits[0, -1]
        full = base(torch.cat((ids, torch.tensor([[20, 31, 42, 50]])), 1)).logits[0, -1]
    assert cache.get_seq_length() == L + 4
    torch.testing.assert_close(nxt, full, atol=1e-4, rtol=1e-4)
