"""Backward: fp64 gradcheck and low-precision gradients under the numerical rule."""

from __future__ import annotations

import pytest
import torch

import flashattn_lite
from flashattn_lite import flash_attn_func, flash_attn_varlen_func, scaled_dot_product_attention
from flashattn_lite.reference import attention_ref

from conftest import DTYPES_THIN, assert_rule, randn, slow


@pytest.mark.parametrize("causal", [slow(False), True])
@pytest.mark.parametrize(
    "s_q,s_k,h,h_kv,d", [slow(9, 9, 2, 2, 5), slow(7, 12, 4, 2, 3), slow(13, 6, 3, 1, 8), (1, 5, 2, 1, 4)]
)
def test_gradcheck_fp64(causal, s_q, s_k, h, h_kv, d, isa):
    q = randn((2, s_q, h, d), torch.float64, requires_grad=True)
    k = randn((2, s_k, h_kv, d), torch.float64, requires_grad=True)
    v = randn((2, s_k, h_kv, d), torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: flash_attn_func(q, k, v, causal=causal), (q, k, v))


@pytest.mark.slow
def test_gradcheck_fp64_with_lse_output_and_window():
    q = randn((1, 10, 2, 4), torch.float64, requires_grad=True)
    k = randn((1, 12, 2, 4), torch.float64, requires_grad=True)
    v = randn((1, 12, 2, 6), torch.float64, requires_grad=True)

    def f(q, k, v):
        out, lse, _ = flash_attn_func(q, k, v, window_size=(3, 2), return_attn_probs=True)
        return out, lse.masked_fill(torch.isinf(lse), 0.0)

    assert torch.autograd.gradcheck(f, (q, k, v))


@pytest.mark.slow
def test_gradcheck_sdpa_fp64():
    q = randn((2, 3, 8, 5), torch.float64, requires_grad=True)
    k = randn((2, 3, 11, 5), torch.float64, requires_grad=True)
    v = randn((2, 3, 11, 7), torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v))


def _grads(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout)
    return out, q.grad, k.grad, v.grad


@pytest.mark.parametrize("dtype", DTYPES_THIN)
@pytest.mark.parametrize("d", [slow(8), slow(40), 59, slow(64), slow(111), slow(128)])
@pytest.mark.parametrize("s_q,s_k", [slow(97, 97), (33, 130), slow(130, 33)])
@pytest.mark.parametrize("causal", [False, True])
def test_gradients_rule(dtype, d, s_q, s_k, causal, isa):
    h, h_kv = 4, 2
    q, k, v = randn((1, s_q, h, d), dtype), randn((1, s_k, h_kv, d), dtype), randn((1, s_k, h_kv, d), dtype)
    dout = randn((1, s_q, h, d), dtype)
    ours = _grads(lambda q, k, v: flash_attn_func(q, k, v, causal=causal), q, k, v, dout)
    ref = _grads(
        lambda q, k, v: attention_ref(q, k, v, causal=causal)[0], q.double(), k.double(), v.double(), dout.double()
    )
    same = _grads(lambda q, k, v: attention_ref(q, k, v, causal=causal, upcast=False)[0], q, k, v, dout)
    factor = 3.0 if dtype in (torch.bfloat16, torch.float16) else 2.0
    for name, a, r, s in zip(("out", "dq", "dk", "dv"), ours, ref, same):
        assert a.dtype == dtype
        assert_rule(a, r, s, factor=factor, what=name)


def test_fully_masked_rows_have_zero_dq(isa):
    q = randn((1, 20, 2, 8), torch.float32, requires_grad=True)
    k = randn((1, 5, 2, 8), torch.float32, requires_grad=True)
    v = randn((1, 5, 2, 8), torch.float32, requires_grad=True)
    out = flash_attn_func(q, k, v, causal=True)
    out.sum().backward()
    assert torch.equal(q.grad[:, :15], torch.zeros_like(q.grad[:, :15]))
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


def test_lse_gradient_matches_reference(isa):
    q = randn((1, 17, 2, 8), torch.float64, requires_grad=True)
    k = randn((1, 23, 2, 8), torch.float64, requires_grad=True)
    v = randn((1, 23, 2, 8), torch.float64, requires_grad=True)
    w = randn((1, 2, 17), torch.float64)
    _, lse, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    g = torch.autograd.grad((lse * w).sum(), (q, k))
    _, ref_lse = attention_ref(q, k, v, causal=True)
    rg = torch.autograd.grad((ref_lse * w).sum(), (q, k))
    for a, b in zip(g, rg):
        assert torch.allclose(a, b, atol=1e-12)


def test_backward_empty():
    q = randn((2, 0, 2, 8), torch.float32, requires_grad=True)
    k = randn((2, 5, 2, 8), torch.float32, requires_grad=True)
    v = randn((2, 5, 2, 8), torch.float32, requires_grad=True)
    flash_attn_func(q, k, v).sum().backward()
    assert torch.equal(k.grad, torch.zeros_like(k)) and q.grad.shape == q.shape


@pytest.mark.parametrize("window", [(0, 0), (5, 3), (16, -1), (-1, 7)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("s_q,s_k", [(130, 150), slow(150, 70)])
def test_window_gradients_rule(window, causal, s_q, s_k, isa):
    dtype = torch.float32
    q, k, v = randn((1, s_q, 2, 32), dtype), randn((1, s_k, 1, 32), dtype), randn((1, s_k, 1, 32), dtype)
    dout = randn((1, s_q, 2, 32), dtype)
    kw = dict(causal=causal, window_size=window)
    ours = _grads(lambda q, k, v: flash_attn_func(q, k, v, **kw), q, k, v, dout)
    ref = _grads(lambda q, k, v: attention_ref(q, k, v, **kw)[0], q.double(), k.double(), v.double(), dout.double())
    same = _grads(lambda q, k, v: attention_ref(q, k, v, upcast=False, **kw)[0], q, k, v, dout)
    for name, a, r, s in zip(("out", "dq", "dk", "dv"), ours, ref, same):
        assert_rule(a, r, s, what=name)


def test_deterministic_flag_accepted_and_bitwise(isa):
    q, k, v, dout = (randn((1, 70, 2, 16), torch.float32) for _ in range(4))
    runs = [_grads(lambda q, k, v: flash_attn_func(q, k, v, deterministic=True), q, k, v, dout) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("s_q,s_k", [(339, 1), slow(4097, 1), slow(2000, 3)])
def test_dkdv_sum_over_rows_as_accurate_as_torch(s_q, s_k, isa):
    # dV = P^T dO sums s_q rows. A running fp32 sum over all of them loses ~s_q roundings (seen by
    # flash-attn's suite: fp16 dV one ulp off at s_q = 339, s_k = 1, where torch is exact); the
    # kernels sum blocks of rows apart, as a GEMM's K loop does. Yardstick: the same gradient by
    # torch in fp32 (einsum -> GEMM); the rule's factor 2, no noise allowance.
    b, h, d = 1, 4, 64
    q, k, v = (randn((b, n, h, d), torch.float32, requires_grad=True) for n in (s_q, s_k, s_k))
    dout = randn((b, s_q, h, d), torch.float32)
    dv = torch.autograd.grad(flash_attn_func(q, k, v), (v,), dout)[0]

    def torch_path(dtype):
        qq, kk, vv = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        p = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", qq, kk) / d**0.5, -1)
        return torch.autograd.grad(torch.einsum("bhqk,bkhd->bqhd", p, vv), (vv,), dout.to(dtype))[0]

    ref, same = torch_path(torch.float64), torch_path(torch.float32)
    err, err_torch = (dv.double() - ref).abs().max().item(), (same.double() - ref).abs().max().item()
    assert err <= 2 * err_torch, f"dV err {err:.3e} > 2 x torch fp32 {err_torch:.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "feature", ["plain", "causal", "window", "softcap_alibi", "dropout", slow("varlen"), slow("mask")]
)
@pytest.mark.parametrize("h", [4, 3], ids=["head_split", "key_split"])
def test_mqa_backward_key_splits(dtype, feature, h, isa):
    # MQA at batch 1 is one (batch, kv head) work item: on 2 threads the SIMD plan splits it in two.
    # 4 query heads: 2 each (every key; each split owns dQ of its heads and a dK/dV partial that a
    # combine pass adds); 3 heads do not halve: the 1000+ keys split (each split owning dK/dV of its
    # keys and a dQ partial). Same rule as every gradient, on 2 threads (split) and on 1 (unsplit).
    s_q, s_k, d = 301, 1100, 40
    q, k, v = randn((1, s_q, h, d), dtype), randn((1, s_k, 1, d), dtype), randn((1, s_k, 1, d), dtype)
    dout = randn((1, s_q, h, d), dtype)
    kw: dict = {}
    if feature == "causal":
        kw = dict(causal=True)
    elif feature == "window":
        kw = dict(window_size=(300, 50))
    elif feature == "softcap_alibi":
        kw = dict(softcap=5.0, alibi_slopes=torch.rand(h) * 0.1)
    if feature == "dropout":
        torch.manual_seed(7)
        rng = flashattn_lite.interface.rng_state_for(0.3, q.device)
        keep = torch.ops.flashattn_lite.dropout_keep(rng, 1, h, s_q, s_k, 0.3)
        call = lambda q, k, v: flashattn_lite._common._attn(  # noqa: E731
            q, k, v, d**-0.5, False, True, (-1, -1), dropout_p=0.3, rng_state=rng
        )[0]
        ref_fn = lambda q, k, v, up: attention_ref(q, k, v, upcast=up, dropout_p=0.3, dropout_keep=keep)[0]  # noqa: E731
    elif feature == "mask":
        mask = randn((s_q, s_k), dtype)
        call = lambda q, k, v: scaled_dot_product_attention(  # noqa: E731
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, enable_gqa=True
        ).transpose(1, 2)
        ref_fn = lambda q, k, v, up: attention_ref(q, k, v, upcast=up, bottom_right=False, attn_mask=mask)[0]  # noqa: E731
    elif feature == "varlen":
        cu_q = torch.tensor([0, 100, s_q], dtype=torch.int32)
        cu_k = torch.tensor([0, 600, s_k], dtype=torch.int32)

        def call(q, k, v):
            return flash_attn_varlen_func(q[0], k[0], v[0], cu_q, cu_k, 201, 600, causal=True).unsqueeze(0)

        def ref_fn(q, k, v, up):
            outs = [
                attention_ref(q[:, a:b], k[:, c:e], v[:, c:e], causal=True, upcast=up)[0]
                for a, b, c, e in ((0, 100, 0, 600), (100, s_q, 600, s_k))
            ]
            return torch.cat(outs, 1)
    else:
        call = lambda q, k, v: flash_attn_func(q, k, v, **kw)  # noqa: E731
        ref_fn = lambda q, k, v, up: attention_ref(q, k, v, upcast=up, **kw)[0]  # noqa: E731
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ours = _grads(call, q, k, v, dout)
        torch.set_num_threads(1)
        single = _grads(call, q, k, v, dout)
    finally:
        torch.set_num_threads(before)
    ref = _grads(lambda q, k, v: ref_fn(q, k, v, True), q.double(), k.double(), v.double(), dout.double())
    same = _grads(lambda q, k, v: ref_fn(q, k, v, False), q, k, v, dout)
    factor = 3.0 if dtype != torch.float32 else 2.0
    for name, a, r, s, one in zip(("out", "dq", "dk", "dv"), ours, ref, same, single):
        assert_rule(a, r, s, factor=factor, what=name, n_terms=s_k)
        assert_rule(one, r, s, factor=factor, what=name + " (1 thread)", n_terms=s_k)


@pytest.mark.parametrize("threads, b, used", [(2, 1, [0]), (4, 2, [37, 0]), (1, 2, [0, 37])])
def test_sequence_without_keys_zero_gradients(threads, b, used, isa):
    # A sequence whose seqused_k is 0 sees no key: its output rows are 0, so every gradient that flows
    # through them is 0 -- dQ of each of its query heads whatever split the backward takes (MQA at batch 1 or 2
    # splits its items over the query heads on 2 and 4 threads), dK / dV of its key rows. The other sequence
    # matches the reference.
    h, s_q, s_k, d = 8, 45, 37, 32
    q, k, v = (randn((b, n, hh, d), torch.float32, requires_grad=True) for n, hh in ((s_q, h), (s_k, 1), (s_k, 1)))
    dout = randn((b, s_q, h, d), torch.float32)
    seqused = torch.tensor(used, dtype=torch.int32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out = flashattn_lite._common._attn(q, k, v, d**-0.5, False, True, (-1, -1), seqused_k=seqused)[0]
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    finally:
        torch.set_num_threads(before)
    for i, n in enumerate(used):
        if n == 0:
            assert torch.equal(out[i], torch.zeros_like(out[i]))
            assert torch.equal(dq[i], torch.zeros_like(dq[i])), "dQ of a sequence without keys"
            assert torch.equal(dk[i], torch.zeros_like(dk[i])) and torch.equal(dv[i], torch.zeros_like(dv[i]))
        else:
            assert not dk[i, n:].any() and not dv[i, n:].any(), "key rows past seqused_k"
            one = [t[i : i + 1, :m].detach() for t, m in ((q, s_q), (k, n), (v, n))]
            ref = _grads(
                lambda q, k, v: attention_ref(q, k, v)[0], *(t.double() for t in one), dout[i : i + 1].double()
            )
            same = _grads(lambda q, k, v: attention_ref(q, k, v, upcast=False)[0], *one, dout[i : i + 1])
            ours = (out[i : i + 1], dq[i : i + 1], dk[i : i + 1, :n], dv[i : i + 1, :n])
            for name, a, r, sm in zip(("out", "dq", "dk", "dv"), ours, ref, same):
                assert_rule(a, r, sm, factor=2.0, what=name, n_terms=n)


@pytest.mark.parametrize("threads, h", [(3, 5), (4, 5), (4, 8)])
@pytest.mark.parametrize("kw", [dict(causal=True), dict(window_size=(500, 100))], ids=["causal", "window"])
def test_mqa_backward_uneven_key_splits(threads, h, kw, isa):
    # flash_attn_func: "If causal=True, the causal mask is aligned to the bottom right corner of the attention
    # matrix." -- a lone (batch, kv head) item is split once per thread: 5 query heads do not divide into 3 or 4
    # parts, so the 2100 keys split, cut where the rows that see each key tile reach equal shares (the causal
    # keys' work is uneven), each split's dK / dV its own, dQ the sum of the splits' partials; 8 heads split 2 per
    # thread (dQ their own, dK / dV the sum of the splits' partials). Same rule as every gradient.
    s_q, s_k, d = 700, 2100, 32
    dtype = torch.bfloat16
    q, k, v = randn((1, s_q, h, d), dtype), randn((1, s_k, 1, d), dtype), randn((1, s_k, 1, d), dtype)
    dout = randn((1, s_q, h, d), dtype)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        ours = _grads(lambda q, k, v: flash_attn_func(q, k, v, **kw), q, k, v, dout)
    finally:
        torch.set_num_threads(before)
    ref = _grads(lambda q, k, v: attention_ref(q, k, v, **kw)[0], q.double(), k.double(), v.double(), dout.double())
    same = _grads(lambda q, k, v: attention_ref(q, k, v, upcast=False, **kw)[0], q, k, v, dout)
    for name, a, r, s in zip(("out", "dq", "dk", "dv"), ours, ref, same):
        assert_rule(a, r, s, factor=3.0, what=name, n_terms=s_k)
