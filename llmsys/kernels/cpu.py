"""C++ decode kernels for x86-64 CPUs: the loader and the attention-side entry points.

Decoding one token reads every weight once, so its speed is set by memory bandwidth and,
for small models, by the fixed cost of each PyTorch operation. On CPUs with AVX2 the
kernels in `cpu_kernels.cpp` stream each weight row once with several loads in flight
(float32, bfloat16 or float16 weights, float32 sums), attend over the paged KV cache in
place instead of gathering blocks first, and do an RMSNorm or a cache write in one call.
They are compiled on first use with the system C++ compiler (about half a minute, cached
afterwards by `torch.utils.cpp_extension`); where that is impossible (no compiler, another
CPU) the PyTorch paths are used and a warning says why. LLMSYS_CPU_KERNELS=0 turns them off.

`cpu_modules.py` swaps a model's layers for ones that call these kernels.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

KERNEL_MAX_ROWS = 8
_SOURCE = Path(__file__).with_name("cpu_kernels.cpp")


@functools.cache
def kernels() -> ModuleType | None:
    """The compiled C++ module, or None where it cannot be used (reason warned once)."""
    if os.environ.get("LLMSYS_CPU_KERNELS", "1") == "0":
        return None
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None  # the kernels use AVX2 + FMA + F16C
    try:
        from torch.utils import cpp_extension

        # The name carries a hash of the source and flags: each version builds (and is
        # cached) apart. -fopenmp: without it at::parallel_for runs on one thread.
        # -ffp-contract=off: products and sums rounded as written (no fused multiply-add
        # where the code does not ask for one), which the kernels that round like PyTorch need.
        flags = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-ffp-contract=off"]
        digest = hashlib.sha1(_SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()
        name = "llmsys_cpu_kernels_" + digest[:10]
        build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
        if not any(build_dir.glob(f"{name}*.so")):
            print("llmsys: compiling the CPU decode kernels (once, about 30 s)...",
                  file=sys.stderr, flush=True)
        return cpp_extension.load(name=name, sources=[str(_SOURCE)],
                                  extra_cflags=flags, extra_ldflags=["-fopenmp"])
    except Exception as exc:  # no compiler, no ninja, headers missing, ...
        warnings.warn(f"llmsys CPU kernels unavailable, using PyTorch paths: {exc}",
                      stacklevel=2)
        return None


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 tables: torch.Tensor, context_lens: torch.Tensor,
                 window: int | None) -> torch.Tensor | None:
    """Decode attention with the C++ kernel: q (S, Hq, D) one query per sequence, caches
    (Hkv, blocks, bs, D), tables (S, W) int64, context_lens (S,) int64 -> (S, Hq, D) in q's
    dtype. None when the kernel cannot take these inputs (the caller falls back)."""
    module = kernels()
    D = q.shape[-1]
    if module is None or q.device.type != "cpu" or D % 8 or not k_cache.is_contiguous():
        return None
    out = module.paged_decode(q, k_cache, v_cache, tables, context_lens, window or 0, D ** -0.5)
    return out.to(q.dtype)


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             blocks: torch.Tensor, offsets: torch.Tensor) -> bool:
    """Store k/v (N, Hkv, D) at their cache slots with the C++ kernel; False where it cannot
    (the caller falls back)."""
    module = kernels()
    if module is None or k_cache.device.type != "cpu" or not k_cache.is_contiguous():
        return False
    module.write_kv(k_cache, v_cache, k, v, blocks, offsets)
    return True
