"""CUDA: every feature of the CPU kernels through the feature SIMT kernels (csrc/cuda/attn_simt_feat.cuh):
varlen, the KV cache (flash_attn_with_kvcache: append, rotary, cache_batch_idx, cache_leftpad, paged
caches of any page size), attn_mask (bool, and float with its gradient), dropout, softcap / ALiBi off
the tensor cores (verified on an H200 on 2026-12-04; bench/gpu_check.sh runs this file). Each case
runs the same call three times -- on the GPU, on the CPU in the input dtype and on the CPU in fp64 --
and holds the GPU to the numerical rule with the CPU's fp64 result as the reference and the CPU's
same-dtype error as the yardstick (the CPU kernels are tested against the fp64 reference and
flash-attn's documentation in test_features.py / test_kvcache.py). Skipped only without a GPU."""

from __future__ import annotations

import pytest
import torch

from flashattn_lite import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache
from flashattn_lite import scaled_dot_product_attention as sdpa

from conftest import HAS_CUDA, assert_rule, randn

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build")]
DEV = "cuda"
LOW = (torch.bfloat16, torch.float16)


class Aux:
    """A tensor only moved to the device, never converted (ALiBi slopes stay fp32)."""

    def __init__(self, t):
        self.t = t


def _run(fn, tensors, dev, dtype, grad):
    """fn(*tensors) on dev in dtype (float tensors converted; int tensors and Aux moved); with grad,
    the gradients of the float tensors that require them, for dout = the last tensor."""
    ts = []
    for t in tensors:
        if isinstance(t, Aux):
            ts.append(t.t.to(dev))
        elif t is None or not isinstance(t, torch.Tensor):
            ts.append(t)
        elif t.is_floating_point():
            x = t.detach().to(dev, dtype)
            ts.append(x.requires_grad_(grad and t.requires_grad))
        else:
            ts.append(t.to(dev))
    out = fn(*ts)
    if not grad:
        return [out]
    out.backward(ts[-1])
    return [out] + [t.grad for t in ts[:-1] if isinstance(t, torch.Tensor) and t.requires_grad]


def _vs_cpu(fn, tensors, dtype, grad=False, names=None):
    gpu = _run(fn, tensors, DEV, dtype, grad)
    cpu = _run(fn, tensors, "cpu", dtype, grad)
    ref = _run(fn, tensors, "cpu", torch.float64, grad)
    names = names or [f"#{i}" for i in range(len(gpu))]
    for i, (a, s, r) in enumerate(zip(gpu, cpu, ref)):
        assert a.device.type == torch.device(DEV).type
        factor = 3.0 if (i > 0 and dtype in LOW) else 2.0
        assert_rule(a.cpu(), r, s, factor=factor, what=names[i] if i < len(names) else str(i))


def _cu(lengths):
    return torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)


# flash-attn: "cu_seqlens_q: (batch_size + 1,), dtype torch.int32. The cumulative sequence lengths of
# the sequences in the batch, used to index into q." -- and the same for k.
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (False, (7, 3))])
def test_cuda_varlen_fwd_bwd(dtype, causal, window):
    lq, lk = [5, 1, 130, 64], [9, 300, 130, 1]
    h, h_kv, d = 4, 2, 40
    cq, ck = _cu(lq), _cu(lk)
    q = randn((sum(lq), h, d), torch.float32, requires_grad=True)
    k = randn((sum(lk), h_kv, d), torch.float32, requires_grad=True)
    v = randn((sum(lk), h_kv, d), torch.float32, requires_grad=True)
    dout = randn((sum(lq), h, d), torch.float32)

    def fn(q, k, v, cq, ck, dout):
        return flash_attn_varlen_func(q, k, v, cq, ck, max(lq), max(lk), causal=causal, window_size=window)

    _vs_cpu(fn, (q, k, v, cq, ck, dout), dtype, grad=True, names=["out", "dq", "dk", "dv"])


# flash-attn: "softcap: float. Anything > 0 activates softcapping attention." / "alibi_slopes:
# (nheads,) or (batch_size, nheads), fp32. A bias of (-alibi_slope * |i + seqlen_k - seqlen_q - j|)
# is added to the attention score of query i and key j." -- here off the tensor cores (fp32, odd d).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_softcap_alibi_simt(dtype):
    b, s_q, s_k, h, d = 2, 70, 150, 4, 36
    q, k, v, dout = (randn((b, n, h, d), torch.float32, requires_grad=True) for n in (s_q, s_k, s_k, s_q))
    slopes = torch.rand(b, h)

    def fn(q, k, v, slopes, dout):
        return flash_attn_func(q, k, v, causal=True, softcap=5.0, alibi_slopes=slopes)

    _vs_cpu(fn, (q, k, v, Aux(slopes), dout), dtype, grad=True, names=["out", "dq", "dk", "dv"])


# torch SDPA: "attn_mask (optional Tensor) - Attention mask; shape must be broadcastable to the shape
# of attention weights ... A boolean mask where a value of True indicates that the element should take
# part in attention. A float mask of the same type as query, key, value that is added to the attention
# score."
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_cuda_attn_mask(dtype, kind):
    b, h, s_q, s_k, d = 2, 3, 33, 77, 32
    q, k, v, dout = (randn((b, h, n, d), torch.float32, requires_grad=True) for n in (s_q, s_k, s_k, s_q))
    if kind == "bool":
        mask = torch.rand(b, 1, s_q, s_k) > 0.3
        mask[0, 0, 5] = False  # a row that sees nothing: output 0
    else:
        mask = randn((1, h, s_q, s_k), torch.float32, requires_grad=True)

    def fn(q, k, v, mask, dout):
        return sdpa(q, k, v, attn_mask=mask)

    names = ["out", "dq", "dk", "dv"] + (["dmask"] if kind == "float" else [])
    _vs_cpu(fn, (q, k, v, mask, dout), dtype, grad=True, names=names)


# flash-attn: "dropout_p: float. Dropout probability." -- the same rng_state draws the same keep
# pattern on both devices (test_cuda.py::test_cuda_dropout_bits_equal_cpu), so with one rng_state
# the GPU's output and gradients are the CPU's for the same pattern (the ops called directly, as
# the autograd functions call them).
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_dropout_matches_cpu(dtype, causal):
    b, s_q, s_k, h, d = 2, 65, 130, 4, 40
    q, k, v, dout = (randn((b, n, h, d), torch.float32) for n in (s_q, s_k, s_k, s_q))
    rng = torch.tensor([0x0123456789ABCDEF, 42], dtype=torch.int64)
    kw = dict(attn_mask=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None, seqused_k=None,
              max_seqlen_q=-1, max_seqlen_k=-1, softmax_scale=d**-0.5, causal=causal, bottom_right=True,
              window_left=-1, window_right=-1, softcap=0.0, dropout_p=0.3)  # fmt: skip

    def fn(q, k, v, dout, rng):
        out, lse = torch.ops.flashattn_lite.fwd.default(
            q=q, k=k, v=v, block_table=None, rng_state=rng, num_splits=1, **kw
        )
        dq, dk, dv, _ = torch.ops.flashattn_lite.bwd.default(
            dout=dout, dlse=None, q=q, k=k, v=v, out=out, softmax_lse=lse, rng_state=rng, deterministic=False, **kw
        )
        return out, dq, dk, dv, lse

    res = {}
    for dev, dt in ((DEV, dtype), ("cpu", dtype), ("cpu", torch.float64)):
        res[(dev, dt)] = fn(*(t.to(dev, dt) for t in (q, k, v, dout)), rng.to(dev))
    gpu, cpu, ref = res[(DEV, dtype)], res[("cpu", dtype)], res[("cpu", torch.float64)]
    for i, name in enumerate(("out", "dq", "dk", "dv")):
        factor = 3.0 if (i and dtype in LOW) else 2.0
        assert_rule(gpu[i].cpu(), ref[i], cpu[i], factor=factor, what=name)
    assert torch.allclose(gpu[4].cpu().double(), ref[4].double(), atol=2e-3, rtol=2e-3)


# flash_attn_with_kvcache: "cache_seqlens: int, or (batch_size,), dtype torch.int32. The sequence
# lengths of the KV cache." / "cache_batch_idx: (batch_size,), dtype torch.int32. The indices used to
# index into the KV cache." / "cache_leftpad: (batch_size,), dtype torch.int32. The index that the KV
# cache starts." / "block_table [optional]: (batch_size, max_num_blocks_per_seq), dtype torch.int32."
# / "rotary_cos [optional]: (seqlen_ro, rotary_dim / 2)." -- k / v appended in place on both devices.
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("page_size", [None, 1, 16, 256])
@pytest.mark.parametrize("extra", [{}, {"batch_idx": True}, {"leftpad": True}, {"rotary": True}])
def test_cuda_kvcache(dtype, page_size, extra):
    if page_size is not None and extra.get("batch_idx"):
        pytest.skip("flash-attn: cache_batch_idx cannot be combined with block_table")
    b, s_q, h, h_kv, d, cap, n_new = 3, 2, 8, 2, 64, 300, 2
    seqlens = torch.randint(1, cap - n_new, (b,), dtype=torch.int32)
    cache_b = b + 2 if extra.get("batch_idx") else b
    q = randn((b, s_q, h, d), torch.float32)
    knew, vnew = randn((b, n_new, h_kv, d), torch.float32), randn((b, n_new, h_kv, d), torch.float32)
    kc, vc = randn((cache_b, cap, h_kv, d), torch.float32), randn((cache_b, cap, h_kv, d), torch.float32)
    bidx = torch.randperm(cache_b)[:b].to(torch.int32) if extra.get("batch_idx") else None
    lp = (torch.rand(b) * seqlens.float()).to(torch.int32) if extra.get("leftpad") else None
    cos = sin = None
    if extra.get("rotary"):
        theta = torch.rand(cap + s_q, 16) * 6
        cos, sin = theta.cos(), theta.sin()
    table = None
    if page_size is not None:
        n_pages = (cap + page_size - 1) // page_size
        perm = torch.randperm(b * n_pages + 3)[: b * n_pages]
        table = perm.view(b, n_pages).to(torch.int32)
        kp = randn((b * n_pages + 3, page_size, h_kv, d), torch.float32)
        vp = randn((b * n_pages + 3, page_size, h_kv, d), torch.float32)
        for i in range(b):
            for pg in range(n_pages):
                lo, hi = pg * page_size, min(cap, (pg + 1) * page_size)
                kp[table[i, pg], : hi - lo] = kc[i, lo:hi]
                vp[table[i, pg], : hi - lo] = vc[i, lo:hi]
        kc, vc = kp, vp

    results = {}
    for dev, dt in ((DEV, dtype), ("cpu", dtype), ("cpu", torch.float64)):

        def f(t, dev=dev, dt=dt):
            return None if t is None else (t.to(dev, dt) if t.is_floating_point() else t.to(dev))

        kcd, vcd = f(kc), f(vc)
        out, lse = flash_attn_with_kvcache(
            f(q), kcd, vcd, k=f(knew), v=f(vnew), rotary_cos=f(cos), rotary_sin=f(sin),
            cache_seqlens=f(seqlens), cache_batch_idx=f(bidx), cache_leftpad=f(lp), block_table=f(table),
            causal=True, return_softmax_lse=True,
        )  # fmt: skip
        results[(dev, dt)] = (out, lse, kcd, vcd)
    gpu, cpu, ref = results[(DEV, dtype)], results[("cpu", dtype)], results[("cpu", torch.float64)]
    assert_rule(gpu[0].cpu(), ref[0], cpu[0], what="out")
    fin = torch.isfinite(ref[1])
    assert torch.equal(fin, torch.isfinite(gpu[1].cpu()))
    assert torch.allclose(gpu[1].cpu()[fin].double(), ref[1][fin], atol=2e-3, rtol=2e-3)
    assert torch.equal(gpu[2].cpu(), cpu[2]) and torch.equal(gpu[3].cpu(), cpu[3])  # the same appended cache
