"""flash-attn 2 / SDPA features on the CPU, every ISA: softcap, ALiBi, attn_mask, dropout, varlen.

Each against the fp64 reference (flashattn_lite.reference) under the numerical rule, forward and
backward, plus fp64 gradcheck for every trainable feature.
"""

from __future__ import annotations

import math

import pytest
import torch

from flashattn_lite import (
    flash_attn_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    scaled_dot_product_attention,
)
from flashattn_lite.reference import attention_ref, sdpa_ref, varlen_ref

from conftest import assert_rule, max_err, randn, slow

LOW = (torch.bfloat16, torch.float16)


def _grads(fn, tensors, dout):
    ts = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*ts)
    out.backward(dout)
    return [out] + [t.grad for t in ts]


def _check_fwd_bwd(ours_fn, ref_fn, tensors, dout, names=("out", "dq", "dk", "dv"), factor=None, n_terms=1024):
    """ours_fn / ref_fn(*tensors, upcast) -> out; compares out and every gradient under the rule."""
    dtype = tensors[0].dtype
    ours = _grads(ours_fn, tensors, dout)
    ref = _grads(lambda *t: ref_fn(*t, upcast=True), [t.double() for t in tensors], dout.double())
    same = _grads(lambda *t: ref_fn(*t, upcast=False), tensors, dout)
    f = factor or (3.0 if dtype in LOW else 2.0)
    for name, a, r, s in zip(names, ours, ref, same):
        assert_rule(a, r.to(a.dtype) if a.dtype == torch.float64 else r, s, factor=f, what=name, n_terms=n_terms)


def _qkv(b, s_q, s_k, h, h_kv, d, dtype, d_v=None):
    return (randn((b, s_q, h, d), dtype), randn((b, s_k, h_kv, d), dtype), randn((b, s_k, h_kv, d_v or d), dtype))


# ---- softcap and ALiBi ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, slow(torch.float16), slow(torch.float64)])
@pytest.mark.parametrize("s_q,s_k,d", [slow(97, 97, 40), slow(1, 130, 64), slow(33, 70, 111), (70, 33, 59)])
@pytest.mark.parametrize("causal", [False, True])
# a cap that bends the scores, and Gemma 2's 50 over ordinary scores (tanh of small arguments: 1 - 2 / (1 + e^2y)
# alone cancels there, ~1e-7 absolute, 50x that in the score)
@pytest.mark.parametrize("softcap,q_scale", [(1.5, 3.0), (50.0, 1.0)])
def test_softcap(dtype, s_q, s_k, d, causal, softcap, q_scale, isa):
    q, k, v = _qkv(1, s_q, s_k, 4, 2, d, dtype)
    q = q * q_scale
    dout = randn(q.shape, dtype)
    _check_fwd_bwd(
        lambda q, k, v: flash_attn_func(q, k, v, causal=causal, softcap=softcap),
        lambda q, k, v, upcast: attention_ref(q, k, v, causal=causal, softcap=softcap, upcast=upcast)[0],
        (q, k, v),
        dout,
    )


@pytest.mark.parametrize("s_k", [9, 64, 200])  # a vector and a scalar tail on AVX2; whole vectors
def test_softcap_of_ordinary_scores_keeps_fp32_accuracy(s_k, isa):
    # flash_attn_func: "softcap: float. Anything > 0 activates softcapping attention." -- scores become
    # softcap * tanh(scores / softcap). With Gemma 2's 50 over scores of a few units the tanh argument is small,
    # where 1 - 2 / (1 + e^2y) cancels (~1e-7 absolute, times 50 in the score: outputs and LSE 5-15x the fp32
    # computation's error). The rule's factor 2 with one fp32 eps of noise, for the output and the LSE.
    q, k, v = _qkv(1, 48, s_k, 3, 1, 10, torch.float32)
    out, lse, _ = flash_attn_func(q, k, v, softcap=50.0, return_attn_probs=True)
    ref, ref_lse = attention_ref(q, k, v, softcap=50.0)
    same, same_lse = attention_ref(q, k, v, softcap=50.0, upcast=False)
    eps = torch.finfo(torch.float32).eps
    assert max_err(out, ref) <= 2 * max_err(same, ref) + eps
    assert max_err(lse, ref_lse) <= 2 * max_err(same_lse, ref_lse) + eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, slow(torch.float64)])
@pytest.mark.parametrize("per_batch", [False, True])
@pytest.mark.parametrize("s_q,s_k", [slow(97, 97), slow(5, 200), slow(64, 17), (1, 33)])
@pytest.mark.parametrize("causal", [False, True])
def test_alibi(dtype, per_batch, s_q, s_k, causal, isa):
    b, h = 2, 4
    q, k, v = _qkv(b, s_q, s_k, h, 1, 40, dtype)
    slopes = torch.rand((b, h) if per_batch else (h,)) * 0.5
    dout = randn(q.shape, dtype)
    _check_fwd_bwd(
        lambda q, k, v: flash_attn_func(q, k, v, causal=causal, alibi_slopes=slopes),
        lambda q, k, v, upcast: attention_ref(q, k, v, causal=causal, alibi_slopes=slopes, upcast=upcast)[0],
        (q, k, v),
        dout,
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_combination_gqa_window_softcap_alibi(dtype, isa):
    q, k, v = _qkv(2, 150, 190, 8, 2, 64, dtype)
    slopes = torch.rand(8) * 0.2
    dout = randn(q.shape, dtype)
    kw = dict(window_size=(40, 7), softcap=3.0, alibi_slopes=slopes)
    _check_fwd_bwd(
        lambda q, k, v: flash_attn_func(q, k, v, **kw),
        lambda q, k, v, upcast: attention_ref(q, k, v, upcast=upcast, **kw)[0],
        (q, k, v),
        dout,
    )


@pytest.mark.slow
def test_gradcheck_softcap_alibi_fp64(isa):
    q = randn((2, 9, 4, 5), torch.float64, requires_grad=True)
    k = randn((2, 11, 2, 5), torch.float64, requires_grad=True)
    v = randn((2, 11, 2, 6), torch.float64, requires_grad=True)
    slopes = torch.rand(2, 4) * 0.5
    assert torch.autograd.gradcheck(
        lambda q, k, v: flash_attn_func(q * 2, k, v, causal=True, softcap=0.7, alibi_slopes=slopes), (q, k, v)
    )


# ---- attn_mask (SDPA) -------------------------------------------------------------------------


def _sdpa_qkv(b, h, h_kv, s_q, s_k, d, dtype):
    return (randn((b, h, s_q, d), dtype), randn((b, h_kv, s_k, d), dtype), randn((b, h_kv, s_k, d), dtype))


MASK_SHAPES = [(2, 3, 37, 70), slow((37, 70)), slow((1, 3, 37, 70)), slow((2, 1, 1, 70)), (37, 1), slow((3, 1, 70))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", MASK_SHAPES)
def test_bool_mask(dtype, shape, isa):
    q, k, v = _sdpa_qkv(2, 3, 3, 37, 70, 40, dtype)
    mask = torch.rand(shape) > 0.3
    dout = randn(q.shape, dtype)
    _check_fwd_bwd(
        lambda q, k, v: scaled_dot_product_attention(q, k, v, attn_mask=mask),
        lambda q, k, v, upcast: sdpa_ref(q, k, v, attn_mask=mask, upcast=upcast),
        (q, k, v),
        dout,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", MASK_SHAPES)
def test_float_mask_with_grad(dtype, shape, isa):
    q, k, v = _sdpa_qkv(2, 3, 3, 37, 70, 59, dtype)
    mask = randn(shape, dtype)
    mask = mask.masked_fill(torch.rand(shape) < 0.2, float("-inf"))
    dout = randn(q.shape, dtype)
    _check_fwd_bwd(
        lambda q, k, v, m: scaled_dot_product_attention(q, k, v, attn_mask=m),
        lambda q, k, v, m, upcast: sdpa_ref(q, k, v, attn_mask=m, upcast=upcast),
        (q, k, v, mask),
        dout,
        names=("out", "dq", "dk", "dv", "dmask"),
        n_terms=2 * 3 * 37 * 70,
    )  # a broadcast mask's gradient sums over batch, heads and rows


def test_fully_masked_rows_give_zero(isa):
    q, k, v = _sdpa_qkv(1, 2, 2, 8, 16, 16, torch.float32)
    mask = torch.rand(8, 16) > 0.5
    mask[3] = False
    fmask = torch.zeros(8, 16).masked_fill(~mask, float("-inf"))
    for m in (mask, fmask):
        qq = q.clone().requires_grad_(True)
        out = scaled_dot_product_attention(qq, k, v, attn_mask=m)
        assert torch.equal(out[:, :, 3], torch.zeros_like(out[:, :, 3]))
        assert not torch.isnan(out).any()
        out.sum().backward()
        assert torch.equal(qq.grad[:, :, 3], torch.zeros_like(qq.grad[:, :, 3]))
        ref = sdpa_ref(q, k, v, attn_mask=m)
        assert max_err(out, ref) < 1e-5


@pytest.mark.slow
def test_gradcheck_float_mask_fp64(isa):
    q = randn((1, 2, 7, 5), torch.float64, requires_grad=True)
    k = randn((1, 2, 9, 5), torch.float64, requires_grad=True)
    v = randn((1, 2, 9, 4), torch.float64, requires_grad=True)
    m = randn((2, 7, 9), torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v, m: scaled_dot_product_attention(q, k, v, attn_mask=m), (q, k, v, m))


def test_mask_against_torch_sdpa(isa):
    q, k, v = _sdpa_qkv(2, 4, 4, 50, 64, 32, torch.float32)
    mask = torch.rand(2, 1, 50, 64) > 0.2
    ours = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert max_err(ours, theirs) < 1e-5


# ---- dropout ----------------------------------------------------------------------------------


def test_dropout_reproducible_with_manual_seed(isa):
    q, k, v = _qkv(2, 33, 40, 4, 2, 16, torch.float32)
    torch.manual_seed(123)
    a = flash_attn_func(q, k, v, dropout_p=0.3)
    b = flash_attn_func(q, k, v, dropout_p=0.3)
    torch.manual_seed(123)
    a2 = flash_attn_func(q, k, v, dropout_p=0.3)
    assert torch.equal(a, a2)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("s_q,s_k", [slow(97, 97), slow(1, 300), (5, 40), slow(130, 65)])
@pytest.mark.parametrize("causal", [False, True])
def test_dropout_against_reference(dtype, s_q, s_k, causal, isa):
    q, k, v = _qkv(2, s_q, s_k, 4, 2, 40, dtype)
    dout = randn(q.shape, dtype)
    p = 0.25
    torch.manual_seed(7)
    _, lse, probs = flash_attn_func(q, k, v, dropout_p=p, causal=causal, return_attn_probs=True)
    keep = probs >= 0  # the pattern the kernels drew (negative = dropped)
    keep2 = torch.ops.flashattn_lite.dropout_keep(
        torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, generator=torch.Generator().manual_seed(1)),
        2,
        4,
        s_q,
        s_k,
        p,
    )
    assert keep2.shape == (2, 4, s_q, s_k)

    def ours(q, k, v):
        torch.manual_seed(7)
        return flash_attn_func(q, k, v, dropout_p=p, causal=causal)

    _check_fwd_bwd(
        ours,
        lambda q, k, v, upcast: attention_ref(q, k, v, causal=causal, dropout_p=p, dropout_keep=keep, upcast=upcast)[0],
        (q, k, v),
        dout,
    )


def test_dropout_statistics(isa):
    p = 0.3
    torch.manual_seed(0)
    rng = torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64)
    keep = torch.ops.flashattn_lite.dropout_keep(rng, 2, 4, 128, 256, p)
    frac = keep.float().mean().item()
    n = keep.numel()
    assert abs(frac - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n), frac
    # unbiased: with v = 1 everywhere the output is sum_j P_j z_j / (1 - p), mean 1
    q, k = randn((2, 64, 4, 16), torch.float32), randn((2, 256, 4, 16), torch.float32)
    v = torch.ones(2, 256, 4, 8)
    outs = torch.stack([flash_attn_func(q, k, v, dropout_p=p) for _ in range(20)])
    assert abs(outs.mean().item() - 1.0) < 0.02
    # neighbouring keys, rows and heads are not correlated
    kf = keep.float()
    for a, b in ((kf[..., 1:], kf[..., :-1]), (kf[:, :, 1:], kf[:, :, :-1]), (kf[:, 1:], kf[:, :-1])):
        c = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
        assert abs(c) < 0.02, c


def test_dropout_same_bits_every_isa():
    import flashattn_lite

    q, k, v = _qkv(1, 20, 70, 2, 2, 16, torch.float32)
    outs = []
    before = flashattn_lite.cpu_isa()
    try:
        for isa_name in flashattn_lite.available_isas():
            flashattn_lite._C._set_cpu_isa(isa_name)
            torch.manual_seed(5)
            outs.append(flash_attn_func(q, k, v, dropout_p=0.5, return_attn_probs=True)[2] >= 0)
    finally:
        flashattn_lite._C._set_cpu_isa(before)
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_dropout_sdpa(isa):
    q, k, v = _sdpa_qkv(1, 2, 2, 16, 24, 8, torch.float64)
    torch.manual_seed(3)
    a = scaled_dot_product_attention(q, k, v, dropout_p=0.4)
    torch.manual_seed(3)
    b = scaled_dot_product_attention(q, k, v, dropout_p=0.4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, scaled_dot_product_attention(q, k, v))


@pytest.mark.slow
def test_gradcheck_dropout_fp64(isa):
    q = randn((1, 8, 2, 4), torch.float64, requires_grad=True)
    k = randn((1, 10, 2, 4), torch.float64, requires_grad=True)
    v = randn((1, 10, 2, 5), torch.float64, requires_grad=True)

    def f(q, k, v):
        torch.manual_seed(11)  # the same mask on every evaluation
        return flash_attn_func(q, k, v, dropout_p=0.3, softcap=2.0)

    assert torch.autograd.gradcheck(f, (q, k, v))


# ---- varlen -----------------------------------------------------------------------------------


def _cu(lengths):
    return torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32)


VARLEN_CASES = [
    slow(([5, 1, 97, 0, 33], [7, 3, 97, 4, 1])),
    slow(([1], [1025])),
    slow(([64, 64], [64, 64])),
    ([40, 3], [0, 9]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, slow(torch.float64)])
@pytest.mark.parametrize("lens", VARLEN_CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_varlen(dtype, lens, causal, isa):
    lq, lk = lens
    cq, ck = _cu(lq), _cu(lk)
    h, h_kv, d = 4, 2, 40
    q, k, v = randn((sum(lq), h, d), dtype), randn((sum(lk), h_kv, d), dtype), randn((sum(lk), h_kv, d), dtype)
    dout = randn(q.shape, dtype)
    slopes = torch.rand(len(lq), h) * 0.3
    kw = dict(causal=causal, softcap=4.0)
    _check_fwd_bwd(
        lambda q, k, v: flash_attn_varlen_func(q, k, v, cq, ck, max(lq), max(lk), alibi_slopes=slopes, **kw),
        lambda q, k, v, upcast: varlen_ref(q, k, v, cq, ck, upcast=upcast, alibi_slopes=slopes, **kw)[0],
        (q, k, v),
        dout,
    )
    _, lse, _ = flash_attn_varlen_func(
        q, k, v, cq, ck, max(lq), max(lk), alibi_slopes=slopes, return_attn_probs=True, **kw
    )
    _, lse_ref = varlen_ref(q, k, v, cq, ck, alibi_slopes=slopes, **kw)
    assert lse.shape == (h, sum(lq))
    fin = torch.isfinite(lse_ref)
    assert torch.equal(torch.isfinite(lse), fin)
    assert max_err(lse[fin], lse_ref[fin]) < 1e-3


def test_varlen_matches_padded_batch(isa):
    lq = [9, 31, 1]
    cq = _cu(lq)
    q, k, v = (randn((sum(lq), 2, 16), torch.float32) for _ in range(3))
    out = flash_attn_varlen_qkvpacked_func(torch.stack([q, k, v], 1), cq, max(lq), causal=True)
    for i in range(len(lq)):
        s = slice(int(cq[i]), int(cq[i + 1]))
        one = flash_attn_func(q[s][None], k[s][None], v[s][None], causal=True)[0]
        assert max_err(out[s], one) < 1e-6
    out2 = flash_attn_varlen_kvpacked_func(q, torch.stack([k, v], 1), cq, cq, max(lq), max(lq), causal=True)
    assert torch.equal(out, out2)


def test_varlen_padding_rows_untouched(isa):
    # tokens past cu_seqlens[-1] belong to no sequence: output 0, gradient 0
    cq = torch.tensor([0, 3, 5], dtype=torch.int32)
    q = randn((8, 2, 8), torch.float32, requires_grad=True)
    k = randn((8, 2, 8), torch.float32, requires_grad=True)
    v = randn((8, 2, 8), torch.float32, requires_grad=True)
    out = flash_attn_varlen_func(q, k, v, cq, cq, 3, 3)
    assert torch.equal(out[5:], torch.zeros_like(out[5:]))
    out.sum().backward()
    for g in (q.grad, k.grad, v.grad):
        assert torch.equal(g[5:], torch.zeros_like(g[5:]))


@pytest.mark.slow
def test_gradcheck_varlen_fp64(isa):
    cq, ck = _cu([3, 0, 5]), _cu([4, 2, 6])
    q = randn((8, 2, 4), torch.float64, requires_grad=True)
    k = randn((12, 1, 4), torch.float64, requires_grad=True)
    v = randn((12, 1, 3), torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: flash_attn_varlen_func(q, k, v, cq, ck, 5, 6, causal=True, window_size=(2, 1)), (q, k, v)
    )


# ---- decode over interleaved heads (groups of heads walk the keys together) -------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, slow(torch.float16)])
@pytest.mark.parametrize(
    "h,h_kv,d,s_k", [slow(48, 48, 256, 700), slow(40, 8, 16, 1025), (6, 2, 59, 97), slow(33, 11, 128, 300)]
)
@pytest.mark.parametrize("extra", ["plain", "alibi_softcap", slow("window")])
@pytest.mark.parametrize("s_q", [1, 5, slow(16)])  # one token; speculative decoding / several rows
def test_decode_head_groups(dtype, h, h_kv, d, s_k, extra, s_q, isa):
    q, k, v = _qkv(2, s_q, s_k, h, h_kv, d, dtype)  # k/v (b, s_k, h_kv, d): heads interleaved in a row
    kw = {}
    if extra == "alibi_softcap":
        kw = dict(alibi_slopes=torch.rand(h) * 0.05, softcap=5.0)
    if extra == "window":
        kw = dict(window_size=(200, 0), causal=True)
    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True, **kw)
    ref, ref_lse = attention_ref(q, k, v, **kw)
    same, _ = attention_ref(q, k, v, upcast=False, **kw)
    assert_rule(out, ref, same, n_terms=s_k)
    assert max_err(lse, ref_lse) < 1e-3
