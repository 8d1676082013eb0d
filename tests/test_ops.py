"""The op boundary: opcheck on every registered op, torch.compile(fullgraph=True), build info."""

from __future__ import annotations

import pytest
import torch

import flashattn_lite
from flashattn_lite import flash_attn_func, scaled_dot_product_attention

from conftest import op_kwargs, randn


def _arg_names(op):
    return tuple(a.name for a in op._schema.arguments)


# The schemas (csrc/torch/module.cpp) name the arguments; the samples below give each by name.
FWD_NAMES = _arg_names(torch.ops.flashattn_lite.fwd.default)
BWD_NAMES = _arg_names(torch.ops.flashattn_lite.bwd.default)


def _fwd_args(q, k, v, causal=False, bottom_right=True, window=(-1, -1), deterministic=False, **kw):
    """Positional fwd arguments in schema order (opcheck takes a tuple), named via op_kwargs."""
    op = torch.ops.flashattn_lite.fwd.default
    a = op_kwargs(
        op,
        q=q,
        k=k,
        v=v,
        softmax_scale=q.shape[-1] ** -0.5,
        causal=causal,
        bottom_right=bottom_right,
        window_left=window[0],
        window_right=window[1],
        deterministic=deterministic,
        **kw,
    )
    return tuple(a.values())


def fwd_samples(requires_grad: bool):
    rg = requires_grad
    yield _fwd_args(*(randn((2, 17, 4, 16), torch.float32, requires_grad=rg) for _ in range(3)))
    yield _fwd_args(
        randn((1, 9, 4, 8), torch.bfloat16, requires_grad=rg),
        randn((1, 13, 2, 8), torch.bfloat16, requires_grad=rg),
        randn((1, 13, 2, 8), torch.bfloat16, requires_grad=rg),
        causal=True,
        deterministic=True,
    )
    yield _fwd_args(
        randn((1, 5, 2, 3), torch.float64, requires_grad=rg),
        randn((1, 7, 2, 3), torch.float64, requires_grad=rg),
        randn((1, 7, 2, 6), torch.float64, requires_grad=rg),
        causal=True,
        bottom_right=False,
        window=(2, -1),
    )
    # softcap + ALiBi + GQA
    yield _fwd_args(
        randn((2, 11, 4, 8), torch.float32, requires_grad=rg),
        randn((2, 14, 2, 8), torch.float32, requires_grad=rg),
        randn((2, 14, 2, 8), torch.float32, requires_grad=rg),
        causal=True,
        softcap=2.0,
        alibi_slopes=torch.rand(2, 4),
    )
    # additive mask that requires grad, broadcast over the batch
    yield _fwd_args(
        randn((2, 6, 2, 8), torch.float32, requires_grad=rg),
        randn((2, 10, 2, 8), torch.float32, requires_grad=rg),
        randn((2, 10, 2, 8), torch.float32, requires_grad=rg),
        bottom_right=False,
        attn_mask=randn((1, 2, 6, 10), torch.float32, requires_grad=rg),
    )
    # dropout (a fixed rng_state makes it deterministic)
    yield _fwd_args(
        *(randn((1, 12, 2, 8), torch.float64, requires_grad=rg) for _ in range(3)),
        dropout_p=0.3,
        rng_state=torch.tensor([1234, 5], dtype=torch.int64),
    )
    # varlen: packed tokens with cu_seqlens
    yield _fwd_args(
        *(randn((13, 2, 8), torch.float32, requires_grad=rg) for _ in range(3)),
        causal=True,
        cu_seqlens_q=torch.tensor([0, 4, 4, 13], dtype=torch.int32),
        cu_seqlens_k=torch.tensor([0, 6, 9, 13], dtype=torch.int32),
        max_seqlen_q=9,
        max_seqlen_k=6,
    )


N_SAMPLES = 7


@pytest.mark.parametrize("idx", range(N_SAMPLES))
def test_opcheck_fwd(idx):
    args = list(fwd_samples(requires_grad=True))[idx]
    torch.library.opcheck(torch.ops.flashattn_lite.fwd.default, args)


@pytest.mark.parametrize("idx", range(N_SAMPLES))
def test_opcheck_bwd(idx):
    args = list(fwd_samples(requires_grad=False))[idx]
    q, k, v = args[:3]
    out, lse = torch.ops.flashattn_lite.fwd.default(*args)
    dout = torch.randn_like(out)
    dlse = torch.randn_like(lse).masked_fill(torch.isinf(lse), 0.0)
    named = dict(zip(FWD_NAMES, args))
    named.update(dout=dout, dlse=dlse, out=out, softmax_lse=lse, mask_grad=named["attn_mask"] is not None)
    bwd_args = tuple(named[n] for n in BWD_NAMES)
    torch.library.opcheck(torch.ops.flashattn_lite.bwd.default, bwd_args)


def test_opcheck_dropout_keep():
    torch.library.opcheck(
        torch.ops.flashattn_lite.dropout_keep.default, (torch.tensor([3, 4], dtype=torch.int64), 2, 3, 5, 7, 0.25)
    )


@pytest.mark.parametrize("paged", [False, True])
def test_opcheck_kvcache_ops(paged):
    # the attention over a cache and the CPU append (it writes k_cache / v_cache in place: the schema
    # says so, and opcheck checks that only those two are mutated)
    kc, vc = randn((2, 12, 2, 8), torch.float32), randn((2, 12, 2, 8), torch.float32)
    # paged: the same tensors as 2 pages of 12 rows, sequence 0 in page 1, sequence 1 in page 0
    bt = torch.tensor([[1], [0]], dtype=torch.int32) if paged else None
    seqlens = torch.tensor([3, 7], dtype=torch.int32)
    k, v = randn((2, 2, 2, 8), torch.float32), randn((2, 2, 2, 8), torch.float32)
    q = randn((2, 1, 4, 8), torch.float32)
    cos, sin = randn((16, 3), torch.float32), randn((16, 3), torch.float32)
    for rot in ((None, None, True, False), (cos, sin, False, True)):
        torch.library.opcheck(
            torch.ops.flashattn_lite.kvcache_append.default, (kc, vc, k, v, seqlens, None, bt, q) + rot
        )
    args = (q, kc, vc, seqlens + 2, None, None, bt, None, 0.35, True, -1, -1, 0.0, 0)
    torch.library.opcheck(torch.ops.flashattn_lite.fwd_kvcache.default, args)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_features(backend):
    torch._dynamo.reset()
    mask = torch.rand(2, 1, 33, 33) > 0.2
    slopes = torch.rand(2)

    def f(q, k, v, fmask):
        a = flash_attn_func(q, k, v, causal=True, softcap=3.0, alibi_slopes=slopes, window_size=(9, 0))
        b = scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        c = scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=fmask)
        return a.sum() + b.pow(2).sum() + c.pow(2).sum()

    q, k, v = (randn((2, 33, 2, 16), torch.float32, requires_grad=True) for _ in range(3))
    fmask = randn((33, 33), torch.float32, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    loss_c = compiled(q, k, v, fmask)
    grads_c = torch.autograd.grad(loss_c, (q, k, v, fmask))
    loss_e = f(q, k, v, fmask)
    grads_e = torch.autograd.grad(loss_e, (q, k, v, fmask))
    assert torch.allclose(loss_c, loss_e, rtol=1e-5)
    for a, b in zip(grads_c, grads_e):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_dropout_and_varlen(backend):
    torch._dynamo.reset()
    cu = torch.tensor([0, 5, 20], dtype=torch.int32)

    def f(q, k, v):
        a = flash_attn_func(q, k, v, dropout_p=0.2)
        b = flashattn_lite.flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, 15, 15, causal=True)
        return a.sum() + b.pow(2).sum()

    q, k, v = (randn((1, 20, 2, 8), torch.float32, requires_grad=True) for _ in range(3))
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_fwd_bwd(backend):
    torch._dynamo.reset()

    def f(q, k, v):
        a = flash_attn_func(q, k, v, causal=True)
        b = scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return (a * 2).sum() + b.float().pow(2).sum()

    q, k, v = (randn((2, 33, 2, 16), torch.float32, requires_grad=True) for _ in range(3))
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    loss_c = compiled(q, k, v)
    grads_c = torch.autograd.grad(loss_c, (q, k, v))
    loss_e = f(q, k, v)
    grads_e = torch.autograd.grad(loss_e, (q, k, v))
    assert torch.allclose(loss_c, loss_e, rtol=1e-5)
    for a, b in zip(grads_c, grads_e):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_build_info():
    info = flashattn_lite.build_info()
    assert info["version"] == flashattn_lite.__version__
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert "scalar" in info["cpu_isas"]
    assert isinstance(info["cuda"], bool)
    assert info["compiler"]


def test_ops_visible_in_profiler():
    q, k, v = (randn((1, 16, 2, 8), torch.float32) for _ in range(3))
    with torch.profiler.profile() as prof:
        flash_attn_func(q, k, v)
    names = {e.name for e in prof.events()}
    assert "flashattn_lite::fwd" in names


def test_no_grad_skips_autograd_same_result():
    # torch.no_grad: "In this mode, the result of every computation will have requires_grad=False,
    # even when the inputs have requires_grad=True." -- the op then runs below the autograd layer
    q, k, v = (randn((2, 5, 4, 16), torch.float32, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        out = flash_attn_func(q, k, v, causal=True)
    assert not out.requires_grad and out.grad_fn is None
    tracked = flash_attn_func(q, k, v, causal=True)
    assert tracked.requires_grad and tracked.grad_fn is not None
    assert torch.equal(out, tracked.detach())
    (dq,) = torch.autograd.grad(tracked.sum(), (q,))
    assert torch.isfinite(dq).all() and dq.abs().sum() > 0
