"""The op boundary: opcheck on every registered op, torch.compile(fullgraph=True), build info."""
from __future__ import annotations

import pytest
import torch

import flashattn_lite
from conftest import randn
from flashattn_lite import flash_attn_func, scaled_dot_product_attention


def _fwd_args(q, k, v, causal=False, bottom_right=True, window=(-1, -1), deterministic=False):
    return (q, k, v, None, None, None, None, None, None, None, -1, -1, q.shape[-1] ** -0.5, causal,
            bottom_right, window[0], window[1], 0.0, 0.0, 0, deterministic)


def fwd_samples(requires_grad: bool):
    yield _fwd_args(*(randn((2, 17, 4, 16), torch.float32, requires_grad=requires_grad) for _ in range(3)))
    yield _fwd_args(randn((1, 9, 4, 8), torch.bfloat16, requires_grad=requires_grad),
                    randn((1, 13, 2, 8), torch.bfloat16, requires_grad=requires_grad),
                    randn((1, 13, 2, 8), torch.bfloat16, requires_grad=requires_grad), causal=True,
                    deterministic=True)
    yield _fwd_args(randn((1, 5, 2, 3), torch.float64, requires_grad=requires_grad),
                    randn((1, 7, 2, 3), torch.float64, requires_grad=requires_grad),
                    randn((1, 7, 2, 6), torch.float64, requires_grad=requires_grad), causal=True,
                    bottom_right=False, window=(2, -1))


@pytest.mark.parametrize("idx", range(3))
def test_opcheck_fwd(idx):
    args = list(fwd_samples(requires_grad=True))[idx]
    torch.library.opcheck(torch.ops.flashattn_lite.fwd.default, args)


@pytest.mark.parametrize("idx", range(3))
def test_opcheck_bwd(idx):
    args = list(fwd_samples(requires_grad=False))[idx]
    q, k, v = args[:3]
    out, lse = torch.ops.flashattn_lite.fwd.default(*args)
    dout = torch.randn_like(out)
    dlse = torch.randn_like(lse)
    bwd_args = (dout, dlse, q, k, v, out, lse, None, None, None, None, None, None) + tuple(args[10:19]) + (args[20],)
    torch.library.opcheck(torch.ops.flashattn_lite.bwd.default, bwd_args)


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
