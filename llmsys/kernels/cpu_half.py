"""Half-precision matmuls on CPUs without native bfloat16/float16 arithmetic.

On such CPUs (AVX2, say) a bfloat16 GEMM runs several times slower than float32. For
matrices of many rows (a prefill), converting the operands to float32, multiplying, and
rounding the result back is exact in its inputs and 3-4x faster; for a few rows (decode)
the native kernel wins, since it reads the weights only once. `use_fast_half_matmul(model)`
swaps each `nn.Linear` for `UpcastLinear`, which picks per call, after a one-off probe
(`upcast_is_faster`) has shown that this CPU benefits at all.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

_PROBED: dict[torch.dtype, bool] = {}


class UpcastLinear(nn.Linear):
    """nn.Linear that multiplies in float32 when the input has at least `min_rows` rows."""

    min_rows = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() < self.min_rows * x.shape[-1]:
            return F.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)


def upcast_is_faster(dtype: torch.dtype, size: int = 512, rows: int = 128) -> bool:
    """Time both ways once per dtype on this CPU (a few tens of milliseconds)."""
    if dtype not in _PROBED:
        x, w = torch.randn(rows, size, dtype=dtype), torch.randn(size, size, dtype=dtype)

        def best(fn) -> float:
            fn()
            times = []
            for _ in range(3):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return min(times)

        native = best(lambda: F.linear(x, w))
        upcast = best(lambda: F.linear(x.float(), w.float()).to(dtype))
        _PROBED[dtype] = upcast < 0.8 * native
    return _PROBED[dtype]


def use_fast_half_matmul(model: nn.Module) -> int:
    """Swap the model's half-precision CPU `nn.Linear`s for `UpcastLinear` where that is
    faster on this CPU. Parameters are shared, not copied. Returns how many were swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child.weight.device.type != "cpu":
                continue
            if child.weight.dtype not in (torch.bfloat16, torch.float16):
                continue
            if not upcast_is_faster(child.weight.dtype):
                return swapped
            fast = UpcastLinear(child.in_features, child.out_features, bias=False,
                                device="meta")
            fast.weight, fast.bias = child.weight, child.bias
            setattr(parent, name, fast)
            swapped += 1
    return swapped
