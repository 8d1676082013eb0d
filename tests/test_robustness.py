"""Threads, leaks, worker processes, numerics at the edges, determinism."""

from __future__ import annotations

import os
import threading

import pytest
import torch

import flashattn_lite as fal
from flashattn_lite.reference import attention_ref, sdpa_ref, varlen_ref

from conftest import assert_rule, randn, slow  # noqa: F401

# Set by tools/sanitize.sh.
SANITIZED = os.environ.get("FLASHATTN_LITE_SANITIZED") == "1"


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.slow
@pytest.mark.skipif(SANITIZED, reason="RSS is not meaningful under AddressSanitizer (shadow memory)")
def test_rss_stays_flat_over_10k_fwd_bwd_calls():
    q, k, v = (randn((1, 48, 2, 16), torch.float32, requires_grad=True) for _ in range(3))
    for _ in range(500):  # warm up allocator caches
        fal.flash_attn_func(q, k, v, causal=True).sum().backward()
    before = _rss_mb()
    for _ in range(10_000):
        fal.flash_attn_func(q, k, v, causal=True).sum().backward()
    grown = _rss_mb() - before
    assert grown < 20, f"RSS grew by {grown:.1f} MB over 10k fwd+bwd calls"


def test_four_python_threads_at_once():
    inputs = [tuple(randn((2, 200, 4, 40), dt) for _ in range(3)) for dt in (torch.float32, torch.bfloat16) * 2]
    expected = [fal.flash_attn_func(*x, causal=True) for x in inputs]
    results: list = [None] * len(inputs)
    errors: list = []

    def work(i: int) -> None:
        try:
            for _ in range(20):
                results[i] = fal.flash_attn_func(*inputs[i], causal=True)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and all(not t.is_alive() for t in threads)
    for r, e in zip(results, expected):
        assert torch.equal(r, e)


class _AttnDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        q = torch.randn((1, 64, 2, 32), generator=g)
        return fal.flash_attn_func(q, q, q, causal=True)[0], q[0]


@pytest.mark.skipif(SANITIZED, reason="forked workers and the preloaded sanitizer runtime do not mix")
def test_dataloader_workers():
    dl = torch.utils.data.DataLoader(_AttnDataset(), batch_size=2, num_workers=2, timeout=120)
    for out, q in dl:
        for o, x in zip(out, q):
            ref, _ = attention_ref(x[None], x[None], x[None], causal=True)
            assert torch.allclose(o, ref[0].float(), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_huge_scores(dtype, isa):
    q, k, v = randn((1, 90, 2, 64), dtype) * 30, randn((1, 110, 2, 64), dtype) * 30, randn((1, 110, 2, 64), dtype)
    ref, _ = attention_ref(q, k, v)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / 8
    assert scores.abs().max() > 1e3
    out = fal.flash_attn_func(q, k, v)
    assert torch.isfinite(out).all()
    if dtype == torch.float64:
        # the fp64 yardstick is the reference itself: allow the rounding of scores of this size
        bound = 16 * torch.finfo(torch.float64).eps * scores.abs().max().item() * ref.abs().max().item()
        assert (out - ref).abs().max().item() <= bound
    else:
        # the rule, plus the rounding of the scores themselves: at |s| ~ 1e4 one fp32 rounding of a
        # score (or of q.k summed in another order) moves a probability by eps32 * |s| relative
        same, _ = attention_ref(q, k, v, upcast=False)
        err = (out.double() - ref).abs().max().item()
        err_same = (same.double() - ref).abs().max().item()
        noise = torch.finfo(torch.float32).eps * scores.abs().max().item() * v.abs().max().item()
        noise += torch.finfo(dtype).eps * ref.abs().max().item()
        assert err <= 2 * err_same + noise, (err, err_same, noise)


def test_fp16_near_overflow(isa):
    q, k = randn((1, 50, 2, 64), torch.float16) * 200, randn((1, 60, 2, 64), torch.float16) * 200
    v = (randn((1, 60, 2, 64), torch.float32) * 2e4).clamp(-6e4, 6e4).half()
    out = fal.flash_attn_func(q, k, v, softmax_scale=1e-3)
    ref, _ = attention_ref(q, k, v, softmax_scale=1e-3)
    assert torch.isfinite(out).all()
    # q.k reaches ~1e6, beyond fp16: a same-precision yardstick overflows, so bound by fp16 rounding
    assert (out.double() - ref).abs().max() <= 4 * torch.finfo(torch.float16).eps * ref.abs().max()


# A row whose every score is -inf -- an infinite q against keys of the opposite sign, not a mask --
# sees no key: our rule for such a row (README: "-inf for a row that sees no key", output 0); the
# rows computed beside it (the forward's row groups, whose plain tiles run the softmax step on the
# scores in registers and fall back to the step over memory for such a row) match the reference.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_row_of_minus_inf_scores_leaves_its_neighbours_exact(dtype, isa):
    q, k, v = randn((1, 70, 2, 64), dtype), randn((1, 150, 2, 64), dtype), randn((1, 150, 2, 64), dtype)
    k[..., 0] = -k[..., 0].abs() - 0.25
    q[0, 9, 1] = 0
    q[0, 9, 1, 0] = float("inf")
    out, lse, _ = fal.flash_attn_func(q, k, v, return_attn_probs=True)
    assert torch.equal(out[0, 9, 1], torch.zeros_like(out[0, 9, 1]))
    assert lse[0, 1, 9].item() == -float("inf")
    keep = torch.ones(70, dtype=torch.bool)
    keep[9] = False
    qs = q[:, keep]
    ref, ref_lse = attention_ref(qs, k, v)
    same, _ = attention_ref(qs, k, v, upcast=False)
    assert_rule(out[:, keep], ref, same)
    assert torch.allclose(lse[:, :, keep].double(), ref_lse.double(), atol=1e-4)


def _nan_matches(out: torch.Tensor, ref: torch.Tensor, atol: float) -> None:
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), (
        f"NaN at {torch.isnan(out).sum().item()} places, the reference at {torch.isnan(ref).sum().item()}"
    )
    fin = ~torch.isnan(ref)
    assert torch.allclose(out[fin].double(), ref[fin].double(), atol=atol)


# A NaN in q or k makes the rows whose scores see it NaN; a NaN in v[j] reaches exactly the rows
# that see key j (a masked key -- causal, window, mask -- never reaches a row), in its column only.
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("causal", [slow(False), True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_appears_exactly_where_the_reference_has_it(where, causal, dtype, isa):
    q, k, v = (randn((1, 97, 2, 40), dtype) for _ in range(3))
    (q if where == "q" else k if where == "k" else v)[0, 37, 1, 3] = float("nan")
    out, lse, _ = fal.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
    ref, ref_lse = attention_ref(q, k, v, causal=causal)
    _nan_matches(out, ref, 1e-5 if dtype == torch.float32 else 2e-2)
    assert torch.equal(torch.isnan(lse), torch.isnan(ref_lse))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("s_q", [1, slow(3), slow(16)])
@pytest.mark.parametrize("layout", ["interleaved", "head_major"])
def test_nan_in_v_decode_reaches_only_rows_that_see_it(dtype, s_q, layout, isa):
    # decode path (few rows, split keys, GQA 4:2), causal bottom-right: the first rows do not see the last keys
    q, k, v = randn((2, s_q, 4, 64), dtype), randn((2, 700, 2, 64), dtype), randn((2, 700, 2, 64), dtype)
    v[0, 699, 0, 5] = float("nan")  # seen by the last query row only (when s_q > 1)
    v[1, 10, 1, 7] = float("nan")  # seen by every row of batch 1, kv head 1
    if layout == "head_major":
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    out = fal.flash_attn_func(q, k, v, causal=True)
    ref, _ = attention_ref(q, k, v, causal=True)
    _nan_matches(out, ref, 1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [1, 4])
def test_nan_in_v_split_decode_reaches_only_rows_that_see_it(dtype, num_splits, isa):
    # flash_attn_with_kvcache, num_splits: "If > 1, split the key/value into this many chunks along
    # the sequence." Split or not, a NaN value of key j reaches exactly the rows that see it; causal
    # is bottom-right aligned, so the last key reaches the last query row only.
    q = randn((1, 4, 4, 64), dtype)
    k_cache, v_cache = randn((1, 700, 2, 64), dtype), randn((1, 700, 2, 64), dtype)
    v_cache[0, 699, 0, 5] = float("nan")
    out = fal.flash_attn_with_kvcache(q, k_cache, v_cache, causal=True, num_splits=num_splits)
    ref, _ = attention_ref(q, k_cache, v_cache, causal=True)
    _nan_matches(out, ref, 1e-5 if dtype == torch.float32 else 2e-2)
    assert torch.isnan(ref).any() and not torch.isnan(ref[0, :3]).any()  # the case tests something


@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, slow(torch.float16)])
@pytest.mark.parametrize("s_q", [12, slow(16)])
def test_nan_in_decode_rows_reaches_only_rows_that_see_it(where, dtype, s_q, isa):
    # several query rows against a cache (the multi-row decode, bf16 on AVX-512 with S transposed, one
    # lane per row). flash-attn: "If causal=True, the causal mask is aligned to the bottom right
    # corner of the attention matrix": row i sees keys [0, s_k - s_q + i], so the last key reaches
    # the last row only; a NaN in q reaches its own row, a NaN in key 100 every row of its head.
    q, k, v = randn((1, s_q, 2, 40), dtype), randn((1, 300, 2, 40), dtype), randn((1, 300, 2, 40), dtype)
    if where == "q":
        q[0, 3, 1, 5] = float("nan")
    else:
        t = k if where == "k" else v
        t[0, 299, 1, 5] = float("nan")
        t[0, 100, 0, 2] = float("nan")
    out, lse, _ = fal.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    ref, ref_lse = attention_ref(q, k, v, causal=True)
    _nan_matches(out, ref, 1e-5 if dtype == torch.float32 else 2e-2)
    assert torch.equal(torch.isnan(lse), torch.isnan(ref_lse))
    assert torch.isnan(ref).any() and not torch.isnan(ref).all()  # the case tests something


def test_nan_in_v_with_masks_window_and_varlen(isa):
    q, k, v = (randn((2, 150, 2, 24), torch.float32) for _ in range(3))
    v[0, 60, 0, 2] = v[1, 149, 1, 0] = float("nan")
    mask = torch.rand(2, 2, 150, 150, generator=torch.Generator().manual_seed(1)) > 0.3
    out = fal.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    ref = sdpa_ref(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    _nan_matches(out, ref, 1e-5)
    out = fal.flash_attn_func(q, k, v, window_size=(20, 5))
    ref, _ = attention_ref(q, k, v, window_size=(20, 5))
    _nan_matches(out, ref, 1e-5)
    cu = torch.tensor([0, 60, 61, 150], dtype=torch.int32)
    qp, kp, vp = (t.reshape(300, 2, 24)[:150] for t in (q, k, v))
    out = fal.flash_attn_varlen_func(qp, kp, vp, cu, cu, 89, 89, causal=True)
    ref, _ = varlen_ref(qp, kp, vp, cu, cu, causal=True)
    _nan_matches(out, ref, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_repeatable_fwd_bwd(dtype, isa):
    q, k, v, do = (randn((2, 150, 4, 48), dtype) for _ in range(4))

    def run():
        qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
        o = fal.flash_attn_func(qs, ks, vs, causal=True)
        return (o, *torch.autograd.grad(o, (qs, ks, vs), do))

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)
