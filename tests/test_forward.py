"""Forward correctness of flash_attn_func against the fp64 reference (numerical rule)."""

from __future__ import annotations

import pytest
import torch

from flashattn_lite import flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func
from flashattn_lite.reference import attention_ref

from conftest import DTYPES, DTYPES_THIN, assert_rule, randn, slow

HEAD_DIMS = [slow(1), slow(8), slow(40), 59, slow(64), slow(111), 128, slow(256), slow(300)]
SEQS = [(1, 1), (97, 97), slow(128, 1025), slow(1025, 97)]


def _check(q, k, v, **kw):
    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True, **kw)
    window = kw.get("window_size", (-1, -1))
    ref, ref_lse = attention_ref(
        q, k, v, softmax_scale=kw.get("softmax_scale"), causal=kw.get("causal", False), window_size=window
    )
    same, _ = attention_ref(
        q, k, v, softmax_scale=kw.get("softmax_scale"), causal=kw.get("causal", False), window_size=window, upcast=False
    )
    assert out.dtype == q.dtype
    assert_rule(out, ref, same)
    fin = torch.isfinite(ref_lse)
    assert torch.equal(fin, torch.isfinite(lse))
    tol = 1e-12 if q.dtype == torch.float64 else 1e-4
    assert torch.allclose(lse[fin], ref_lse[fin], rtol=tol, atol=tol)
    return out, lse


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("s_q,s_k", SEQS)
@pytest.mark.parametrize("causal", [False, True])
def test_forward_grid(dtype, d, s_q, s_k, causal, isa):
    b, h = 1, 2
    q, k, v = randn((b, s_q, h, d), dtype), randn((b, s_k, h, d), dtype), randn((b, s_k, h, d), dtype)
    _check(q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h,h_kv", [(8, 2), slow(6, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_gqa_mqa(dtype, h, h_kv, causal, isa):
    q = randn((2, 70, h, 40), dtype)
    k, v = randn((2, 90, h_kv, 40), dtype), randn((2, 90, h_kv, 40), dtype)
    _check(q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_views(dtype, isa):
    # (b, h, s, d) storage viewed as (b, s, h, d), plus a strided batch slice and a last-dim
    # slice that forces a copy.
    base = randn((4, 3, 65, 64), dtype)
    q = base.transpose(1, 2)[::2]
    kbase = randn((2, 80, 3, 128), dtype)
    k = kbase[..., ::2]  # last dim not contiguous
    v = randn((2, 3, 80, 48), dtype).transpose(1, 2)
    assert not q.is_contiguous() and k.stride(-1) == 2
    out, _ = _check(q, k, v, causal=True)
    assert out.shape == (2, 65, 3, 48)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_rows_are_zero(dtype, isa):
    # bottom-right causal with s_q > s_k: the first s_q - s_k query rows see no key.
    s_q, s_k = 50, 20
    q, k, v = randn((1, s_q, 2, 16), dtype), randn((1, s_k, 2, 16), dtype), randn((1, s_k, 2, 16), dtype)
    out, lse = _check(q, k, v, causal=True)
    assert torch.equal(out[:, : s_q - s_k], torch.zeros_like(out[:, : s_q - s_k]))
    assert torch.isneginf(lse[:, :, : s_q - s_k]).all()
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("s_q", [1, 5, 40])  # one-row and multi-row decode, the forward
@pytest.mark.parametrize("d", [40, 64])  # whole vectors, and a tail on AVX-512
@pytest.mark.parametrize("tiny", [False, True])  # normal values, or subnormals of the dtype
def test_output_rounds_to_nearest_even(dtype, s_q, d, tiny, isa):
    # flash_attn_func returns "out: (batch_size, seqlen, nheads, headdim)" in q's dtype. With q = 0
    # every score is 0 and P = 1 exactly, so the fp32 result is the exact mean of the two keys'
    # values; a and b = a + j ulp put it halfway between two values of the dtype for odd j. The
    # output must be that mean rounded as torch rounds it (to nearest even, subnormals kept). README:
    # the AVX-512 bf16 kernels beyond one-row decode multiply on vdpbf16ps (the amx ISA's forward on
    # tdpbf16ps), which reads a subnormal as 0 and flushes a subnormal sum to 0.
    fin = torch.finfo(dtype)
    dp = dtype == torch.bfloat16 and isa in ("avx512", "amx") and s_q > 1

    def flush(x):
        return torch.where(x.abs() < fin.smallest_normal, torch.zeros_like(x), x) if dp else x

    a = torch.randn((1, 1, 2, d)) * (fin.smallest_normal * 16 if tiny else 1.0)
    a = a.to(dtype).float()
    mant = 7 if dtype == torch.bfloat16 else 10
    exp = torch.floor(torch.log2(a.abs().clamp_min(fin.smallest_normal)))
    ulp = torch.exp2(exp - mant)
    b = (a + torch.randint(-3, 4, a.shape).float() * ulp).to(dtype).float()
    assert torch.equal(b.to(dtype).float(), b)
    v = torch.cat([a, b], dim=1).to(dtype)
    q = torch.zeros((1, s_q, 2, d), dtype=dtype)
    k = randn((1, 2, 2, d), dtype)
    out = flash_attn_func(q, k, v)
    want = (flush(flush(a) + flush(b)) / 2).to(dtype).expand(1, s_q, 2, d)
    halfway = ((a + b) / 2 != want.float()).sum().item()
    assert halfway > 0  # the data has values to round
    assert torch.equal(out, want)


@pytest.mark.parametrize("window", [(0, 0), (5, 3), (16, -1), (-1, 7), (300, 300)])
@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window(window, causal, isa):
    q, k, v = (
        randn((1, 130, 2, 32), torch.float32),
        randn((1, 150, 2, 32), torch.float32),
        randn((1, 150, 2, 32), torch.float32),
    )
    _check(q, k, v, causal=causal, window_size=window)


def test_softmax_scale_and_packed():
    qkv = randn((2, 33, 3, 4, 24), torch.float32)
    out = flash_attn_qkvpacked_func(qkv, softmax_scale=0.3, causal=True)
    ref, _ = attention_ref(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], softmax_scale=0.3, causal=True)
    assert torch.allclose(out, ref.float(), atol=1e-5)
    q = randn((2, 20, 4, 24), torch.float32)
    kv = randn((2, 33, 2, 2, 24), torch.float32)
    out = flash_attn_kvpacked_func(q, kv)
    ref, _ = attention_ref(q, kv[:, :, 0], kv[:, :, 1])
    assert torch.allclose(out, ref.float(), atol=1e-5)


@pytest.mark.parametrize("shape_q,shape_k", [((0, 5, 2, 8), (0, 7, 2, 8)), ((2, 0, 2, 8), (2, 7, 2, 8))])
def test_empty_inputs(shape_q, shape_k):
    q, k, v = randn(shape_q, torch.float32), randn(shape_k, torch.float32), randn(shape_k, torch.float32)
    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True)
    assert out.shape == shape_q and lse.shape == (shape_q[0], shape_q[2], shape_q[1])


def test_no_keys_gives_zero(isa):
    q = randn((1, 4, 2, 8), torch.float32)
    k = v = randn((1, 0, 2, 8), torch.float32)
    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()


def test_repeatable(isa):
    q, k, v = (randn((2, 300, 4, 64), torch.bfloat16) for _ in range(3))
    a = flash_attn_func(q, k, v, causal=True)
    b = flash_attn_func(q, k, v, causal=True)
    assert torch.equal(a, b)


def test_thread_count_does_not_change_result(isa):
    q, k, v = (randn((1, 257, 4, 64), torch.float32) for _ in range(3))
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = flash_attn_func(q, k, v)
    finally:
        torch.set_num_threads(n)
    b = flash_attn_func(q, k, v)
    assert torch.equal(a, b)


# A few query rows with GQA: a work item takes several query heads of one kv head (plan.cpp fwd_item_heads_plan:
# as many as keep 2 items per thread and 256 rows, so the thread count decides) and packs each key tile once for
# them. flash_attn_func: "Supports multi-query and grouped-query attention (MQA/GQA) by passing in KV with fewer
# heads than Q"; "alibi_slopes: (nheads,) or (batch_size, nheads), fp32" and "dropout_p: float. Dropout
# probability." -- per-head transforms and keep patterns that must stay with their head. 1 thread groups the most
# heads (MQA 8/1 at 17 rows: all 8; 70 rows of GQA 6/2: 3), 8 threads none; 130 rows (2 x 144 > 256) never. The
# results must be bit-identical and follow the rule.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("s_q,h,h_kv", [(17, 8, 1), (40, 8, 2), (70, 6, 2), (130, 4, 2)])
@pytest.mark.parametrize("feature", ["alibi_softcap", "dropout"])
def test_gqa_few_rows_heads_grouped(dtype, s_q, h, h_kv, feature, isa):
    q, k, v = randn((2, s_q, h, 64), dtype), randn((2, 700, h_kv, 64), dtype), randn((2, 700, h_kv, 64), dtype)
    if feature == "alibi_softcap":
        kw = dict(causal=True, alibi_slopes=torch.rand(2, h) * 0.5, softcap=4.0)
    else:
        kw = dict(causal=True, dropout_p=0.2)
    n = torch.get_num_threads()
    res = {}
    try:
        for threads in (1, 8):
            torch.set_num_threads(threads)
            torch.manual_seed(3)
            res[threads] = flash_attn_func(q, k, v, return_attn_probs=True, **kw)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(res[1][0], res[8][0]) and torch.equal(res[1][1], res[8][1])
    if feature == "alibi_softcap":
        ref, ref_lse = attention_ref(q, k, v, **kw)
        same, _ = attention_ref(q, k, v, upcast=False, **kw)
        assert_rule(res[1][0], ref, same)
        assert torch.allclose(res[1][1], ref_lse.float(), atol=1e-4, rtol=1e-4)
    else:  # each head's keep pattern, from return_attn_probs: "negative means that location was dropped,
        # nonnegative means it was kept"
        keep = res[1][2] >= 0
        ref, _ = attention_ref(q, k, v, causal=True, dropout_p=0.2, dropout_keep=keep)
        same, _ = attention_ref(q, k, v, causal=True, dropout_p=0.2, dropout_keep=keep, upcast=False)
        assert_rule(res[1][0], ref, same)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("s_q,h,h_kv", [(1, 8, 8), (3, 16, 8), (1, 32, 8), (2, 8, 2)])
def test_decode_short_cache_any_thread_count(dtype, s_q, h, h_kv, isa):
    # batch 1, a token-major cache too short to split its keys: the decode plan splits the heads
    # over the threads instead (uneven groups with 3 threads); every head's result is the same
    # computation whatever the grouping, so bit for bit the 1-thread result (GQA 32/8: one query row
    # per head packed as 4 rows per kv head, whose key blocks must not follow the group's size)
    q = randn((1, s_q, h, 128), dtype)
    k, v = randn((1, 300, h_kv, 128), dtype), randn((1, 300, h_kv, 128), dtype)
    n = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(_check(q, k, v, causal=True))
    finally:
        torch.set_num_threads(n)
    for out, lse in outs[1:]:
        assert torch.equal(out, outs[0][0]) and torch.equal(lse, outs[0][1])


@pytest.mark.parametrize("dtype", DTYPES_THIN)
@pytest.mark.parametrize("s_q", [1, slow(3), slow(16)])
@pytest.mark.parametrize("b,h,h_kv", [slow(1, 1, 1), (2, 4, 2), slow(1, 8, 1)])
@pytest.mark.parametrize("causal,window", [slow(False, (-1, -1)), (True, (-1, -1)), (False, (100, 7))])
def test_decode_long_cache(dtype, s_q, b, h, h_kv, causal, window, isa):
    # few queries against a long cache: the SIMD decode path, split over threads (b * h small)
    s_k = 3001
    q = randn((b, s_q, h, 72), dtype)
    k, v = randn((b, s_k, h_kv, 72), dtype), randn((b, s_k, h_kv, 72), dtype)
    _check(q, k, v, causal=causal, window_size=window)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d,d_v", [(72, 72), (100, 64), (120, 128), (125, 128), (128, 128), slow(128, 96)])
@pytest.mark.parametrize("layout", ["head_major", "one_kv_head"])
def test_decode_one_row_head_contiguous(dtype, d, d_v, layout, isa):
    # one query row per kv head over K / V rows back to back (a head-major cache, or one kv head):
    # on AVX-512 the products run key by key with q and O in registers when a block's K + V rows
    # reach 8 KB (fp32 from d + d_v = 128, bf16 / fp16 from 256) -- the last vector's tails here
    h, h_kv = (3, 3) if layout == "head_major" else (1, 1)
    q = randn((2, 1, h, d), dtype)
    k, v = randn((2, h_kv, 531, d), dtype), randn((2, h_kv, 531, d_v), dtype)
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    _check(q, k, v)
    _check(q, k, v, window_size=(200, 0))


# (s_q, h, h_kv): packed rows per kv head s_q * h / h_kv = 2, 3, 4, 6, 10, 16 -- on AVX-512 bf16 each
# of Q^T's slice counts (8, 4, 2 lanes per row; 3 rows row-wise; 1 lane per row from 9 rows)
MULTI_ROWS = [(1, 4, 2), slow(3, 2, 2), (2, 4, 2), (3, 4, 2), (5, 4, 2), slow(8, 4, 2), (12, 2, 1), slow(16, 2, 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("s_q,h,h_kv", MULTI_ROWS)
@pytest.mark.parametrize("d,d_v", [slow(1, 1), (17, 40), slow(59, 59), (111, 64), (128, 128), slow(300, 257)])
def test_decode_multi_row_blocks(dtype, s_q, h, h_kv, d, d_v, isa):
    # several query rows per head (speculative decoding; GQA heads packed as rows): rows in register
    # blocks (passes of 4 rows; bf16 on AVX-512: K broadcast in slices of d), V pairs interleaved,
    # 12 rows row-wise but transposed for bf16 on AVX-512, 16 transposed -- every remainder and tail
    # (odd d: the last pair of a slice step alone)
    q = randn((1, s_q, h, d), dtype)
    k, v = randn((1, 530, h_kv, d), dtype), randn((1, 530, h_kv, d_v), dtype)
    _check(q, k, v, causal=True)
    _check(
        q.transpose(1, 2).contiguous().transpose(1, 2),
        k.transpose(1, 2).contiguous().transpose(1, 2),
        v.transpose(1, 2).contiguous().transpose(1, 2),
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, slow(torch.float32)])
@pytest.mark.parametrize("s_q,h,h_kv", [(1, 4, 2), (2, 4, 2), (5, 4, 2), slow(8, 4, 2), (12, 2, 1)])
def test_decode_multi_row_softcap(dtype, s_q, h, h_kv, isa):
    # flash-attn: "softcap: float. Anything > 0 activates softcapping attention." A score transform
    # keeps every row count (also 9-16 rows) on the row-wise decode path: checked against the reference
    q = randn((1, s_q, h, 72), dtype)
    k, v = randn((1, 530, h_kv, 72), dtype), randn((1, 530, h_kv, 72), dtype)
    out, lse, _ = flash_attn_func(q, k, v, causal=True, softcap=3.0, return_attn_probs=True)
    ref, ref_lse = attention_ref(q, k, v, causal=True, softcap=3.0)
    same, _ = attention_ref(q, k, v, causal=True, softcap=3.0, upcast=False)
    assert_rule(out, ref, same)
    assert torch.allclose(lse, ref_lse, rtol=1e-4, atol=1e-4)


# Several query rows per kv head (speculative decoding, GQA heads packed as rows) over bf16 K / V: on
# AVX-512 the keys go in blocks of 64 (fewer over wide token-major rows), S from Q^T rotated up to
# d = 256 and in slices beyond, 12 and 16 rows transposed (without a score transform), the last
# block partial. flash_attn_func: "window_size: (left, right).
# If not (-1, -1), implements sliding window local attention."; "softcap: float. Anything > 0
# activates softcapping attention."; "alibi_slopes: (nheads,) or (batch_size, nheads), fp32. A bias
# of (-alibi_slope * |i + seqlen_k - seqlen_q - j|) is added to the attention score of query i and
# key j."
@pytest.mark.parametrize("s_q,h,h_kv", [(2, 4, 4), (1, 12, 4), (4, 8, 8), (2, 16, 4), (3, 16, 4), (4, 16, 4)])
@pytest.mark.parametrize("d", [80, 128, slow(256), slow(264)])
@pytest.mark.parametrize("layout", ["token_major", "head_major"])
@pytest.mark.parametrize(
    "kw",
    [dict(causal=True), dict(window_size=(90, 0)), slow(dict(softcap=5.0)), dict(alibi=True, causal=True)],
    ids=["causal", "window", "softcap", "alibi"],
)
def test_decode_several_rows_blocks(s_q, h, h_kv, d, layout, kw, isa):
    kw = dict(kw)
    if kw.pop("alibi", False):
        kw["alibi_slopes"] = torch.rand(h) * 0.3
    s_k = 64 * 3 + 37
    q = randn((1, s_q, h, d), torch.bfloat16)
    if layout == "head_major":
        k, v = (randn((1, h_kv, s_k, d), torch.bfloat16).transpose(1, 2) for _ in range(2))
    else:
        k, v = randn((1, s_k, h_kv, d), torch.bfloat16), randn((1, s_k, h_kv, d), torch.bfloat16)
    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True, **kw)
    ref, ref_lse = attention_ref(q, k, v, **kw)
    same, _ = attention_ref(q, k, v, upcast=False, **kw)
    assert_rule(out, ref, same)
    assert torch.allclose(lse, ref_lse.float(), atol=1e-4, rtol=1e-4)
