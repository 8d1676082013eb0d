"""scaled_dot_product_attention: torch's signature, layout and top-left causal semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flashattn_lite import scaled_dot_product_attention
from flashattn_lite.reference import sdpa_ref

from conftest import DTYPES_THIN, assert_rule, randn, slow


@pytest.mark.parametrize("dtype", DTYPES_THIN)
@pytest.mark.parametrize("L,S", [(1, 1), slow(97, 97), (40, 130), slow(130, 40)])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("E,Ev", [(59, 59), (64, 40)])
def test_sdpa_matches_reference(dtype, L, S, is_causal, E, Ev):
    q, k, v = randn((2, 3, L, E), dtype), randn((2, 3, S, E), dtype), randn((2, 3, S, Ev), dtype)
    out = scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    ref = sdpa_ref(q, k, v, is_causal=is_causal)
    torch_same = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    assert out.shape == (2, 3, L, Ev)
    assert_rule(out, ref, torch_same if dtype != torch.float64 else ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdpa_gqa_and_scale(dtype):
    q, k, v = randn((2, 8, 50, 32), dtype), randn((2, 2, 60, 32), dtype), randn((2, 2, 60, 32), dtype)
    out = scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2, enable_gqa=True)
    torch_same = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2, enable_gqa=True)
    ref = sdpa_ref(q, k, v, is_causal=True, scale=0.2)
    assert_rule(out, ref, torch_same)


def test_sdpa_3d_inputs():
    q, k, v = randn((4, 10, 16), torch.float32), randn((4, 12, 16), torch.float32), randn((4, 12, 16), torch.float32)
    out = scaled_dot_product_attention(q, k, v)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdpa_gradients_match_torch(dtype):
    q, k, v = (randn((1, 4, 70, 40), dtype, requires_grad=True) for _ in range(3))
    dout = randn((1, 4, 70, 40), dtype)
    grads = []
    for fn in (scaled_dot_product_attention, F.scaled_dot_product_attention):
        out = fn(q, k, v, is_causal=True)
        grads.append(torch.autograd.grad(out, (q, k, v), dout))
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref = torch.autograd.grad(sdpa_ref(q64, k64, v64, is_causal=True), (q64, k64, v64), dout.double())
    factor = 3.0 if dtype == torch.bfloat16 else 2.0
    for name, a, t, r in zip(("dq", "dk", "dv"), grads[0], grads[1], ref):
        assert_rule(a, r, t, factor=factor, what=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sdpa_all_true_mask_changes_nothing(isa, dtype):
    """torch's docstring: "A boolean mask where a value of True indicates that the element *should*
    take part in attention." An all-True mask therefore leaves the result as it is -- bit for bit
    here, since the kernels then run the same arithmetic (the CPU forward takes its row-by-row
    softmax path with a mask and its grouped one without: the two must agree exactly)."""
    q, k, v = (randn((2, 3, n, 64), dtype) for n in (300, 517, 517))
    mask = torch.ones(300, 517, dtype=torch.bool)
    plain = scaled_dot_product_attention(q, k, v)
    masked = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(plain, masked)
    assert_rule(plain, sdpa_ref(q, k, v), F.scaled_dot_product_attention(q, k, v))
