"""Threads, leaks, worker processes, numerics at the edges, determinism."""
from __future__ import annotations

import os
import threading

import pytest
import torch

import flashattn_lite as fal
from conftest import assert_rule, randn  # noqa: F401
from flashattn_lite.reference import attention_ref

SANITIZED = os.environ.get("FAL_SANITIZED") == "1"


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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


@pytest.mark.parametrize("where", ["q", "k"])
@pytest.mark.parametrize("causal", [False, True])
def test_nan_appears_exactly_where_the_reference_has_it(where, causal, isa):
    q, k, v = randn((1, 40, 2, 24), torch.float32), randn((1, 40, 2, 24), torch.float32), randn((1, 40, 2, 24), torch.float32)
    (q if where == "q" else k)[0, 7, 1, 3] = float("nan")
    out = fal.flash_attn_func(q, k, v, causal=causal)
    ref, _ = attention_ref(q, k, v, causal=causal)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    fin = ~torch.isnan(ref)
    assert torch.allclose(out[fin], ref[fin].float(), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_repeatable_fwd_bwd(dtype, isa):
    q, k, v, do = (randn((2, 150, 4, 48), dtype) for _ in range(4))

    def run():
        qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
        o = fal.flash_attn_func(qs, ks, vs, causal=True)
        return (o, *torch.autograd.grad(o, (qs, ks, vs), do))

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)
