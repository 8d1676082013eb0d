"""Conformance with flash-attn's documented semantics.

Every expectation here is written from a sentence of flash-attn 2's docstrings
(flash_attn/flash_attn_interface.py), quoted above the check, with its own small fp64 model --
never from flashattn_lite's code. Where flashattn_lite differs on purpose, the README's
"Semantics" table says so and the test says which row.
"""

from __future__ import annotations

import math

import pytest
import torch

from flashattn_lite import (
    ArgumentError,
    ArgumentTypeError,
    flash_attn_func,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
)

from conftest import assert_rule, randn, slow

# ---- small fp64 models, written from the docstrings ----------------------------------------------


def visible(s_q: int, s_k: int, causal: bool, window: tuple[int, int]) -> torch.Tensor:
    """ "If causal=True, the causal mask is aligned to the bottom right corner of the attention
    matrix." / "Query at position i will only attend to keys between
    [i + seqlen_k - seqlen_q - window_size[0], i + seqlen_k - seqlen_q + window_size[1]] inclusive.\""""
    i = torch.arange(s_q).view(-1, 1)
    j = torch.arange(s_k).view(1, -1)
    c = i + s_k - s_q
    vis = torch.ones(s_q, s_k, dtype=torch.bool)
    left, right = window
    if causal:
        right = 0
    if left >= 0:
        vis &= j >= c - left
    if right >= 0:
        vis &= j <= c + right
    return vis


def model(q, k, v, scale, causal=False, window=(-1, -1)):
    """One sequence: q (s_q, h, d), k/v (s_k, h_kv, d) -> out (s_q, h, d_v), lse (h, s_q), fp64.
    "If the row of the mask is all zero, the output will be zero." GQA: "head 0, 1, 2 of Q will
    attention to head 0 of K, V" for 6 and 2 heads."""
    q, k, v = q.double(), k.double(), v.double()
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = torch.einsum("qhd,khd->hqk", q, k) * scale
    s = s.masked_fill(~visible(q.shape[0], k.shape[0], causal, window), float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse.unsqueeze(-1)).nan_to_num(0.0)
    return torch.einsum("hqk,khd->qhd", p, v), lse


def rotate(x, cos, sin, pos, interleaved):
    """rotary_interleaved: "If True, rotary embedding will combine dimensions 0 & 1, 2 & 3, etc. If
    False, rotary embedding will combine dimensions 0 & rotary_dim / 2, 1 & rotary_dim / 2 + 1
    (i.e. GPT-NeoX style)." x (n, h, d) at positions pos (n,), as complex products in fp64."""
    rd = 2 * cos.shape[1]
    xd = x.double()
    a, b = (xd[..., 0:rd:2], xd[..., 1:rd:2]) if interleaved else (xd[..., : rd // 2], xd[..., rd // 2 : rd])
    z = torch.complex(a, b) * torch.complex(cos.double()[pos], sin.double()[pos]).unsqueeze(1)
    rot = torch.stack((z.real, z.imag), -1).flatten(-2) if interleaved else torch.cat((z.real, z.imag), -1)
    return torch.cat((rot, xd[..., rd:]), -1)


def tables(n: int, rd: int, dtype):
    theta = torch.rand(n, rd // 2, dtype=torch.float64) * 2 * math.pi
    return theta.cos().to(dtype), theta.sin().to(dtype)


def who_attends(out: torch.Tensor) -> torch.Tensor:
    """With q = 0 every visible key scores the same and v = one-hot rows, so out[..., j] > 0
    exactly where key j is attended."""
    return out > 0


# ---- masks: the docstring's own examples ---------------------------------------------------------


@pytest.mark.parametrize(
    "s_q,s_k,expect",
    [
        # "if seqlen_q = 2 and seqlen_k = 5, the causal mask (1 = keep, 0 = masked out) is: 1 1 1 1 0 / 1 1 1 1 1"
        (2, 5, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
        # "If seqlen_q = 5 and seqlen_k = 2, the causal mask is: 0 0 / 0 0 / 0 0 / 1 0 / 1 1"
        (5, 2, [[0, 0], [0, 0], [0, 0], [1, 0], [1, 1]]),
    ],
)
def test_causal_mask_examples(s_q, s_k, expect, isa):
    q = torch.zeros(1, s_q, 1, s_k)
    v = torch.eye(s_k).view(1, s_k, 1, s_k).clone()
    out = flash_attn_func(q, randn((1, s_k, 1, s_k), torch.float32), v, causal=True)
    assert torch.equal(who_attends(out[0, :, 0]), torch.tensor(expect, dtype=torch.bool))
    # "If the row of the mask is all zero, the output will be zero."
    rows = torch.tensor(expect).sum(1) == 0
    assert torch.equal(out[0, rows], torch.zeros_like(out[0, rows]))
    # the same for the KV-cache entry point, whose cache holds exactly s_k keys
    outc = flash_attn_with_kvcache(q, randn((1, s_k, 1, s_k), torch.float32), v, cache_seqlens=s_k, causal=True)
    assert torch.equal(who_attends(outc[0, :, 0]), torch.tensor(expect, dtype=torch.bool))


@pytest.mark.parametrize("s_q,s_k,window", [(7, 7, (2, 1)), (3, 11, (4, 0)), (9, 4, (0, 2)), (5, 5, (-1, 1))])
def test_window_range(s_q, s_k, window, isa):
    # "Query at position i will only attend to keys between
    #  [i + seqlen_k - seqlen_q - window_size[0], i + seqlen_k - seqlen_q + window_size[1]] inclusive."
    q = torch.zeros(1, s_q, 2, s_k)
    v = torch.eye(s_k).view(1, s_k, 1, s_k).expand(1, s_k, 2, s_k).contiguous()
    out = flash_attn_func(q, randn((1, s_k, 2, s_k), torch.float32), v, window_size=window)
    for h in range(2):
        assert torch.equal(who_attends(out[0, :, h]), visible(s_q, s_k, False, window))


# ---- flash_attn_with_kvcache, argument by argument -----------------------------------------------


def test_kvcache_append_in_place(isa):
    # "If k and v are not None, k_cache and v_cache will be updated *inplace* with the new values
    #  from k and v." / k: "If not None, we concatenate k with k_cache, starting at the indices
    #  specified by cache_seqlens."
    b, cap, h_kv, d, n = 3, 40, 2, 16, 4
    kc, vc = randn((b, cap, h_kv, d), torch.float32), randn((b, cap, h_kv, d), torch.float32)
    kc0, vc0 = kc.clone(), vc.clone()
    k, v = randn((b, n, h_kv, d), torch.float32), randn((b, n, h_kv, d), torch.float32)
    seqlens = torch.tensor([0, 17, 36], dtype=torch.int32)
    q = randn((b, 2, 4, d), torch.float32)
    out, lse = flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=seqlens, return_softmax_lse=True)
    for i in range(b):
        s = int(seqlens[i])
        assert torch.equal(kc[i, s : s + n], k[i]) and torch.equal(vc[i, s : s + n], v[i])
        assert torch.equal(kc[i, :s], kc0[i, :s]) and torch.equal(kc[i, s + n :], kc0[i, s + n :])
        assert torch.equal(vc[i, :s], vc0[i, :s]) and torch.equal(vc[i, s + n :], vc0[i, s + n :])
        # attention over the updated cache: keys [0, cache_seqlens + seqlen_new)
        ref, ref_lse = model(q[i], kc[i, : s + n], vc[i, : s + n], 1 / math.sqrt(d))
        assert torch.allclose(out[i].double(), ref, atol=1e-5)
        # return_softmax_lse: "The logsumexp of each row of the matrix QK^T * scaling"
        assert torch.allclose(lse[i].double(), ref_lse, atol=1e-5)


def test_kvcache_issue_minimal_leftpad_rotary(isa):
    # The case that exposed the bug: one new token, cache_seqlens = 10, cache_leftpad = 4. "The key
    # @k will be rotated by rotary_cos and rotary_sin at indices cache_seqlens, cache_seqlens + 1,
    # etc." -> written into k_cache[:, 10] rotated at position 10 (not 10 - 4).
    kc, vc = torch.zeros(1, 32, 1, 16), torch.zeros(1, 32, 1, 16)
    cos, sin = tables(32, 16, torch.float32)
    k, v = randn((1, 1, 1, 16), torch.float32), randn((1, 1, 1, 16), torch.float32)
    q = randn((1, 1, 1, 16), torch.float32)
    flash_attn_with_kvcache(
        q,
        kc,
        vc,
        k,
        v,
        rotary_cos=cos,
        rotary_sin=sin,
        cache_seqlens=torch.tensor([10], dtype=torch.int32),
        cache_leftpad=torch.tensor([4], dtype=torch.int32),
        rotary_interleaved=False,
    )
    want = rotate(k[0], cos, sin, torch.tensor([10]), interleaved=False)
    assert torch.allclose(kc[0, 10].double(), want[0], atol=1e-6)
    assert not torch.allclose(kc[0, 10].double(), rotate(k[0], cos, sin, torch.tensor([6]), False)[0], atol=1e-3)


@pytest.mark.parametrize("interleaved", [True, slow(False)])
@pytest.mark.parametrize("mode", ["plain", "causal", "local"])
@pytest.mark.parametrize("leftpad", [False, True])
def test_kvcache_rotary_positions(interleaved, mode, leftpad, isa):
    # "The key @k will be rotated by rotary_cos and rotary_sin at indices cache_seqlens,
    #  cache_seqlens + 1, etc. If causal or local (i.e., window_size != (-1, -1)), the query @q will
    #  be rotated by rotary_cos and rotary_sin at indices cache_seqlens, cache_seqlens + 1, etc.
    #  If not causal and not local, the query @q will be rotated by rotary_cos and rotary_sin at
    #  indices cache_seqlens only (i.e. we consider all tokens in @q to be at position cache_seqlens)."
    # cache_leftpad: "The index that the KV cache starts." -- it moves where the keys start, not
    # the rotary indices.
    b, cap, h, h_kv, d, rd, n = 3, 64, 4, 2, 32, 16, 5
    causal, window = mode == "causal", ((6, 2) if mode == "local" else (-1, -1))
    kc, vc = randn((b, cap, h_kv, d), torch.float32), randn((b, cap, h_kv, d), torch.float32)
    k, v = randn((b, n, h_kv, d), torch.float32), randn((b, n, h_kv, d), torch.float32)
    q = randn((b, n, h, d), torch.float32)
    seqlens = torch.tensor([0, 13, 50], dtype=torch.int32)
    lp = torch.tensor([0, 5, 31], dtype=torch.int32) if leftpad else None
    cos, sin = tables(cap, rd, torch.float32)
    kc_new, vc_new = kc.clone(), vc.clone()
    out = flash_attn_with_kvcache(
        q,
        kc_new,
        vc_new,
        k,
        v,
        rotary_cos=cos,
        rotary_sin=sin,
        cache_seqlens=seqlens,
        cache_leftpad=lp,
        causal=causal,
        window_size=window,
        rotary_interleaved=interleaved,
    )
    for i in range(b):
        s, lo = int(seqlens[i]), int(lp[i]) if leftpad else 0
        steps = torch.arange(n)
        k_rot = rotate(k[i], cos, sin, s + steps, interleaved)
        q_rot = rotate(q[i], cos, sin, s + (steps if (causal or mode == "local") else 0 * steps), interleaved)
        assert torch.allclose(kc_new[i, s : s + n].double(), k_rot, atol=1e-5)
        assert torch.equal(vc_new[i, s : s + n], v[i])
        keys = torch.cat((kc[i, lo:s].double(), k_rot))
        vals = torch.cat((vc[i, lo:s].double(), v[i].double()))
        ref, _ = model(q_rot, keys, vals, 1 / math.sqrt(d), causal, window)
        assert torch.allclose(out[i].double(), ref, atol=2e-5), (i, (out[i].double() - ref).abs().max())


def test_kvcache_rotary_needs_k(isa):
    # rotary_cos: "If not None, we apply rotary embedding to k and q. Only applicable if k and v are
    # passed in." flash-attn raises RuntimeError without k.
    cos, sin = tables(16, 8, torch.float32)
    with pytest.raises(RuntimeError, match=r"rotary_cos/rotary_sin need the new k and v"):
        flash_attn_with_kvcache(
            randn((1, 1, 1, 16), torch.float32),
            torch.zeros(1, 16, 1, 16),
            torch.zeros(1, 16, 1, 16),
            rotary_cos=cos,
            rotary_sin=sin,
            cache_seqlens=3,
        )


def test_kvcache_batch_idx_and_leftpad(isa):
    # cache_batch_idx: "The indices used to index into the KV cache. If None, we assume that the
    # batch indices are [0, 1, 2, ..., batch_size - 1]." cache_leftpad: "The index that the KV cache
    # starts. If None, assume 0."
    b, cap, d = 2, 12, 12
    kc = randn((4, cap, 1, d), torch.float32)
    vc = torch.eye(cap).view(1, cap, 1, cap).expand(4, cap, 1, cap).contiguous()
    q = torch.zeros(b, 1, 1, d)
    idx = torch.tensor([3, 1], dtype=torch.int32)
    lp = torch.tensor([2, 5], dtype=torch.int32)
    seqlens = torch.tensor([9, 11], dtype=torch.int32)
    out = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, cache_batch_idx=idx, cache_leftpad=lp)
    for i in range(b):
        want = torch.zeros(cap, dtype=torch.bool)
        want[int(lp[i]) : int(seqlens[i])] = True
        assert torch.equal(who_attends(out[i, 0, 0]), want)
    # no cache_batch_idx: sequence i reads cache row i
    out0 = flash_attn_with_kvcache(q, kc[:2], vc[:2], cache_seqlens=seqlens)
    for i in range(b):
        want = torch.zeros(cap, dtype=torch.bool)
        want[: int(seqlens[i])] = True
        assert torch.equal(who_attends(out0[i, 0, 0]), want)


@pytest.mark.parametrize("page_size", [slow(1), 16, slow(256)])
def test_kvcache_paged(page_size, isa):
    # k_cache: "(num_blocks, page_block_size, nheads_k, headdim) if there's a block_table (i.e. paged
    # KV cache)"; block_table: "(batch_size, max_num_blocks_per_seq), dtype torch.int32". Token t of
    # sequence i lives in block block_table[i, t // page_block_size], row t % page_block_size.
    # (flash-attn: "page_block_size must be a multiple of 256"; flashattn_lite takes any size --
    # README, Semantics.)
    b, h, h_kv, d, n = 2, 4, 2, 32, 3
    seqlens = torch.tensor([300, 45], dtype=torch.int32)
    per_seq = (512 + page_size - 1) // page_size
    total = b * per_seq + 3
    table = torch.randperm(total)[: b * per_seq].view(b, per_seq).to(torch.int32)
    kp, vp = randn((total, page_size, h_kv, d), torch.bfloat16), randn((total, page_size, h_kv, d), torch.bfloat16)
    k, v = randn((b, n, h_kv, d), torch.bfloat16), randn((b, n, h_kv, d), torch.bfloat16)
    q = randn((b, n, h, d), torch.bfloat16)
    kp0, vp0 = kp.clone(), vp.clone()
    out = flash_attn_with_kvcache(q, kp, vp, k, v, cache_seqlens=seqlens, block_table=table, causal=True)

    def gather(pages, i, hi):
        t = torch.arange(hi)
        return pages[table[i].long()[t // page_size], t % page_size]

    for i in range(b):
        s = int(seqlens[i])
        for t in range(n):
            blk, row = int(table[i, (s + t) // page_size]), (s + t) % page_size
            assert torch.equal(kp[blk, row], k[i, t]) and torch.equal(vp[blk, row], v[i, t])
        keys, vals = gather(kp, i, s + n), gather(vp, i, s + n)
        assert torch.equal(gather(kp, i, s), gather(kp0, i, s))
        assert torch.equal(gather(vp, i, s), gather(vp0, i, s))
        ref, _ = model(q[i], keys, vals, 1 / math.sqrt(d), causal=True)
        same, _ = model(q[i].float(), keys.float(), vals.float(), 1 / math.sqrt(d), causal=True)
        assert_rule(out[i], ref.to(torch.float64), same.to(torch.bfloat16), factor=3.0, n_terms=s + n)


def test_kvcache_num_splits(isa):
    # num_splits: "If > 1, split the key/value into this many chunks along the sequence. If
    # num_splits == 1, we don't split the key/value. If num_splits == 0, we use a heuristic to
    # automatically determine the number of splits."
    b, cap, h, d = 1, 6000, 2, 64
    kc, vc = randn((b, cap, h, d), torch.float32), randn((b, cap, h, d), torch.float32)
    q = randn((b, 1, h, d), torch.float32)
    ref, ref_lse = model(q[0], kc[0, :5999], vc[0, :5999], 1 / math.sqrt(d))
    outs = {}
    for ns in (0, 1, 2, 7):
        out, lse = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=5999, num_splits=ns, return_softmax_lse=True)
        assert (out[0].double() - ref).abs().max() < 1e-5
        assert (lse[0].double() - ref_lse).abs().max() < 1e-5
        outs[ns] = out
    if isa != "scalar":  # the SIMD decode path splits: merging chunks by LSE rounds differently
        assert not torch.equal(outs[1], outs[7])
    with pytest.raises(RuntimeError, match=r"num_splits must be an int >= 0"):
        flash_attn_with_kvcache(q, kc, vc, cache_seqlens=10, num_splits=-1)


def test_kvcache_default_scale(isa):
    # softmax_scale: "The scaling of QK^T before applying softmax. Default to 1 / sqrt(headdim)."
    q, kc, vc = (
        randn((1, 2, 2, 24), torch.float32),
        randn((1, 30, 2, 24), torch.float32),
        randn((1, 30, 2, 24), torch.float32),
    )
    a = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=30)
    bb = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=30, softmax_scale=1 / math.sqrt(24))
    assert torch.equal(a, bb)
    ref, _ = model(q[0], kc[0], vc[0], 1 / math.sqrt(24))
    assert torch.allclose(a[0].double(), ref, atol=1e-5)


# ---- return_attn_probs with dropout: the documented S_dmask ---------------------------------------


def check_s_dmask(s_dmask, q, k, v, out, p, causal):
    """S_dmask: "The output of softmax (possibly with different scaling). It also encodes the dropout
    pattern (negative means that location was dropped, nonnegative means it was kept)." One sequence,
    (h, s_q, s_k). flashattn_lite's scaling: the normalised probabilities (README)."""
    keep = s_dmask >= 0
    probs = s_dmask.abs().double()
    _, lse = model(q, k, v, 1 / math.sqrt(q.shape[-1]), causal)
    g = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(g, 1)
    s = torch.einsum("qhd,khd->hqk", q.double(), kk) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~visible(q.shape[0], k.shape[0], causal, (-1, -1)), float("-inf"))
    assert torch.allclose(probs, torch.exp(s - lse.unsqueeze(-1)).nan_to_num(0.0), atol=1e-5)
    # the output is the kept probabilities, rescaled by 1 / (1 - p), times V
    vv = v.double().repeat_interleave(g, 1)
    want = torch.einsum("hqk,khd->qhd", probs * keep / (1 - p), vv)
    assert torch.allclose(out.double(), want, atol=1e-4)
    return keep


def test_varlen_returns_s_dmask_with_dropout(isa):
    # flash_attn_varlen_func Return: "S_dmask [optional, if return_attn_probs=True]:
    # (batch_size, nheads, seqlen, seqlen)."
    p = 0.3
    lq, lk = [5, 1, 37], [9, 20, 37]
    cq = torch.tensor([0, 5, 6, 43], dtype=torch.int32)
    ck = torch.tensor([0, 9, 29, 66], dtype=torch.int32)
    q, k, v = randn((43, 4, 16), torch.float32), randn((66, 2, 16), torch.float32), randn((66, 2, 16), torch.float32)
    out, lse, s_dmask = flash_attn_varlen_func(
        q, k, v, cq, ck, 37, 37, dropout_p=p, causal=True, return_attn_probs=True
    )
    assert s_dmask is not None and s_dmask.shape == (3, 4, 37, 37)
    kept = total = 0
    for i in range(3):
        sl_q, sl_k = slice(int(cq[i]), int(cq[i + 1])), slice(int(ck[i]), int(ck[i + 1]))
        keep = check_s_dmask(s_dmask[i, :, : lq[i], : lk[i]], q[sl_q], k[sl_k], v[sl_k], out[sl_q], p, True)
        vis = visible(lq[i], lk[i], True, (-1, -1)).expand_as(keep)
        kept += int(keep[vis].sum())
        total += int(vis.sum())
        assert torch.equal(s_dmask[i, :, lq[i] :], torch.zeros_like(s_dmask[i, :, lq[i] :]))
    assert abs(kept / total - (1 - p)) < 0.08  # dropout_p: "Dropout probability."
    # without dropout flash-attn returns no probabilities
    assert flash_attn_varlen_func(q, k, v, cq, ck, 37, 37, return_attn_probs=True)[2] is None


def test_func_returns_s_dmask_with_dropout(isa):
    p = 0.2
    q, k, v = (
        randn((2, 19, 4, 16), torch.float32),
        randn((2, 23, 4, 16), torch.float32),
        randn((2, 23, 4, 16), torch.float32),
    )
    out, _, s_dmask = flash_attn_func(q, k, v, dropout_p=p, return_attn_probs=True)
    assert s_dmask.shape == (2, 4, 19, 23)
    for i in range(2):
        check_s_dmask(s_dmask[i], q[i], k[i], v[i], out[i], p, False)


# ---- errors: catchable as flash-attn's RuntimeError -----------------------------------------------


def test_errors_catchable_as_runtime_error():
    # flash-attn checks its arguments with TORCH_CHECK (RuntimeError); code written against it
    # catches RuntimeError. flashattn_lite raises ArgumentError (ValueError + RuntimeError) and
    # ArgumentTypeError (TypeError + RuntimeError).
    q, k, v = (
        randn((1, 8, 2, 16), torch.float32),
        randn((1, 8, 2, 16), torch.float32),
        randn((1, 8, 2, 16), torch.float32),
    )
    cases = [
        (lambda: flash_attn_func(q, k[..., :8], v), ArgumentError, r"k must have the head_dim of q"),
        (lambda: flash_attn_func(q, k.double(), v), ArgumentTypeError, r"k must have the same dtype as q"),
        (lambda: flash_attn_func(q[0], k, v), ArgumentError, r"q must have 4 dims"),
        (lambda: flash_attn_func(q, k, v, window_size=(-2, 0)), ArgumentError, r"window_size"),
        (
            lambda: flash_attn_varlen_func(
                q[0], k[0], v[0], torch.tensor([0, 8], dtype=torch.int64), torch.tensor([0, 8], dtype=torch.int32), 8, 8
            ),
            ArgumentTypeError,
            r"cu_seqlens_q must be int32",
        ),
        (
            lambda: flash_attn_with_kvcache(q, k, v, cache_seqlens=torch.tensor([9], dtype=torch.int32)),
            ArgumentError,
            r"KV cache overflow",
        ),
    ]
    for fn, typ, msg in cases:
        for catch in (RuntimeError, typ, ValueError if typ is ArgumentError else TypeError):
            with pytest.raises(catch, match=msg):
                fn()


def test_paged_overflow_names_block_table():
    # flash-attn: "Paged KV cache: max(seqlens_k) + seqlen_knew (= ...) exceeds the capacity
    # addressable by block_table (max_num_blocks_per_seq * page_block_size = ...)" (RuntimeError)
    kp, vp = torch.zeros(4, 256, 1, 16), torch.zeros(4, 256, 1, 16)
    table = torch.tensor([[0]], dtype=torch.int32)
    q, k = randn((1, 1, 1, 16), torch.float32), randn((1, 1, 1, 16), torch.float32)
    with pytest.raises(RuntimeError, match=r"exceeds the capacity addressable by block_table .* = 256\)"):
        flash_attn_with_kvcache(
            q, kp, vp, k, k.clone(), cache_seqlens=torch.tensor([256], dtype=torch.int32), block_table=table
        )
    with pytest.raises(RuntimeError, match=r"exceeds the capacity addressable by block_table"):
        flash_attn_with_kvcache(q, kp, vp, cache_seqlens=torch.tensor([257], dtype=torch.int32), block_table=table)
