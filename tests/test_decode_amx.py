"""The amx ISA's decode (README, CPU kernels): bf16 K/V, 4..16 query rows (GQA heads packed as rows, or several
query tokens), no score transform -- S^T and P V on AMX tiles in blocks of 64 keys, K and V rows read in place
(copied when a block's rows are not evenly spaced: its end, a page boundary, a head dim no multiple of 32).
Every case runs on the amx ISA against the fp64 reference under flash-attn's rule; skipped without AMX."""

from __future__ import annotations

import contextlib

import pytest
import torch

import flashattn_lite
from flashattn_lite import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache
from flashattn_lite.reference import attention_ref

from conftest import assert_rule, randn

pytestmark = pytest.mark.skipif(
    "amx" not in flashattn_lite.available_isas(), reason="needs a CPU with AMX-BF16 (and Linux 5.16+)"
)
BF = torch.bfloat16


@contextlib.contextmanager
def amx():
    before = flashattn_lite.cpu_isa()
    flashattn_lite._C._set_cpu_isa("amx")
    try:
        yield
    finally:
        flashattn_lite._C._set_cpu_isa(before)


def kv(b, s_k, h_kv, d, dv, head_major):
    """K and V, (b, s_k, h_kv, d) views; head_major: each head's rows contiguous (a (b, h, s, d) tensor transposed)."""
    if head_major:
        return randn((b, h_kv, s_k, d), BF).transpose(1, 2), randn((b, h_kv, s_k, dv), BF).transpose(1, 2)
    return randn((b, s_k, h_kv, d), BF), randn((b, s_k, h_kv, dv), BF)


# flash_attn_func: "Supports multi-query and grouped-query attention (MQA/GQA) by passing in KV with fewer heads
# than Q." -- one query token of h = g * h_kv heads: g rows per kv head (the decode packs them; 2 and 3 rows stay
# on vectors). s_k: 50 keys (less than one block; on tiles from 16 rows:
# shorter work stays on vectors, kTileMinWork), 601 (a partial last block), 2048. d / dv: 72 / 64 copies K's rows (72 is no multiple of 32), 96 and 32 run the last groups of 32
# columns of O alone, 64, 128 and 256 the plain blocks.
@pytest.mark.parametrize("g", [2, 3, 4, 5, 8, 16])
@pytest.mark.parametrize("s_k", [50, 601, 2048])
@pytest.mark.parametrize("d,dv", [(64, 64), (128, 128), (96, 96), (72, 64), (64, 32), (256, 256)])
@pytest.mark.parametrize("head_major", [False, True])
def test_gqa_decode_matches_reference(g, s_k, d, dv, head_major):
    q = randn((2, 1, 2 * g, d), BF)
    k, v = kv(2, s_k, 2, d, dv, head_major)
    ref, ref_lse = attention_ref(q, k, v)
    same, _ = attention_ref(q, k, v, upcast=False)
    with amx():
        out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True)
    assert_rule(out, ref, same, what=f"g={g} s_k={s_k} d={d}/{dv}")
    torch.testing.assert_close(lse.double(), ref_lse.double(), atol=1e-3, rtol=0)  # fp32 sums of exact products


# flash_attn_func: "If causal=True, the causal mask is aligned to the bottom right corner of the attention
# matrix." -- several query tokens (speculative decoding): each row sees its own key range, which ends inside a
# block; the sliding window ("window_size: (left, right)") cuts the range's start as well.
@pytest.mark.parametrize("s_q", [3, 4, 7, 16])
@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (True, (70, 0)), (False, (33, 5))])
@pytest.mark.parametrize("head_major", [False, True])
def test_multi_token_decode_matches_reference(s_q, causal, window, head_major):
    q = randn((2, s_q, 4, 128), BF)
    k, v = kv(2, 333, 4, 128, 128, head_major)
    ref, _ = attention_ref(q, k, v, causal=causal, window_size=window)
    same, _ = attention_ref(q, k, v, causal=causal, window_size=window, upcast=False)
    with amx():
        out = flash_attn_func(q, k, v, causal=causal, window_size=window)
    assert_rule(out, ref, same, what=f"s_q={s_q} causal={causal} window={window}")


# flash_attn_with_kvcache: "block_table [optional]: (batch_size, max_num_blocks_per_seq), dtype torch.int32." and
# "cache_seqlens: int, or (batch_size,), dtype torch.int32. The sequence lengths of the KV cache." -- pages of 1
# and 16 rows break every 64-key block (its rows are copied), 256-row pages hold whole blocks; "num_splits: int.
# If > 1, split the key/value into this many chunks along the sequence." -- the splits' partial results merged.
@pytest.mark.parametrize("page_size", [None, 1, 16, 256])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_kvcache_decode_matches_reference(page_size, num_splits):
    b, cap, h_kv, g, d = 3, 700, 2, 8, 128
    q = randn((b, 1, h_kv * g, d), BF)
    kc, vc = randn((b, cap, h_kv, d), BF), randn((b, cap, h_kv, d), BF)
    seqlens = torch.tensor([700, 65, 300], dtype=torch.int32)
    bt = None
    kcache, vcache = kc, vc
    if page_size:
        n_pages = (cap + page_size - 1) // page_size
        perm = torch.randperm(b * n_pages).view(b, n_pages).to(torch.int32)
        kcache = torch.zeros((b * n_pages, page_size, h_kv, d), dtype=BF)
        vcache = torch.zeros_like(kcache)
        for i in range(b):
            for p in range(n_pages):
                lo, hi = p * page_size, min(cap, (p + 1) * page_size)
                kcache[perm[i, p], : hi - lo] = kc[i, lo:hi]
                vcache[perm[i, p], : hi - lo] = vc[i, lo:hi]
        bt = perm
    with amx():
        out = flash_attn_with_kvcache(q, kcache, vcache, cache_seqlens=seqlens, block_table=bt, num_splits=num_splits)
    for i in range(b):
        n = int(seqlens[i])
        ref, _ = attention_ref(q[i : i + 1], kc[i : i + 1, :n], vc[i : i + 1, :n])
        same, _ = attention_ref(q[i : i + 1], kc[i : i + 1, :n], vc[i : i + 1, :n], upcast=False)
        assert_rule(out[i : i + 1], ref, same, what=f"page_size={page_size} splits={num_splits} seq {i}")


def test_nan_value_reaches_only_its_column_and_the_rows_that_see_it():
    # The tiles' P V reads V in place as pairs of adjacent columns and picks one of each pair by a zero in P's
    # pair: 0 times a NaN there would spread a NaN value to the neighbouring column; and a key a row cannot see
    # has P = 0 inside a block that other rows see. The NaN pass (cpu_kernels.h) redoes such rows: the output
    # must be the reference's -- NaN in the value's column for the rows that see the key, finite elsewhere.
    # flash_attn_func: "If causal=True, the causal mask is aligned to the bottom right corner".
    s_q, s_k = 8, 300
    q = randn((1, s_q, 4, 64), BF)
    k, v = kv(1, s_k, 4, 64, 64, True)
    v = v.clone()
    v[0, s_k - 3, :, 10] = float("nan")  # a key the last 3 query rows see (row i sees keys <= s_k - s_q + i)
    ref, _ = attention_ref(q, k, v, causal=True)
    with amx():
        out = flash_attn_func(q, k, v, causal=True)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.isnan(out[0, -3:, :, 10]).all() and not torch.isnan(out[0, :-3]).any()
    assert not torch.isnan(out[0, :, :, :10]).any() and not torch.isnan(out[0, :, :, 11:]).any()
    fin = ~torch.isnan(ref)
    same, _ = attention_ref(q, k, v, causal=True, upcast=False)
    assert_rule(out[fin], ref[fin], same[fin], what="finite part")


def test_split_kv_of_one_head_matches_reference():
    # One (batch, kv head) and a long cache: the plan splits the keys over work items (split-KV, each split's partial
    # output and LSE merged afterwards), each split starting its blocks mid-range.
    for head_major in (False, True):
        q = randn((1, 1, 8, 128), BF)
        k, v = kv(1, 3001, 1, 128, 128, head_major)
        ref, ref_lse = attention_ref(q, k, v)
        same, _ = attention_ref(q, k, v, upcast=False)
        with amx():
            out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True)
        assert_rule(out, ref, same, what=f"split-KV head_major={head_major}")
        torch.testing.assert_close(lse.double(), ref_lse.double(), atol=1e-3, rtol=0)


def test_varlen_rows_on_and_off_the_tiles():
    # flash_attn_varlen_func: "Sequence i is q[cu_seqlens_q[i]:cu_seqlens_q[i+1]] against
    # k/v[cu_seqlens_k[i]:cu_seqlens_k[i+1]]" -- 1, 3, 4, 9 and 16 query rows in one call: some sequences' rows run
    # on the tiles (4 or more), the others on vectors; causal aligned bottom-right per sequence.
    lq, lk = [1, 3, 4, 9, 16], [70, 300, 65, 129, 640]
    cq = torch.tensor([0] + torch.tensor(lq).cumsum(0).tolist(), dtype=torch.int32)
    ck = torch.tensor([0] + torch.tensor(lk).cumsum(0).tolist(), dtype=torch.int32)
    q, k, v = randn((sum(lq), 4, 128), BF), randn((sum(lk), 2, 128), BF), randn((sum(lk), 2, 128), BF)
    with amx():
        out = flash_attn_varlen_func(q, k, v, cq, ck, max(lq), max(lk), causal=True)
    for i in range(len(lq)):
        qi, ki, vi = (t[c[i] : c[i + 1]].unsqueeze(0) for t, c in ((q, cq), (k, ck), (v, ck)))
        ref, _ = attention_ref(qi, ki, vi, causal=True)
        same, _ = attention_ref(qi, ki, vi, causal=True, upcast=False)
        assert_rule(out[cq[i] : cq[i + 1]].unsqueeze(0), ref, same, what=f"sequence {i} ({lq[i]} rows)")


# The cases the amx ISA leaves on its vectors while the heads' state has the tiles' layout (O padded to 16 rows):
# 2-3 rows; a score transform (flash_attn_func: "softcap: float. Anything > 0 activates softcapping attention.");
# dv no multiple of 32; K rows 4 KB or more apart (a token-major cache of 16 kv heads at D128).
@pytest.mark.parametrize(
    "h,h_kv,s_q,d,dv,softcap,head_major",
    [
        (8, 4, 1, 128, 128, 0.0, True),
        (12, 4, 1, 128, 128, 0.0, False),
        (16, 2, 1, 64, 64, 30.0, True),
        (16, 2, 1, 64, 40, 0.0, True),
        (16, 16, 4, 128, 128, 0.0, False),
    ],
)
def test_vector_paths_under_amx_match_reference(h, h_kv, s_q, d, dv, softcap, head_major):
    q = randn((2, s_q, h, d), BF)
    k, v = kv(2, 333, h_kv, d, dv, head_major)
    ref, _ = attention_ref(q, k, v, causal=True, softcap=softcap)
    same, _ = attention_ref(q, k, v, causal=True, softcap=softcap, upcast=False)
    with amx():
        out = flash_attn_func(q, k, v, causal=True, softcap=softcap)
    assert_rule(out, ref, same, what=f"h={h}/{h_kv} s_q={s_q} d={d}/{dv} softcap={softcap}")


def test_infinite_value_reaches_only_its_column_and_the_rows_that_see_it():
    # An infinite V value meets the 0 beside P in its pair (the neighbouring column) and, in keys a row cannot see, a
    # 0 probability: 0 * inf = NaN in both. The output keeps the library's semantics (README: a key a row cannot see
    # never reaches that row): inf in the value's column for the rows that see the key, finite elsewhere -- and every
    # other element as with a finite value there (the fp64 reference with 0 in its place).
    s_q, s_k = 8, 300
    q = randn((1, s_q, 4, 64), BF)
    k, v = kv(1, s_k, 4, 64, 64, False)
    v0 = v.clone()
    v = v.clone()
    v[0, s_k - 2, :, 21] = float("inf")  # the last 2 query rows see key s_k - 2
    with amx():
        out = flash_attn_func(q, k, v, causal=True)
    hit = torch.zeros_like(out, dtype=torch.bool)
    hit[0, -2:, :, 21] = True
    assert torch.isinf(out[hit]).all() and torch.isfinite(out[~hit]).all()
    ref, _ = attention_ref(q, k, v0, causal=True)
    same, _ = attention_ref(q, k, v0, causal=True, upcast=False)
    assert_rule(out[~hit], ref[~hit], same[~hit], what="the other elements")
