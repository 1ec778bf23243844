"""What this machine computes fast: the CPU's matrix features, a quick bfloat16 probe, and int8 decoders.

CPU flags alone do not say whether bfloat16 pays. With AMX (Intel Sapphire Rapids and newer) bfloat16
matrix products are several times faster than float32; with AVX512-BF16 alone they were 1.5x slower on an
Intel Xeon (model 207) and 1.7-3x faster on an AMD EPYC (Zen 5) (docs/performance.md). So `auto` measures:
a 0.1 s probe of the products that dominate the model, once a process.
"""

from __future__ import annotations

import functools
import time
import warnings

import torch
from torch import nn

MATRIX_FLAGS = (
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "avx512f",
    "avx2",
)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty elsewhere: macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_matrix_features() -> list[str]:
    """The matrix-relevant flags this CPU has, in a fixed order (for figures and bug reports)."""
    flags = cpu_flags()
    return [f for f in MATRIX_FLAGS if f in flags]


@functools.lru_cache(maxsize=1)
def cpu_bfloat16_is_faster(size: int = 512, rounds: int = 3) -> bool:
    """Whether this CPU multiplies (2 size, size) x (size, 2 size) matrices at least 1.25x faster in
    bfloat16 than in float32: the products that dominate the model. About 0.1 s, once a process."""

    def best(dtype: torch.dtype) -> float:
        a = torch.randn(2 * size, size, dtype=dtype)
        b = torch.randn(size, 2 * size, dtype=dtype)
        a @ b  # warm-up
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            for _ in range(2):
                a @ b
            times.append(time.perf_counter() - began)
        return min(times)

    return best(torch.bfloat16) * 1.25 < best(torch.float32)


def int8_engine() -> str | None:
    """The quantized engine torch uses here for int8 products (fbgemm/x86 on x86, qnnpack on ARM), or None
    when this torch build has none."""
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines:
        return None
    current = torch.backends.quantized.engine
    return current if current in engines else engines[0]


def int8_targets(decoder: nn.Module) -> list[str]:
    """The decoder's linear layers that run once per step on all 256 frames: self- and cross-attention
    projections and the feed-forward, in every layer (97 % of a pass's products). The FiLM and time
    projections run on one row per step and stay float32."""
    return [
        name
        for name, module in decoder.named_modules()
        if isinstance(module, nn.Linear) and name.startswith("layers.") and "film" not in name
    ]


def quantize_int8(decoder: nn.Module) -> nn.Module:
    """The decoder with those linear layers dynamically quantized to int8 (weights per tensor, activations
    per call), on torch's own CPU path (torch.ao.quantization.quantize_dynamic: fbgemm/oneDNN with VNNI on
    x86, qnnpack on ARM). In place; returns the decoder."""
    from spectrosynth.errors import SpectrosynthError

    engine = int8_engine()
    if engine is None:
        raise SpectrosynthError("this torch build has no int8 engine; use --dtype float32 or bfloat16")
    torch.backends.quantized.engine = engine
    targets = set(int8_targets(decoder))
    if not targets:  # already quantized (an empty spec would mean every linear layer to torch)
        return decoder
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(decoder, targets, dtype=torch.qint8, inplace=True)
    return decoder


def is_int8(module: nn.Module) -> int:
    """How many of the module's layers are int8 dynamic-quantized linears (0: none)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return sum(isinstance(m, DynamicQuantizedLinear) for m in module.modules())


def cuda_bfloat16_is_native() -> bool:
    """bfloat16 computed by the GPU itself (Ampere and newer), not emulated, slowly, as on a T4 or V100."""
    import torch

    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3 counted no emulation
        return torch.cuda.is_bf16_supported()
