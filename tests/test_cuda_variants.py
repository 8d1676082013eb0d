"""CUDA kernel variants. Forward variant 2 (csrc/cuda/attn_fwd_tc2.cuh; the default for head dims 64 / 128 and a
positive scale; FLASHATTN_LITE_CUDA_FWD=v1, read at each call, selects variant 1): the fp64 reference
and numerical rule on the cases where its code paths differ from variant 1 (masked front / back
tiles, the s_k edge, head dims below the padded tile, GQA, split-KV, the scale folded into exp2),
and proof of which kernel ran. Backward variant 2 (csrc/cuda/attn_bwd_tc2.cuh, the default at head
dims 64 / 128; FLASHATTN_LITE_CUDA_BWD=v1 selects variant 1): gradients under the rule on its own
paths (GQA groups, masked and whole query tiles, windows, long sequences). Skipped only without a
GPU; bench/gpu_check.sh also runs all of tests/test_cuda.py under FLASHATTN_LITE_CUDA_FWD=v1 and under
FLASHATTN_LITE_CUDA_BWD=v1. Softcap / ALiBi on the variant-2 kernels and off them (feature SIMT kernels)."""

from __future__ import annotations

import pytest
import torch
from test_cuda import _check, _grads

from flashattn_lite import flash_attn_func
from flashattn_lite.reference import attention_ref

from conftest import HAS_CUDA, assert_rule, randn

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build")]
DEV = "cuda"
KEY = "FLASHATTN_LITE_CUDA_FWD"


@pytest.fixture
def v2(monkeypatch):
    monkeypatch.delenv(KEY, raising=False)  # the default


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [40, 64, 100, 128])  # 40 and 100 run on the 64 / 128 tiles, zero-padded
@pytest.mark.parametrize("s_q,s_k", [(1, 1), (97, 97), (128, 1025), (1025, 97), (300, 333), (130, 4097)])
@pytest.mark.parametrize("causal", [False, True])
def test_v2_forward_grid(v2, dtype, d, s_q, s_k, causal):
    q = randn((2, s_q, 3, d), dtype, DEV)
    k, v = randn((2, s_k, 3, d), dtype, DEV), randn((2, s_k, 3, d), dtype, DEV)
    _check(q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
# flash-attn: "If window_size != (-1, -1), implements sliding window local attention. Query at
# position i will only attend to keys between [i + seqlen_k - seqlen_q - window_size[0], i +
# seqlen_k - seqlen_q + window_size[1]] inclusive." -- a left edge gives masked front tiles.
@pytest.mark.parametrize("window", [(0, 0), (17, 5), (64, -1), (-1, 100), (300, 0), (1000, 1000)])
def test_v2_window(v2, dtype, d, window):
    q, k, v = randn((1, 700, 4, d), dtype, DEV), randn((1, 1333, 2, d), dtype, DEV), randn((1, 1333, 2, d), dtype, DEV)
    _check(q, k, v, window_size=window)
    _check(q, k, v, window_size=window, causal=True)


@pytest.mark.parametrize("h,h_kv,s_k", [(8, 2, 100), (8, 8, 40000), (32, 4, 5000)])
@pytest.mark.parametrize("causal", [False, True])
def test_v2_decode_split_kv(v2, h, h_kv, s_k, causal):
    # few queries against a long cache: the glue splits the keys (auto), the combine pass merges
    q = randn((2, 1, h, 128), torch.bfloat16, DEV)
    k, v = randn((2, s_k, h_kv, 128), torch.bfloat16, DEV), randn((2, s_k, h_kv, 128), torch.bfloat16, DEV)
    _check(q, k, v, causal=causal)
    _check(q, k, v, causal=causal, window_size=(50, 0))


def _run(q, k, v, **kw):
    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True, **kw)
    return out, lse


def test_v2_is_the_kernel_that_runs(monkeypatch):
    # the two variants sum in different orders (and v2 folds the scale into the exp2 FFMA): the
    # fp32 LSE cannot be bit-identical over 3000 keys unless the same kernel ran twice
    q, k, v = (
        randn((1, 200, 2, 128), torch.bfloat16, DEV),
        randn((1, 3000, 2, 128), torch.bfloat16, DEV),
        randn((1, 3000, 2, 128), torch.bfloat16, DEV),
    )
    monkeypatch.setenv(KEY, "v1")
    o1, l1 = _run(q, k, v, causal=True)
    o1b, l1b = _run(q, k, v, causal=True)
    assert torch.equal(l1, l1b) and torch.equal(o1, o1b)  # each variant alone is deterministic
    monkeypatch.delenv(KEY)
    o2, l2 = _run(q, k, v, causal=True)
    assert not torch.equal(l1, l2)
    assert torch.allclose(l1, l2, atol=1e-4, rtol=1e-5)
    assert (o1.float() - o2.float()).abs().max().item() < 2e-2


def test_v2_leaves_other_cases_to_variant_1(monkeypatch):
    # head dim 256 (no v2 tile) and a negative scale (v2 keeps the running max in raw units, which
    # needs scale > 0) run variant 1: bit-identical with and without FLASHATTN_LITE_CUDA_FWD=v1
    for d, scale in ((256, None), (64, -0.1)):
        q, k, v = (randn((1, 150, 2, d), torch.bfloat16, DEV) for _ in range(3))
        monkeypatch.setenv(KEY, "v1")
        o1, l1 = _run(q, k, v, softmax_scale=scale)
        monkeypatch.delenv(KEY)
        o2, l2 = _run(q, k, v, softmax_scale=scale)
        assert torch.equal(o1, o2) and torch.equal(l1, l2)
        if scale is not None:
            _check(q, k, v, softmax_scale=scale)


# ---- backward variant 2 (csrc/cuda/attn_bwd_tc2.cuh; the default at D 64 / 128, FLASHATTN_LITE_CUDA_BWD=v1
# selects variant 1) ------------------------------------------------------------------------------------


@pytest.fixture
def bwd_v2(monkeypatch):
    monkeypatch.delenv("FLASHATTN_LITE_CUDA_BWD", raising=False)  # the default


def _grad_rule(q, k, v, dout, n_terms=None, **kw):
    ours = _grads(lambda q, k, v: flash_attn_func(q, k, v, **kw), q, k, v, dout)
    ref = _grads(lambda q, k, v: attention_ref(q, k, v, **kw)[0], q.double(), k.double(), v.double(), dout.double())
    same = _grads(lambda q, k, v: attention_ref(q, k, v, upcast=False, **kw)[0], q, k, v, dout)
    extra = {} if n_terms is None else {"n_terms": n_terms}
    for name, a, r, s in zip(("out", "dq", "dk", "dv"), ours, ref, same):
        assert_rule(a, r, s, factor=3.0, what=name, **extra)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [40, 64, 100, 128])
@pytest.mark.parametrize("s_q,s_k", [(97, 97), (64, 300), (300, 64), (1, 1), (1025, 700), (130, 257)])
@pytest.mark.parametrize("causal", [False, True])
def test_bwd_v2_gradients(bwd_v2, dtype, d, s_q, s_k, causal):
    # GQA (4 query heads over 2 kv heads): each block walks the query tiles of both heads of its group
    q = randn((2, s_q, 4, d), dtype, DEV)
    k, v = randn((2, s_k, 2, d), dtype, DEV), randn((2, s_k, 2, d), dtype, DEV)
    _grad_rule(q, k, v, randn((2, s_q, 4, d), dtype, DEV), causal=causal)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("window", [(17, 5), (64, -1), (-1, 100), (300, 0)])
def test_bwd_v2_window(bwd_v2, d, window):
    q, k, v = (
        randn((1, 700, 4, d), torch.bfloat16, DEV),
        randn((1, 1333, 2, d), torch.bfloat16, DEV),
        randn((1, 1333, 2, d), torch.bfloat16, DEV),
    )
    _grad_rule(q, k, v, randn((1, 700, 4, d), torch.bfloat16, DEV), window_size=window)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,d,causal", [(4096, 128, True), (2048, 64, False)])
def test_bwd_v2_long(bwd_v2, dtype, n, d, causal):
    q, k, v, dout = (randn((1, n, 2, d), dtype, DEV) for _ in range(4))
    _grad_rule(q, k, v, dout, n_terms=n, causal=causal)


# ---- softcap and ALiBi on the variant-2 kernels (verified on an H200, 2026-12-04) ---------------------------


def _slopes(b, h, per_batch):
    shape = (b, h) if per_batch else (h,)
    return torch.rand(shape, device=DEV, dtype=torch.float32) * 0.3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [40, 64, 128])
@pytest.mark.parametrize("s_q,s_k", [(1, 300), (97, 97), (130, 257), (300, 64)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mod", ["softcap", "alibi", "alibi_b", "both"])
def test_score_mods_fwd_bwd(v2, dtype, d, s_q, s_k, causal, mod):
    # flash-attn: "softcap: float. Anything > 0 activates softcapping attention." and "alibi_slopes:
    # (nheads,) or (batch_size, nheads), fp32. A bias of (-alibi_slope * |i + seqlen_k - seqlen_q - j|)
    # is added to the attention score of query i and key j."
    kw = {"causal": causal}
    if mod in ("softcap", "both"):
        kw["softcap"] = 2.5
    if mod in ("alibi", "alibi_b", "both"):
        kw["alibi_slopes"] = _slopes(2, 4, mod == "alibi_b")
    q = randn((2, s_q, 4, d), dtype, DEV)
    k, v = randn((2, s_k, 2, d), dtype, DEV), randn((2, s_k, 2, d), dtype, DEV)
    _check(q, k, v, **kw)
    _grad_rule(q, k, v, randn((2, s_q, 4, d), dtype, DEV), **kw)


def test_score_mods_off_the_tensor_cores(v2):
    # where no variant-2 kernel runs (fp32, head dim 256), the feature SIMT kernels (attn_simt_feat.cuh)
    # take the transform, under the same rule (fp32 softcap needs the accurate device tanh: fal_tanh)
    q, k, v = (randn((1, 50, 2, 64), torch.bfloat16, DEV) for _ in range(3))
    for qq, kk, vv in (
        (q.float(), k.float(), v.float()),
        tuple(randn((1, 50, 2, 256), torch.bfloat16, DEV) for _ in range(3)),
    ):
        _check(qq, kk, vv, alibi_slopes=_slopes(1, 2, False), softcap=3.0)
