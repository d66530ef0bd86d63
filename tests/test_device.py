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


def test_cpu_description_names_family_model_and_matrix_units():
    """Two machines here are both "AMD EPYC" and time differently: every measurement line says which."""
    zen5 = "model name\t: AMD EPYC\ncpu family\t: 26\nmodel\t\t: 2\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    xeon = "model name\t: Intel(R) Xeon(R) Processor\ncpu family\t: 6\nmodel\t\t: 143\nflags\t\t: avx2 avx512f"
    xeon += " avx512_bf16 amx_tile amx_bf16\n"
    old = "model name\t: AMD EPYC 7B12\ncpu family\t: 23\nmodel\t\t: 49\nflags\t\t: fpu avx avx2\n"
    assert device.cpu_description(zen5) == "AMD EPYC (family 26 model 2; AVX-512, avx512_bf16, no AMX)"
    assert device.cpu_description(xeon) == "Intel(R) Xeon(R) Processor (family 6 model 143; AMX, avx512_bf16)"
    assert device.cpu_description(old) == "AMD EPYC 7B12 (family 23 model 49; AVX2, no AVX-512)"
    assert device.cpu_description("processor\t: 0\n") == device.processor_name()  # no model name: the fallback
    assert device.cpu_description().startswith(device.processor_name())  # this machine's
