"""What the machine is good at: native bf16 on this CPU, and the model dtype to use for a ``--dtype`` flag.

float32 is exactly lossless (greedy output equals ``generate``'s token for token). Half precision is
faster where the hardware multiplies it natively (CUDA GPUs; CPUs with avx512_bf16 or AMX), but a tree
forward and a one-token forward round differently, so greedy output matches ``generate`` only up to
rounding near ties: a measured rate, not a guarantee. On CPUs without bf16 units bf16 is much slower
than float32 (emulated), which ``dtype_warning`` says.
"""

from __future__ import annotations

import platform

import torch

DTYPE_CHOICES = ("float32", "bfloat16", "float16", "auto")


def _cpuinfo() -> str | None:
    """The text of ``/proc/cpuinfo``, or None where it is unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return None


def _cpuinfo_field(cpuinfo: str, name: str) -> str | None:
    """The first ``name : value`` of ``/proc/cpuinfo`` text, or None."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def processor_name(device: str | torch.device = "cpu") -> str:
    """The GPU's name for a CUDA device, else the CPU's model name (``/proc/cpuinfo``; the architecture
    where that is unreadable): what every measurement states."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpuinfo_field(_cpuinfo() or "", "model name") or platform.processor() or platform.machine()


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name with its family/model and matrix units, e.g. "AMD EPYC (family 26 model 2;
    AVX-512, avx512_bf16, no AMX)": CPUs sold under one name differ in both, and so do their timings.
    Reads ``/proc/cpuinfo`` (or the given text); the bare :func:`processor_name` where it cannot."""
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    name = _cpuinfo_field(cpuinfo or "", "model name")
    if name is None:
        return processor_name()
    flags = set((_cpuinfo_field(cpuinfo, "flags") or "").split())
    if "amx_bf16" in flags:
        units = "AMX, avx512_bf16" if "avx512_bf16" in flags else "AMX"
    elif "avx512f" in flags:
        units = "AVX-512, avx512_bf16, no AMX" if "avx512_bf16" in flags else "AVX-512 without bf16, no AMX"
    elif "avx2" in flags:
        units = "AVX2, no AVX-512"
    else:
        units = "no AVX2"
    family, model = _cpuinfo_field(cpuinfo, "cpu family"), _cpuinfo_field(cpuinfo, "model")
    kind = f"family {family} model {model}; " if family and model else ""
    return f"{name} ({kind}{units})"


def device_name(device: str | torch.device = "cpu") -> str:
    """What a measurement on ``device`` names: the GPU's name, or :func:`cpu_description`."""
    device = torch.device(device)
    return processor_name(device) if device.type == "cuda" else cpu_description()


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (avx512_bf16 or AMX); without it bf16 is slower than fp32.

    Reads the flags of ``/proc/cpuinfo`` (or the given text); torch's probes where it has them.
    """
    if cpuinfo is None:
        probes = getattr(torch._C, "_cpu", None)
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
            if probes is not None and hasattr(probes, probe) and getattr(probes, probe)():
                return True
        cpuinfo = _cpuinfo()
        if cpuinfo is None:
            return False
    flags = (_cpuinfo_field(cpuinfo, "flags") or "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: str | torch.device | None = None) -> torch.dtype:
    """The torch dtype of a ``--dtype`` value; ``auto``: bfloat16 on CUDA and on CPUs with native bf16,
    float32 elsewhere (where it is also the exact choice)."""
    if name not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {name!r}")
    if name != "auto":
        return getattr(torch, name)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def dtype_warning(dtype: torch.dtype, device: str | torch.device = "cpu") -> str | None:
    """A sentence for the user when ``dtype`` is a poor or inexact choice on ``device``, else None."""
    device = torch.device(device)
    if dtype == torch.float32:
        return None
    note = (
        f"{str(dtype).removeprefix('torch.')}: greedy output equals generate's only up to rounding near ties "
        "(float32 is exact)"
    )
    if device.type == "cpu" and not cpu_has_fast_bf16():
        note += "; this CPU has no native bf16/fp16 matrix units, so it is also much slower than float32 here"
    return note


__all__ = ["DTYPE_CHOICES", "cpu_description", "cpu_has_fast_bf16", "device_name", "dtype_warning", "resolve_dtype"]
