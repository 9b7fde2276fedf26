"""CPU decode kernels (C++) and CpuLinear, checked against float64 / SDPA references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsys.kernels import cpu, cpu_modules
from llmsys.kernels.attention import (
    PagedBatch,
    paged_attention,
    paged_attention_reference,
    write_kv,
)
from llmsys.kernels.cpu_modules import CpuLinear, CpuMLP, CpuRMSNorm, CpuRotary, use_cpu_kernels
from llmsys.model.checkpoint import load_model
from llmsys.model.layers import MLP, RMSNorm
from llmsys.model.rope import Rotary, apply_rotary
from llmsys.testing import make_tiny_checkpoint

compiled = pytest.mark.skipif(cpu.kernels() is None, reason="C++ CPU kernels not available here")
HALF = [torch.bfloat16, torch.float16]


@compiled
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("rows", range(1, 9))
@pytest.mark.parametrize("k", [8, 40, 96, 200])
def test_kernel_linear_matches_float64(dtype, rows, k):
    g = torch.Generator().manual_seed(rows * 1000 + k)
    x = torch.randn(rows, k, generator=g).to(dtype)
    w = torch.randn(37, k, generator=g).to(dtype)
    got = cpu.kernels().linear(x, w)
    ref = x.double() @ w.double().T  # exact products of the same (rounded) inputs
    assert got.dtype == dtype
    # float32 sums of k products (error ~ k * eps32 * sum |x w|), rounded once to dtype.
    bound = (k * 1.2e-7 * (x.double().abs() @ w.double().abs().T) + 1e-6
             + torch.finfo(dtype).eps * ref.abs())
    assert ((got.double() - ref).abs() <= bound).all()


@pytest.mark.parametrize("dtype", HALF)
def test_upcast_path_is_correctly_rounded(dtype, monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=g).to(dtype)
    lin = CpuLinear(96, 48, bias=True, dtype=dtype)
    lin.upcast = True
    ref = F.linear(x.double(), lin.weight.double(), lin.bias.double())
    got = lin(x)
    assert got.dtype == dtype
    # One rounding of an (almost) exact float32 result: within one unit in the last place.
    ulp = torch.finfo(dtype).eps
    assert ((got.double() - ref).abs() <= ulp * ref.abs() + 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_linear_every_path_agrees(dtype):
    """Decode rows (kernel), 9-15 rows (F.linear) and many rows (upcast) give the same
    numbers up to rounding, with bias, for 3-D inputs."""
    g = torch.Generator().manual_seed(1)
    lin = CpuLinear(64, 24, bias=True, dtype=dtype)
    lin.module, lin.upcast = cpu.kernels(), dtype != torch.float32
    for rows in (1, 3, 8, 12, 40):
        x = torch.randn(1, rows, 64, generator=g).to(dtype)
        ref = F.linear(x.double(), lin.weight.double(), lin.bias.double())
        with torch.no_grad():  # the kernel serves inference only
            got = lin(x)
        assert got.shape == (1, rows, 24) and got.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
        assert ((got.double() - ref).abs() <= tol * (1 + ref.abs())).all(), rows


def test_kernels_step_aside_when_gradients_are_needed():
    """With autograd on, one row still gets the gradient of the plain layer."""
    lin = CpuLinear(16, 4, bias=True)
    lin.module = cpu.kernels()
    x = torch.randn(1, 16, requires_grad=True)
    lin(x).sum().backward()
    assert torch.allclose(x.grad, lin.weight.sum(0).detach()[None])


def test_swap_shares_parameters_and_keeps_outputs(tmp_path, monkeypatch):
    monkeypatch.setitem(cpu_modules._UPCAST_PROBED, torch.bfloat16, True)  # as on a CPU that gains
    path = make_tiny_checkpoint("llama", tmp_path, dtype="bfloat16", tie_word_embeddings=True)
    plain, cfg = load_model(path)
    fast, _ = load_model(path)
    names = list(dict(fast.named_parameters()))
    n_linear = sum(type(m) is torch.nn.Linear for m in fast.modules())
    n_fused = sum(type(m) in (RMSNorm, MLP, Rotary) for m in fast.modules()) if cpu.kernels() else 0
    assert use_cpu_kernels(fast) == n_linear + n_fused > n_fused
    if cpu.kernels():
        assert {type(m) for m in fast.modules()} >= {CpuMLP, CpuRotary, CpuRMSNorm, CpuLinear}
    assert list(dict(fast.named_parameters())) == names
    assert fast.lm_head.weight is fast.embed_tokens.weight  # the tie survives
    ids = torch.randint(0, cfg.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(40)[None]
    with torch.no_grad():
        for n in (40, 1):  # many rows (upcast) and one row (kernel, where compiled)
            a = plain(ids[:, :n], pos[:, :n]).float().log_softmax(-1)
            b = fast(ids[:, :n], pos[:, :n]).float().log_softmax(-1)
            assert (a - b).abs().max().item() < 0.05


@compiled
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_rms_norm_kernel_rounds_like_the_reference(dtype):
    g = torch.Generator().manual_seed(2)
    ref = RMSNorm(96, 1e-6).to(dtype)
    ref.weight.data = torch.randn(96, generator=g).to(dtype)
    fast = CpuRMSNorm(96, 1e-6).to(dtype)
    fast.weight, fast.module = ref.weight, cpu.kernels()
    for rows in (1, 5, 8, 30):  # 30 rows take the PyTorch path
        x = (torch.randn(1, rows, 96, generator=g) * 3).to(dtype)
        with torch.no_grad():  # the kernel serves inference only
            a, b = ref(x), fast(x)
        assert a.dtype == b.dtype == dtype and a.shape == b.shape
        # float32 sums in another order: at most one rounding step apart.
        assert ((a.double() - b.double()).abs()
                <= 2 * torch.finfo(dtype).eps * a.double().abs() + 1e-6).all()


@compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv_kernel_matches_indexing(dtype):
    g = torch.Generator().manual_seed(4)
    k_cache = torch.zeros(2, 6, 4, 8, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    k, v = torch.randn(5, 2, 8, generator=g).to(dtype), torch.randn(5, 2, 8, generator=g).to(dtype)
    blocks, offsets = torch.tensor([3, 3, 0, 5, 1]), torch.tensor([0, 1, 3, 2, 0])
    write_kv(k_cache, v_cache, k, v, blocks, offsets)
    ref_k, ref_v = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    ref_k[:, blocks, offsets] = k.transpose(0, 1)
    ref_v[:, blocks, offsets] = v.transpose(0, 1)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


def test_float32_models_without_kernels_are_left_alone(tmp_path):
    path = make_tiny_checkpoint("llama", tmp_path)
    model, _ = load_model(path, dtype="float32")
    assert use_cpu_kernels(model, compiled=False) == 0


def test_a_model_on_another_device_is_left_alone(tmp_path, monkeypatch):
    path = make_tiny_checkpoint("llama", tmp_path)
    model, _ = load_model(path, dtype="float32")
    model.to("meta")                       # no CPU parameter left (as on a GPU)
    monkeypatch.setattr(cpu_modules, "kernels", lambda: pytest.fail("compiled for a non-CPU "
                                                                   "model"))
    assert use_cpu_kernels(model) == 0
    assert not any(type(m) in (CpuRotary, CpuMLP, CpuLinear, CpuRMSNorm) for m in model.modules())


def _random_paged(draw_lens: list[int], hkv: int, g: int, d: int, bs: int, dtype: torch.dtype,
                  seed: int):
    """Decode queries and a cache whose blocks are handed out in shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    need = [-(-n // bs) for n in draw_lens]
    num_blocks = sum(need) + 3
    order = torch.randperm(num_blocks, generator=gen).tolist()
    tables, at = [], 0
    for n in need:
        tables.append(order[at:at + n])
        at += n
    width = max(need)
    table = torch.tensor([t + [-1] * (width - len(t)) for t in tables])
    k_cache = torch.randn(hkv, num_blocks, bs, d, generator=gen).to(dtype)
    v_cache = torch.randn(hkv, num_blocks, bs, d, generator=gen).to(dtype)
    q = torch.randn(len(draw_lens), hkv * g, d, generator=gen).to(dtype)
    batch = PagedBatch(list(range(len(draw_lens))), [1] * len(draw_lens), draw_lens, table)
    return q, k_cache, v_cache, batch


@compiled
@settings(max_examples=60, deadline=None)
@given(lens=st.lists(st.integers(1, 90), min_size=1, max_size=5), hkv=st.sampled_from([1, 2]),
       g=st.sampled_from([1, 3, 4]), d=st.sampled_from([8, 16, 64]),
       bs=st.sampled_from([1, 4, 16]), window=st.sampled_from([None, 1, 5, 33]),
       seed=st.integers(0, 2**16))
def test_compiled_decode_matches_reference(lens, hkv, g, d, bs, window, seed):
    q, kc, vc, batch = _random_paged(lens, hkv, g, d, bs, torch.float32, seed)
    ref = paged_attention_reference(q, kc, vc, batch, window)
    got = paged_attention(q, kc, vc, batch, window, compiled=True)
    tiled = paged_attention(q, kc, vc, batch, window, compiled=False)
    assert (got - ref).abs().max().item() < 1e-5
    assert (tiled - ref).abs().max().item() < 1e-5


@compiled
@pytest.mark.parametrize("dtype", HALF)
def test_compiled_decode_half_caches(dtype):
    q, kc, vc, batch = _random_paged([5, 70, 33], 2, 4, 64, 16, dtype, seed=3)
    ref = paged_attention_reference(q.float(), kc.float(), vc.float(), batch, None)
    got = paged_attention(q, kc, vc, batch, None, compiled=True)
    assert got.dtype == dtype
    assert (got.float() - ref).abs().max().item() < 2 * torch.finfo(dtype).eps * 4


@compiled
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_rotary_kernel_is_the_reference_bit_for_bit(dtype, rows):
    """q and k as the decode step has them (views into one qkv row block), any positions."""
    gen = torch.Generator().manual_seed(rows)
    hq, hkv, d = 8, 2, 64
    qkv = torch.randn(rows, (hq + 2 * hkv) * d, generator=gen).to(dtype)
    q = qkv[:, :hq * d].view(1, rows, hq, d)
    k = qkv[:, hq * d:(hq + hkv) * d].view(1, rows, hkv, d)
    angles = torch.rand(rows, d // 2, generator=gen) * 1000
    emb = torch.cat((angles, angles), -1)
    cos, sin = emb.cos(), emb.sin()
    sin[:, :d // 2].neg_()
    cos, sin = cos.to(dtype)[None, :, None], sin.to(dtype)[None, :, None]
    fused = CpuRotary()
    fused.module = cpu.kernels()
    with torch.no_grad():
        got_q, got_k = fused(q, k, cos, sin)
    assert torch.equal(got_q, apply_rotary(q, cos, sin))
    assert torch.equal(got_k, apply_rotary(k, cos, sin))


@compiled
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_silu_mul_kernel_rounds_like_the_reference(dtype):
    """Half precision: bit for bit. float32: within one unit in the last place (exp differs
    from PyTorch's vectorised one in the last bit)."""
    gate_up = (torch.randn(4, 2 * 384, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    gate, up = gate_up.chunk(2, -1)
    got, want = cpu.kernels().silu_mul(gate_up), F.silu(gate) * up
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=2.5e-7, atol=1e-30)
    else:
        assert torch.equal(got, want)
