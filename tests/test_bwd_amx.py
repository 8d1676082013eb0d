"""The amx ISA's bf16 and fp16 backward (README, CPU kernels): all five products on AMX tiles (fp16 as hi + lo bf16
parts, three tile products per product) -- S and dP in blocks of
32 query rows x 64 keys, dV^T and dK^T accumulated transposed over blocks of 64 query rows, dQ in blocks of 32
rows -- the softmax, dropout, score transforms and mask gradient in AVX-512 as on the avx512 ISA. Every case
runs on the amx ISA against the fp64 reference under flash-attn's rule (factor 3 for bf16 / fp16 gradients), in both
dtypes (the `dtype` fixture); skipped
without AMX. Sizes cut the tiles everywhere: s_q not a multiple of 32 or 64 (a last block of rows), s_k not a
multiple of 64 (a last key tile of fewer than 32 keys, or more), head dims no multiple of 32."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.nn.functional import scaled_dot_product_attention

import flashattn_lite
from flashattn_lite import flash_attn_func, flash_attn_varlen_func
from flashattn_lite.reference import attention_ref

from conftest import assert_rule, randn

pytestmark = pytest.mark.skipif(
    "amx" not in flashattn_lite.available_isas(), reason="needs a CPU with AMX-BF16 (and Linux 5.16+)"
)
BF = torch.bfloat16


@pytest.fixture(params=[torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def dtype(request):
    return request.param


@contextlib.contextmanager
def isa(name):
    before = flashattn_lite.cpu_isa()
    flashattn_lite._C._set_cpu_isa(name)
    try:
        yield
    finally:
        flashattn_lite._C._set_cpu_isa(before)


def grads(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout)
    return out, q.grad, k.grad, v.grad


def check(call, ref_fn, q, k, v, dout, what):
    """ours on the amx ISA vs the fp64 reference, the same-dtype computation as the yardstick (factor 3)."""
    with isa("amx"):
        ours = grads(call, q, k, v, dout)
    ref = grads(lambda q, k, v: ref_fn(q, k, v, True), q.double(), k.double(), v.double(), dout.double())
    same = grads(lambda q, k, v: ref_fn(q, k, v, False), q, k, v, dout)
    for name, a, r, s in zip(("out", "dq", "dk", "dv"), ours, ref, same):
        assert a.dtype == q.dtype and a.shape == r.shape
        assert_rule(a, r, s, factor=3.0, what=f"{what} {name}", n_terms=max(1024, q.shape[1]))
    return ours


# flash_attn_func: "Supports multi-query and grouped-query attention (MQA/GQA) by passing in KV with fewer heads
# than Q." and "If causal=True, the causal mask is aligned to the bottom right corner of the attention matrix."
# -- s_q 45 (one partial block: 45 of 64 rows, the second group of 32 partial), 200 (3 whole blocks + 8 rows);
# s_k 50 (a key tile of 50: dQ's second k-step of key pairs half used), 150 (2 tiles + 22 keys: the second
# k-step skipped); d 72 (K's pairs padded to 48), 96, 128, 256; dv != d.
@pytest.mark.parametrize("s_q,s_k", [(45, 50), (200, 150), (130, 333)])
@pytest.mark.parametrize("d,dv", [(64, 64), (128, 128), (72, 72), (96, 64), (256, 256), (40, 72)])
@pytest.mark.parametrize("causal", [False, True])
def test_gradients_rule(s_q, s_k, d, dv, causal, dtype):
    h, h_kv = 4, 2
    q, k, v = randn((2, s_q, h, d), dtype), randn((2, s_k, h_kv, d), dtype), randn((2, s_k, h_kv, dv), dtype)
    dout = randn((2, s_q, h, dv), dtype)
    check(
        lambda q, k, v: flash_attn_func(q, k, v, causal=causal),
        lambda q, k, v, up: attention_ref(q, k, v, causal=causal, upcast=up)[0],
        q,
        k,
        v,
        dout,
        f"s_q={s_q} s_k={s_k} d={d}/{dv} causal={causal}",
    )


# flash_attn_func: "window_size: (left, right). If not (-1, -1), implements sliding window local attention."
# -- rows that see no key of a tile (zero P and dS inside a block), and blocks that start mid-tile;
# "softcap: float. Anything > 0 activates softcapping attention." and "alibi_slopes: (nheads,) or (batch_size,
# nheads), fp32. A bias of (-alibi_slope * |i + seqlen_k - seqlen_q - j|) is added to the attention score of
# query i and key j." -- the per-element path of the softmax step between the tile products.
@pytest.mark.parametrize(
    "kw",
    [
        dict(window_size=(70, 10)),
        dict(causal=True, window_size=(33, 0)),
        dict(softcap=5.0),
        dict(alibi=True, causal=True),
    ],
    ids=["window", "causal_window", "softcap", "alibi"],
)
def test_feature_gradients_rule(kw, dtype):
    kw = dict(kw)
    h, s_q, s_k, d = 4, 190, 260, 64
    if kw.pop("alibi", False):
        kw["alibi_slopes"] = torch.rand(h) * 0.3
    q, k, v, dout = (
        randn((1, s_q, h, d), dtype),
        randn((1, s_k, 2, d), dtype),
        randn((1, s_k, 2, d), dtype),
        randn((1, s_q, h, d), dtype),
    )
    check(
        lambda q, k, v: flash_attn_func(q, k, v, **kw),
        lambda q, k, v, up: attention_ref(q, k, v, upcast=up, **kw)[0],
        q,
        k,
        v,
        dout,
        str(kw),
    )


# torch SDPA: "attn_mask (optional Tensor) -- Attention mask; ... A float mask of the same type as query, key,
# value that is added to the attention score." -- its gradient is dS (before softcap), written per element
# beside the tiles; "dropout_p (float) -- Dropout probability; if greater than 0.0, dropout is applied"
# (flash_attn_func's dropout_p, the keep pattern from the saved RNG state).
@pytest.mark.parametrize("feature", ["float_mask", "dropout"])
def test_mask_and_dropout_gradients_rule(feature, dtype):
    h, s_q, s_k, d = 2, 150, 200, 64
    q, k, v, dout = (
        randn((1, s_q, h, d), dtype),
        randn((1, s_k, h, d), dtype),
        randn((1, s_k, h, d), dtype),
        randn((1, s_q, h, d), dtype),
    )
    if feature == "float_mask":
        mask = randn((s_q, s_k), dtype).requires_grad_(True)
        with isa("amx"):
            qt, kt, vt = (t.detach().transpose(1, 2).requires_grad_(True) for t in (q, k, v))
            out = scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
            out.backward(dout.transpose(1, 2))
        m64 = mask.detach().double().requires_grad_(True)
        q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
        ref = attention_ref(q64, k64, v64, bottom_right=False, attn_mask=m64)[0]
        ref.backward(dout.double())
        ms = mask.detach().clone().requires_grad_(True)
        qs, ks, vs = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        attention_ref(qs, ks, vs, bottom_right=False, attn_mask=ms, upcast=False)[0].backward(dout)
        for name, a, r, s in (
            ("dq", qt.grad.transpose(1, 2), q64.grad, qs.grad),
            ("dk", kt.grad.transpose(1, 2), k64.grad, ks.grad),
            ("dv", vt.grad.transpose(1, 2), v64.grad, vs.grad),
            ("dmask", mask.grad, m64.grad, ms.grad),
        ):
            assert_rule(a, r, s, factor=3.0, what=name)
        return
    torch.manual_seed(11)
    rng = flashattn_lite.interface.rng_state_for(0.25, q.device)
    keep = torch.ops.flashattn_lite.dropout_keep(rng, 1, h, s_q, s_k, 0.25)
    check(
        lambda q, k, v: flashattn_lite._common._attn(
            q, k, v, d**-0.5, False, True, (-1, -1), dropout_p=0.25, rng_state=rng
        )[0],
        lambda q, k, v, up: attention_ref(q, k, v, upcast=up, dropout_p=0.25, dropout_keep=keep)[0],
        q,
        k,
        v,
        dout,
        "dropout",
    )


# flash_attn_varlen_func: "cu_seqlens_q: (batch_size + 1,), dtype torch.int32. The cumulative sequence lengths
# of the sequences in the batch, used to index into q." -- sequences of 1, 70 and 129 rows (blocks that end
# mid-group) against 64, 33 and 200 keys; and MQA at batch 1, which the plan splits over the keys (each split's
# dQ partial added by the combine pass).
def test_varlen_and_key_splits_gradients_rule(dtype):
    h, d = 4, 64
    lens_q, lens_k = [1, 70, 129], [64, 33, 200]
    cu_q = torch.tensor([0, 1, 71, 200], dtype=torch.int32)
    cu_k = torch.tensor([0, 64, 97, 297], dtype=torch.int32)
    q, k, v, dout = (
        randn((1, 200, h, d), dtype),
        randn((1, 297, 2, d), dtype),
        randn((1, 297, 2, d), dtype),
        randn((1, 200, h, d), dtype),
    )

    def call(q, k, v):
        return flash_attn_varlen_func(q[0], k[0], v[0], cu_q, cu_k, max(lens_q), max(lens_k), causal=True).unsqueeze(0)

    def ref_fn(q, k, v, up):
        outs = [
            attention_ref(q[:, a:b], k[:, c:e], v[:, c:e], causal=True, upcast=up)[0]
            for a, b, c, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist())
        ]
        return torch.cat(outs, 1)

    check(call, ref_fn, q, k, v, dout, "varlen")

    q, k, v, dout = (
        randn((1, 301, 8, 64), dtype),
        randn((1, 2100, 1, 64), dtype),
        randn((1, 2100, 1, 64), dtype),
        randn((1, 301, 8, 64), dtype),
    )
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        check(
            lambda q, k, v: flash_attn_func(q, k, v),
            lambda q, k, v, up: attention_ref(q, k, v, upcast=up)[0],
            q,
            k,
            v,
            dout,
            "mqa split",
        )
    finally:
        torch.set_num_threads(before)


# The tiles and the avx512 ISA's vdpbf16ps products take the same bf16 operands (P and dS rounded to bf16) and
# sum in fp32 in another order: the two ISAs agree to a few bf16 ulps, a mutation of either shows. fp16: the
# tiles' hi + lo products against the avx512 ISA's fp32 panels, to a few fp16 ulps.
def test_amx_matches_avx512_backward(dtype):
    q, k, v, dout = (
        randn((1, 333, 4, 128), dtype),
        randn((1, 300, 4, 128), dtype),
        randn((1, 300, 4, 128), dtype),
        randn((1, 333, 4, 128), dtype),
    )
    with isa("amx"):
        a = grads(lambda q, k, v: flash_attn_func(q, k, v, causal=True), q, k, v, dout)
    with isa("avx512"):
        b = grads(lambda q, k, v: flash_attn_func(q, k, v, causal=True), q, k, v, dout)
    for name, x, y in zip(("out", "dq", "dk", "dv"), a, b):
        scale = y.float().abs().max().item()
        tol = 0.02 if dtype == BF else 0.004
        assert (x.float() - y.float()).abs().max().item() <= tol * scale, name


# fp16 has an 11-bit significand and bf16 8: the fp16 backward must not round its operands to bf16 (split_bf16.h:
# each value is hi + lo, exactly; P and dS to 2^-17). With values that bf16 cannot hold (1 + j 2^-10) a bf16
# rounding would move every product by up to 2^-9; the gradients must match the fp64 reference as closely as the
# avx512 ISA's fp32 panels do.
def test_amx_fp16_backward_keeps_fp16_precision():
    g = torch.Generator().manual_seed(5)

    def vals(shape, mul):
        base = 1 + torch.randint(1, 8, shape, generator=g).double() * 2**-10
        return (base * torch.randn(shape, generator=g).sign() * mul).half()

    q, k, v, dout = (
        vals((1, 150, 2, 64), 0.3),
        vals((1, 170, 2, 64), 0.3),
        vals((1, 170, 2, 64), 1),
        vals((1, 150, 2, 64), 1),
    )
    ref = grads(
        lambda q, k, v: attention_ref(q, k, v, causal=True)[0], q.double(), k.double(), v.double(), dout.double()
    )
    err = {}
    for name in ("avx512", "amx"):
        with isa(name):
            ours = grads(lambda q, k, v: flash_attn_func(q, k, v, causal=True), q, k, v, dout)
        err[name] = [(a.double() - r).abs().max().item() for a, r in zip(ours, ref)]
    for i, what in enumerate(("out", "dq", "dk", "dv")):
        assert err["amx"][i] <= 1.5 * err["avx512"][i] + 1e-6, (what, err)
