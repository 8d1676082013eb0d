"""Ring attention with 2 (and 3) processes on the gloo backend: equal to single-process attention,
gradients included."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import assert_rule, max_err, slow

CHUNK = 37  # tokens per rank


def _data(world: int, dtype: torch.dtype, h_kv: int):
    """The whole sequence's q, k, v, dout: the same in every process (fixed generator)."""
    g = torch.Generator().manual_seed(1234)
    n = world * CHUNK
    return (
        torch.randn(2, n, 4, 24, generator=g).to(dtype),
        torch.randn(2, n, h_kv, 24, generator=g).to(dtype),
        torch.randn(2, n, h_kv, 24, generator=g).to(dtype),
        torch.randn(2, n, 4, 24, generator=g).to(dtype),
    )


def _worker(rank: int, world: int, init_file: str, out_dir: str, causal: bool, dtype: torch.dtype, h_kv: int) -> None:
    import flashattn_lite  # noqa: F401  (registers the ops in the child)
    from flashattn_lite.distributed import ring_attention

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        q, k, v, dout = _data(world, dtype, h_kv)
        s = CHUNK
        chunk = slice(rank * s, (rank + 1) * s)
        ql, kl, vl = (t[:, chunk].clone().requires_grad_(True) for t in (q, k, v))
        out = ring_attention(ql, kl, vl, causal=causal)
        out.backward(dout[:, chunk])
        torch.save(
            {"out": out.detach(), "dq": ql.grad, "dk": kl.grad, "dv": vl.grad}, os.path.join(out_dir, f"rank{rank}.pt")
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "world,causal,dtype,h_kv",
    [
        slow(2, False, torch.float32, 4),
        (2, True, torch.float32, 2),
        slow(3, True, torch.float64, 1),  # process start-up: seconds per case
        slow(2, True, torch.bfloat16, 2),
    ],
)
def test_ring_attention_matches_single_process(world, causal, dtype, h_kv):
    from flashattn_lite import flash_attn_func
    from flashattn_lite.reference import attention_ref

    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.start_processes(
            _worker, args=(world, init_file, tmp, causal, dtype, h_kv), nprocs=world, join=True, start_method="spawn"
        )
        parts = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]
    got = {n: torch.cat([p[n] for p in parts], dim=1) for n in ("out", "dq", "dk", "dv")}

    q, k, v, dout = _data(world, dtype, h_kv)

    def grads(fn, tensors, do):
        ts = [t.detach().clone().requires_grad_(True) for t in tensors]
        o = fn(*ts)
        o.backward(do)
        return [o] + [t.grad for t in ts]

    ours = grads(lambda q, k, v: flash_attn_func(q, k, v, causal=causal), (q, k, v), dout)
    ref = grads(
        lambda q, k, v: attention_ref(q, k, v, causal=causal)[0], (q.double(), k.double(), v.double()), dout.double()
    )
    same = grads(lambda q, k, v: attention_ref(q, k, v, causal=causal, upcast=False)[0], (q, k, v), dout)
    for i, name in enumerate(("out", "dq", "dk", "dv")):
        # ring vs one process: the same numerical rule against fp64 (the ring merges in fp32)
        assert_rule(
            got[name],
            ref[i].to(dtype) if dtype == torch.float64 else ref[i],
            same[i],
            factor=3.0 if dtype == torch.bfloat16 else 2.0,
            what=name,
        )
        if dtype == torch.float64:
            assert max_err(got[name], ours[i]) < 1e-6, name
