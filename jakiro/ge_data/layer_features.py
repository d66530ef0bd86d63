"""Add intermediate-layer features to recorded training samples, for a head with ``feature_layers``.

    python -m jakiro.ge_data.layer_features --feature-layers auto OUT/0 OUT/1 [--basepath BASE] [--dtype bfloat16]

Every ``*.safetensors`` sample under the folders gains ``aux_hidden_state`` [L, n*H]: the outputs of those
decoder layers on the sample's own ``input_ids`` (the base model runs only up to the last of them). Samples
recorded with ``jakiro.ge_data --feature-layers`` already have them. Files are rewritten atomically and a
rerun skips finished ones; a file holding other layers is an error (record a separate copy instead).
"""

from __future__ import annotations

import argparse
import glob
import os

import torch

from ..model.taps import LayerTaps
from .ge_data import AUX_KEY, LAYERS_META, layers_meta, parse_feature_layers, save_sample


def sample_paths(folders: list[str]) -> list[str]:
    """The ``*.safetensors`` files under ``folders`` (recursively), sorted; ``FileNotFoundError`` if none."""
    paths = []
    for folder in folders:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"not a folder: {folder}")
        paths += glob.glob(os.path.join(folder, "**", "*.safetensors"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no .safetensors samples under {', '.join(folders)}")
    return sorted(set(paths))


def recorded_layers(path: str) -> str | None:
    """The ``feature_layers`` metadata of a sample with ``aux_hidden_state``, else None."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        if AUX_KEY not in f.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
            return None
        return (f.metadata() or {}).get(LAYERS_META, "?")


@torch.no_grad()
def add_layer_features(path: str, taps: LayerTaps, decoder: torch.nn.Module, save_dtype: torch.dtype) -> None:
    """Compute and store ``aux_hidden_state`` for one sample file (atomically)."""
    from safetensors.torch import load_file

    sample = load_file(path)
    ids = sample["input_ids"].long()[None].to(next(decoder.parameters()).device)
    sample[AUX_KEY] = taps.only(lambda: decoder(input_ids=ids, use_cache=False))[0].to("cpu", save_dtype)
    save_sample(path, sample, layers_meta(taps.feature_layers))


def main(argv=None) -> None:
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="folders of samples written by jakiro.ge_data")
    parser.add_argument("--feature-layers", default="auto", help="'auto' (a low and a middle layer) or e.g. 2,15")
    parser.add_argument("--basepath", default=None, help="base model folder (default: the embedded SmolLM2)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--save-dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    if args.basepath is None:
        from ..embedded import smollm2_path

        args.basepath = smollm2_path()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.basepath, dtype=getattr(torch, args.dtype)).to(device).eval()
    try:
        layers = parse_feature_layers(args.feature_layers, model.config.get_text_config().num_hidden_layers)
    except ValueError as e:
        parser.error(str(e))
    wanted = layers_meta(layers)[LAYERS_META]
    paths = sample_paths(args.folders)
    found = {path: recorded_layers(path) for path in tqdm(paths, desc="checking samples", leave=False)}
    other = [path for path, recorded in found.items() if recorded not in (None, wanted)]
    if other:
        raise SystemExit(f"{len(other)} sample(s) hold other layers than {wanted}, e.g. {other[0]} ({found[other[0]]})")
    todo = [path for path, recorded in found.items() if recorded is None]
    print(f"{len(paths)} samples, {len(paths) - len(todo)} already hold layers {wanted}; base model in {args.dtype}")
    decoder = model.get_decoder()
    taps = LayerTaps(decoder, layers)
    for path in tqdm(todo, desc=f"layers {wanted}"):
        add_layer_features(path, taps, decoder, getattr(torch, args.save_dtype))


if __name__ == "__main__":
    main()
