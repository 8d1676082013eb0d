"""CUDA: the same reference and numerical rule as the CPU tests. Skipped only without a GPU
(or a build without CUDA); run on a GPU by bench/gpu_check.sh."""

from __future__ import annotations

import pytest
import torch

from flashattn_lite import flash_attn_func, scaled_dot_product_attention
from flashattn_lite.reference import attention_ref, sdpa_ref

from conftest import DTYPES, HAS_CUDA, assert_rule, randn

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build")]
DEV = "cuda"


def _check(q, k, v, factor=2.0, **kw):
    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True, **kw)
    ref, ref_lse = attention_ref(q, k, v, **kw)
    same, _ = attention_ref(q, k, v, upcast=False, **kw)
    assert out.device.type == "cuda" and out.dtype == q.dtype
    assert_rule(out, ref, same, factor=factor, n_terms=max(1024, k.shape[1]))
    fin = torch.isfinite(ref_lse)
    assert torch.equal(fin, torch.isfinite(lse))
    tol = 1e-10 if q.dtype == torch.float64 else 2e-3
    assert torch.allclose(lse[fin].double(), ref_lse[fin].double(), rtol=tol, atol=tol)
    return out, lse


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [8, 32, 40, 59, 64, 96, 111, 128, 160, 256])
@pytest.mark.parametrize("s_q,s_k", [(1, 1), (97, 97), (128, 1025), (1025, 97), (1, 3000)])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_forward_grid(dtype, d, s_q, s_k, causal):
    q = randn((2, s_q, 3, d), dtype, DEV)
    k, v = randn((2, s_k, 3, d), dtype, DEV), randn((2, s_k, 3, d), dtype, DEV)
    _check(q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,d", [(2048, 64), (4096, 128), (8192, 128)])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_forward_long(dtype, n, d, causal):
    q, k, v = (randn((1, n, 2, d), dtype, DEV) for _ in range(3))
    _check(q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("window", [(0, 0), (17, 5), (64, -1), (-1, 100)])
def test_cuda_window(dtype, window):
    q, k, v = randn((1, 300, 4, 64), dtype, DEV), randn((1, 333, 2, 64), dtype, DEV), randn((1, 333, 2, 64), dtype, DEV)
    _check(q, k, v, window_size=window)
    _check(q, k, v, window_size=window, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h,h_kv", [(8, 2), (6, 1)])
def test_cuda_gqa(dtype, h, h_kv):
    q = randn((2, 200, h, 64), dtype, DEV)
    k, v = randn((2, 150, h_kv, 64), dtype, DEV), randn((2, 150, h_kv, 64), dtype, DEV)
    _check(q, k, v, causal=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_non_contiguous_and_misaligned(dtype):
    q = randn((2, 4, 130, 64), dtype, DEV).transpose(1, 2)  # SDPA storage
    big = randn((2, 90, 4, 72), dtype, DEV)
    k = big[..., 1:65]  # misaligned base pointer, row stride 72
    v = randn((2, 90, 4, 128), dtype, DEV)[..., ::2]  # strided last dim -> copy
    _check(q, k, v, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_fully_masked_rows(dtype):
    q, k, v = randn((1, 100, 2, 64), dtype, DEV), randn((1, 30, 2, 64), dtype, DEV), randn((1, 30, 2, 64), dtype, DEV)
    out, lse = _check(q, k, v, causal=True)
    assert torch.equal(out[:, :70], torch.zeros_like(out[:, :70]))
    assert torch.isneginf(lse[:, :, :70]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", [False, True])
def test_cuda_sdpa(dtype, is_causal):
    q, k, v = randn((2, 4, 77, 64), dtype, DEV), randn((2, 4, 140, 64), dtype, DEV), randn((2, 4, 140, 64), dtype, DEV)
    out = scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    ref = sdpa_ref(q, k, v, is_causal=is_causal)
    same = sdpa_ref(q, k, v, is_causal=is_causal, upcast=False)
    assert_rule(out, ref, same)


def _grads(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout)
    return out, q.grad, k.grad, v.grad


GRAD_SEQS = [(97, 97), (64, 300), (300, 64), (1, 1), (1025, 700)]
GRAD_CASES = [(dt, s) for dt in DTYPES for s in GRAD_SEQS if not (dt == torch.float64 and s == (1025, 700))]


@pytest.mark.parametrize("dtype,seqs", GRAD_CASES)
@pytest.mark.parametrize("d", [32, 40, 59, 64, 96, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_gradients(dtype, seqs, d, causal):
    s_q, s_k = seqs
    h, h_kv = 4, 2
    q, k, v = (
        randn((2, s_q, h, d), dtype, DEV),
        randn((2, s_k, h_kv, d), dtype, DEV),
        randn((2, s_k, h_kv, d), dtype, DEV),
    )
    dout = randn((2, s_q, h, d), dtype, DEV)
    ours = _grads(lambda q, k, v: flash_attn_func(q, k, v, causal=causal), q, k, v, dout)
    ref = _grads(
        lambda q, k, v: attention_ref(q, k, v, causal=causal)[0], q.double(), k.double(), v.double(), dout.double()
    )
    same = _grads(lambda q, k, v: attention_ref(q, k, v, causal=causal, upcast=False)[0], q, k, v, dout)
    factor = 3.0 if dtype in (torch.bfloat16, torch.float16) else 2.0
    for name, a, r, s in zip(("out", "dq", "dk", "dv"), ours, ref, same):
        assert_rule(a, r, s, factor=factor, what=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,d,causal", [(4096, 128, True), (2048, 64, False)])
def test_cuda_gradients_long(dtype, n, d, causal):
    q, k, v, dout = (randn((1, n, 2, d), dtype, DEV) for _ in range(4))
    ours = _grads(lambda q, k, v: flash_attn_func(q, k, v, causal=causal), q, k, v, dout)
    ref = _grads(
        lambda q, k, v: attention_ref(q, k, v, causal=causal)[0], q.double(), k.double(), v.double(), dout.double()
    )
    same = _grads(lambda q, k, v: attention_ref(q, k, v, causal=causal, upcast=False)[0], q, k, v, dout)
    for name, a, r, s in zip(("out", "dq", "dk", "dv"), ours, ref, same):
        assert_rule(a, r, s, factor=3.0, what=name, n_terms=n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("d,d_v", [(64, 32), (40, 96)])
def test_cuda_dv_ne_d(dtype, d, d_v):
    # SDPA: "value (Tensor) - Value tensor; shape (N, ..., S, Ev)" and the output is "(N, ..., L, Ev)":
    # the value head dim may differ from the query/key one (CUDA runs the SIMT kernels for it)
    q, k = randn((2, 77, 4, d), dtype, DEV), randn((2, 130, 2, d), dtype, DEV)
    v, dout = randn((2, 130, 2, d_v), dtype, DEV), randn((2, 77, 4, d_v), dtype, DEV)
    ours = _grads(lambda q, k, v: flash_attn_func(q, k, v, causal=True), q, k, v, dout)
    assert ours[0].shape == (2, 77, 4, d_v)
    ref = _grads(
        lambda q, k, v: attention_ref(q, k, v, causal=True)[0], q.double(), k.double(), v.double(), dout.double()
    )
    same = _grads(lambda q, k, v: attention_ref(q, k, v, causal=True, upcast=False)[0], q, k, v, dout)
    for name, a, r, s in zip(("out", "dq", "dk", "dv"), ours, ref, same):
        assert_rule(a, r, s, factor=3.0 if dtype == torch.bfloat16 else 2.0, what=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_deterministic_backward(dtype):
    q, k, v, dout = (randn((2, 333, 4, 64), dtype, DEV) for _ in range(4))
    runs = [
        _grads(lambda q, k, v: flash_attn_func(q, k, v, causal=True, deterministic=True), q, k, v, dout)
        for _ in range(2)
    ]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    ref = _grads(
        lambda q, k, v: attention_ref(q, k, v, causal=True)[0], q.double(), k.double(), v.double(), dout.double()
    )
    same = _grads(lambda q, k, v: attention_ref(q, k, v, causal=True, upcast=False)[0], q, k, v, dout)
    for name, a, r, s in zip(("out", "dq", "dk", "dv"), runs[0], ref, same):
        assert_rule(a, r, s, factor=3.0, what=name)


def test_cuda_gradcheck_fp64():
    q = randn((1, 9, 2, 5), torch.float64, DEV, requires_grad=True)
    k = randn((1, 12, 1, 5), torch.float64, DEV, requires_grad=True)
    v = randn((1, 12, 1, 5), torch.float64, DEV, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: flash_attn_func(q, k, v, causal=True), (q, k, v))


def test_cuda_matches_cpu_bf16():
    q, k, v = (randn((1, 257, 2, 64), torch.bfloat16) for _ in range(3))
    a = flash_attn_func(q, k, v, causal=True)
    b = flash_attn_func(q.cuda(), k.cuda(), v.cuda(), causal=True).cpu()
    assert (a.float() - b.float()).abs().max().item() < 2e-2


def test_cuda_device_mismatch():
    q = randn((1, 8, 2, 64), torch.float32, DEV)
    k = randn((1, 8, 2, 64), torch.float32)
    with pytest.raises((ValueError, RuntimeError), match=r"device"):
        flash_attn_func(q, k, k)


def test_cuda_graph_capture():
    q, k, v = (randn((2, 256, 4, 64), torch.bfloat16, DEV) for _ in range(3))
    eager = flash_attn_func(q, k, v, causal=True)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        flash_attn_func(q, k, v, causal=True)  # warm-up (kernel attributes) outside capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = flash_attn_func(q, k, v, causal=True)
    q.copy_(randn(q.shape, q.dtype, DEV))
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, flash_attn_func(q, k, v, causal=True))
    assert not torch.equal(out, eager)


def test_cuda_compile_fullgraph():
    torch._dynamo.reset()

    def f(q, k, v):
        return flash_attn_func(q, k, v, causal=True).float().pow(2).sum()

    q, k, v = (randn((2, 65, 4, 64), torch.bfloat16, DEV, requires_grad=True) for _ in range(3))
    c = torch.compile(f, fullgraph=True)
    lc = c(q, k, v)
    gc = torch.autograd.grad(lc, (q, k, v))
    le = f(q, k, v)
    ge = torch.autograd.grad(le, (q, k, v))
    assert torch.allclose(lc, le, rtol=1e-3)
    for a, b in zip(gc, ge):
        assert torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_opcheck(dtype):
    q, k, v = (randn((1, 33, 2, 64), dtype, DEV, requires_grad=True) for _ in range(3))
    args = (q, k, v, None, None, None, None, None, None, None, -1, -1, 0.125, True, True, -1, -1, 0.0, 0.0, 0)
    torch.library.opcheck(torch.ops.flashattn_lite.fwd.default, args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("h,h_kv", [(8, 8), (8, 2), (32, 4)])
@pytest.mark.parametrize("s_k", [1, 100, 5000, 40000])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_decode_split_kv_and_gqa_packing(dtype, h, h_kv, s_k, causal):
    # few queries against a long cache: split-KV (auto) and GQA head packing
    q = randn((2, 1, h, 128), dtype, DEV)
    k, v = randn((2, s_k, h_kv, 128), dtype, DEV), randn((2, s_k, h_kv, 128), dtype, DEV)
    _check(q, k, v, causal=causal)
    _check(q, k, v, causal=causal, window_size=(50, 0))


@pytest.mark.parametrize("num_splits", [1, 2, 3, 7, 64])
def test_cuda_explicit_num_splits(num_splits):
    q, k, v = (
        randn((1, 3, 4, 64), torch.bfloat16, DEV),
        randn((1, 3000, 4, 64), torch.bfloat16, DEV),
        randn((1, 3000, 4, 64), torch.bfloat16, DEV),
    )
    out, lse = torch.ops.flashattn_lite.fwd(
        q, k, v, None, None, None, None, None, None, None, -1, -1, 0.125, True, True, -1, -1, 0.0, 0.0, num_splits
    )
    ref, ref_lse = attention_ref(q, k, v, softmax_scale=0.125, causal=True)
    same, _ = attention_ref(q, k, v, softmax_scale=0.125, causal=True, upcast=False)
    assert_rule(out, ref, same, n_terms=3000)
    assert torch.allclose(lse, ref_lse.float(), atol=2e-3)


def test_cuda_decode_sdpa_top_left_causal():
    # SDPA's is_causal with one query: the query sees key 0 only
    q, k, v = (
        randn((2, 8, 1, 64), torch.bfloat16, DEV),
        randn((2, 2, 500, 64), torch.bfloat16, DEV),
        randn((2, 2, 500, 64), torch.bfloat16, DEV),
    )
    out = scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    expect = v[:, :, :1].repeat_interleave(4, dim=1)
    assert torch.allclose(out.float(), expect.float(), atol=1e-2)


@pytest.mark.parametrize("kw", [{"softcap": 2.0}, {"alibi_slopes": "slopes"}, {"dropout_p": 0.1}])
def test_cuda_cpu_only_features_refused(kw):
    q, k, v = (randn((1, 8, 2, 16), torch.bfloat16, device=DEV) for _ in range(3))
    if kw.get("alibi_slopes") == "slopes":
        kw = {"alibi_slopes": torch.rand(2, device=DEV)}
    with pytest.raises(NotImplementedError, match=r"is not implemented on CUDA yet"):
        flash_attn_func(q, k, v, **kw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("s_q,s_k", [(4, 64), (1, 8192)])  # (1, 8192): split-KV + combine
def test_cuda_nan_row_gives_nan_lse(dtype, s_q, s_k):
    q = randn((1, s_q, 2, 64), dtype, device=DEV)
    k, v = randn((1, s_k, 2, 64), dtype, device=DEV), randn((1, s_k, 2, 64), dtype, device=DEV)
    q[0, 0, 0] = float("nan")
    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True)
    assert torch.isnan(out[0, 0, 0]).all() and torch.isnan(lse[0, 0, 0])
    assert torch.isfinite(out[0, :, 1]).all() and torch.isfinite(lse[0, 1]).all()


def test_cuda_dropout_bits_equal_cpu():
    # the same rng_state draws the same keep pattern on both devices (one Philox in attn_math.h)
    rng = torch.tensor([0x1234567890ABCDEF, 77], dtype=torch.int64)
    cpu = torch.ops.flashattn_lite.dropout_keep(rng, 2, 3, 37, 101, 0.3)
    gpu = torch.ops.flashattn_lite.dropout_keep(rng.to(DEV), 2, 3, 37, 101, 0.3)
    assert gpu.device.type == "cuda"
    assert torch.equal(cpu, gpu.cpu())
