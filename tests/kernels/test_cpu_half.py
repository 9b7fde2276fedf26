"""UpcastLinear: float32 compute for half-precision weights, checked against float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmsys.kernels import cpu_half
from llmsys.kernels.cpu_half import UpcastLinear, use_fast_half_matmul
from llmsys.model.checkpoint import load_model
from llmsys.testing import make_tiny_checkpoint


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_upcast_linear_is_correctly_rounded(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=g).to(dtype)
    lin = UpcastLinear(96, 48, bias=True, dtype=dtype)
    ref = F.linear(x.double(), lin.weight.double(), lin.bias.double())
    got = lin(x)
    assert got.dtype == dtype
    # One rounding of an (almost) exact float32 result: within one unit in the last place.
    ulp = torch.finfo(dtype).eps
    assert ((got.double() - ref).abs() <= ulp * ref.abs() + 1e-6).all()
    # Few rows take the native kernel.
    assert torch.equal(lin(x[:1]), F.linear(x[:1], lin.weight, lin.bias))


def test_swap_shares_parameters_and_keeps_outputs(tmp_path, monkeypatch):
    monkeypatch.setitem(cpu_half._PROBED, torch.bfloat16, True)  # as on a CPU that gains
    path = make_tiny_checkpoint("llama", tmp_path, dtype="bfloat16", tie_word_embeddings=True)
    plain, cfg = load_model(path)
    fast, _ = load_model(path)
    names = list(dict(fast.named_parameters()))
    n_linear = sum(type(m) is torch.nn.Linear for m in fast.modules())
    assert use_fast_half_matmul(fast) == n_linear > 0
    assert list(dict(fast.named_parameters())) == names
    assert fast.lm_head.weight is fast.embed_tokens.weight  # the tie survives
    ids = torch.randint(0, cfg.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(40)[None]
    with torch.no_grad():
        a = plain(ids, pos).float().log_softmax(-1)
        b = fast(ids, pos).float().log_softmax(-1)
    assert (a - b).abs().max().item() < 0.05


def test_float32_models_are_left_alone(tmp_path):
    path = make_tiny_checkpoint("llama", tmp_path)
    model, _ = load_model(path, dtype="float32")
    assert use_fast_half_matmul(model) == 0
