"""``benchmarks/tree_grid.py`` on the embedded SmolLM2 and its shipped Jakiro head, two grid points, one short prompt."""

import json

import pytest
from helpers import load_script


def test_tree_grid_compares_the_tuned_tree_with_the_grid_and_writes_its_table(tmp_path):
    grid = load_script("benchmarks/tree_grid.py")
    grid.main(
        ["--questions", "1", "--max-new-tokens", "4", "--trees", "4/1/4", "8/2/4", "--draft-dtype", "bfloat16"]
        + ["--out", str(tmp_path)]
    )
    text = (tmp_path / "tree_grid.md").read_text()
    assert "| 4/1/4 |" in text and "| 8/2/4 |" in text and "| tuned " in text and "| generate |" in text
    assert "tuned / best grid point (" in text and "predicted τ" in text and "float32, draft head bfloat16" in text
    recorded = json.loads((tmp_path / "tree_grid.json").read_text())
    assert recorded["best"] in ("4/1/4", "8/2/4") and all(t[0] > 0 for t in recorded["totals"].values())
    with pytest.raises(SystemExit):
        grid.main(["--trees", "12-4-4"])
