"""Precision by device: ``--dtype auto`` and the notes a user gets for half precision."""

import pytest
import torch

from jakiro import device


def test_auto_is_bf16_only_where_the_cpu_has_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    assert device.resolve_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    assert device.resolve_dtype("auto") == torch.float32
    assert device.resolve_dtype("float16") == torch.float16


def test_half_precision_notes(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    assert device.dtype_warning(torch.float32) is None
    note = device.dtype_warning(torch.bfloat16)
    assert "up to rounding near ties" in note and "much slower than float32" in note
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    assert "slower" not in device.dtype_warning(torch.bfloat16)


def test_unknown_dtype_names_are_refused():
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16, auto"):
        device.resolve_dtype("fp8")


def test_the_web_ui_and_demo_tune_the_embedded_tree_unless_told(monkeypatch):
    from jakiro import demo
    from jakiro.application import webui
    from jakiro.model.ea_model import EaModel

    calls = []
    monkeypatch.setattr(EaModel, "from_pretrained", classmethod(lambda cls, *a, **kw: calls.append((a, kw))))
    webui.load_model(webui.parse_args([]))
    webui.load_model(webui.parse_args(["--total-token", "12"]))
    webui.load_model(webui.parse_args(["--ea-model-path", "some/head"]))
    demo.load(demo.parse_args([]))
    trees = [(kw["total_token"], kw["depth"], kw["top_k"]) for _, kw in calls]
    assert trees == [(None, None, None), (12, 5, 10), (60, 5, 10), (None, None, None)]
    assert all(kw["dtype"] == torch.float32 for _, kw in calls)
