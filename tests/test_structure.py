"""The package structure: one-way dependencies, the variant registry, the reference entry points."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jakiro
from jakiro import variants
from jakiro.model.drafter import DynamicTreeDrafter, TreeShape
from jakiro.testing import prompt, tiny_ea_model

JAKIRO_SOURCE = Path(jakiro.__file__).parent


def test_jakiro_never_imports_jakiro_star():
    offenders = [
        str(path.relative_to(JAKIRO_SOURCE))
        for path in JAKIRO_SOURCE.rglob("*.py")
        if "import jakiro_star" in path.read_text() or "from jakiro_star" in path.read_text()
    ]
    assert offenders == []


def test_variants_come_from_the_registry_and_entry_points():
    """A fresh interpreter finds jakiro_star's variant through the entry point, without importing it first."""
    code = (
        "import sys, jakiro.variants as v; assert 'jakiro_star' not in sys.modules; "
        "print(sorted(v.variants())); print(v.get('jakiro_star').head_class.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "['eagle2', 'jakiro', 'jakiro_star']" and out[1] == "jakiro_star.model.cnets"
    with pytest.raises(
        KeyError, match=r"unknown draft-head variant 'medusa'; known: \['eagle2', 'jakiro', 'jakiro_star'\]"
    ):
        variants.get("medusa")


def test_tree_shape_is_a_value_and_drafters_resize_by_copy():
    model = tiny_ea_model(total_token=12, depth=3, top_k=3)
    drafter = model.drafter
    assert isinstance(drafter, DynamicTreeDrafter) and drafter.shape == TreeShape(12, 3, 3)
    with pytest.raises(AttributeError):
        drafter.shape.total_tokens = 5  # frozen
    model.set_tree_size(8)
    assert model.drafter.shape == TreeShape(8, 3, 3) and drafter.shape == TreeShape(12, 3, 3)
    assert model.tree_size_limits() == (2, 1 + 3 + 3 * 9) and model.describe_tree() == "8 nodes, depth 3, top-k 3"


def test_reference_topk_genrate_drafts_with_the_attached_drafter():
    model = tiny_ea_model(total_token=10, depth=2, top_k=3)
    ids = prompt(0)
    with torch.no_grad():
        features = model.base_model(ids, output_hidden_states=True).hidden_states[-1]
    sequence = torch.cat((ids, torch.tensor([[7]])), 1)
    model.drafter.reset(64)
    tree = model.ea_layer.topK_genrate(features, sequence, model.lm_head)
    assert len(tree) == 10 and int(tree.tokens[0]) == 7 and model.ea_layer.kv_length == ids.shape[1]
    model.ea_layer.attach_drafter(None)
    with pytest.raises(RuntimeError, match="no drafter"):
        model.ea_layer.topK_genrate(features, sequence, model.lm_head)
