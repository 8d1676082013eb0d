"""Context parallelism: ring attention over torch.distributed point-to-point ops.

Every rank of ``group`` holds one contiguous chunk of the sequence (rank r: tokens
[r * s, (r + 1) * s) of q, k and v). The K/V chunks travel around the ring (rank r sends to r + 1
and receives from r - 1) while each rank attends its queries to the chunk it holds; the partial
results merge through their log-sum-exps (the ``softmax_lse`` the kernels return):

    lse = log(exp(lse_a) + exp(lse_b)),   out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b.

The backward sends the chunks around again with their dK/dV accumulators: each step's gradients
come from the kernels' backward given the *final* out and lse (exact partial gradients), and after
a full turn every accumulator is back at its owner. Communication overlaps the compute of the
step (async isend / irecv). Works with any backend that has point-to-point ops (gloo on the CPU,
NCCL on GPUs).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

Tensor = torch.Tensor


# The op arguments (by their schema names, csrc/torch/module.cpp) of a plain attention: no mask,
# ALiBi, softcap, dropout or window, not varlen; causal aligned bottom-right.
_PLAIN: dict[str, Any] = dict(
    attn_mask=None,
    alibi_slopes=None,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
    seqused_k=None,
    rng_state=None,
    max_seqlen_q=-1,
    max_seqlen_k=-1,
    bottom_right=True,
    window_left=-1,
    window_right=-1,
    softcap=0.0,
    dropout_p=0.0,
    deterministic=False,
)


def _fwd(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool) -> tuple[Tensor, Tensor]:
    return torch.ops.flashattn_lite.fwd.default(
        q=q, k=k, v=v, block_table=None, num_splits=0, softmax_scale=scale, causal=causal, **_PLAIN
    )


def _bwd(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, causal: bool
) -> tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv, _ = torch.ops.flashattn_lite.bwd.default(
        dout=dout, dlse=None, q=q, k=k, v=v, out=out, softmax_lse=lse, softmax_scale=scale, causal=causal, **_PLAIN
    )
    return dq, dk, dv


def _merge(out: Tensor | None, lse: Tensor | None, o: Tensor, o_lse: Tensor) -> tuple[Tensor, Tensor]:
    """Merge a partial (o (b, s, h, d), o_lse (b, h, s)) into the running (out, lse), in the LSE's
    dtype (fp32; fp64 for fp64 inputs)."""
    o = o.to(o_lse.dtype)
    if out is None or lse is None:
        return o, o_lse.clone()
    new = torch.logaddexp(lse, o_lse)
    seen = torch.isfinite(new)
    wa = torch.where(seen, torch.exp(lse - new), torch.zeros_like(new)).transpose(1, 2).unsqueeze(-1)
    wb = torch.where(seen, torch.exp(o_lse - new), torch.zeros_like(new)).transpose(1, 2).unsqueeze(-1)
    return out * wa + o * wb, new


class _Ring:
    """Non-blocking exchange with the ring neighbours: send to rank + 1, receive from rank - 1."""

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.next = dist.get_global_rank(group, (self.rank + 1) % self.world) if group else (self.rank + 1) % self.world
        self.prev = dist.get_global_rank(group, (self.rank - 1) % self.world) if group else (self.rank - 1) % self.world
        self.reqs: list[Any] = []

    def start(self, tensors: list[Tensor]) -> list[Tensor]:
        bufs = [torch.empty_like(t) for t in tensors]
        ops = []
        for t, b in zip(tensors, bufs):
            ops.append(dist.P2POp(dist.isend, t.contiguous(), self.next, self.group))
            ops.append(dist.P2POp(dist.irecv, b, self.prev, self.group))
        self.reqs = dist.batch_isend_irecv(ops)
        return bufs

    def wait(self) -> None:
        for r in self.reqs:
            r.wait()
        self.reqs = []


def _visible(src: int, rank: int, causal: bool) -> tuple[bool, bool]:
    """(attend to chunk src at all, with the causal diagonal)."""
    if not causal:
        return True, False
    return src <= rank, src == rank


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, group: dist.ProcessGroup | None, causal: bool, scale: float
    ) -> Tensor:
        ring = _Ring(group)
        out = lse = None
        kc, vc = k.contiguous(), v.contiguous()
        for step in range(ring.world):
            nxt = ring.start([kc, vc]) if step + 1 < ring.world else None
            src = (ring.rank - step) % ring.world
            use, diag = _visible(src, ring.rank, causal)
            if use:
                o, o_lse = _fwd(q, kc, vc, scale, diag)
                out, lse = _merge(out, lse, o, o_lse)
            if nxt is not None:
                ring.wait()
                kc, vc = nxt
        assert out is not None and lse is not None  # the own chunk is always visible
        out_t = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out_t, lse)
        ctx.group, ctx.causal, ctx.scale = group, causal, scale
        return out_t

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        ring = _Ring(ctx.group)
        dout = dout.contiguous()
        acc = lse.dtype  # fp32, fp64 for fp64 inputs
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        kc, vc = k.contiguous(), v.contiguous()
        dkc = torch.zeros(k.shape, dtype=acc, device=k.device)
        dvc = torch.zeros(v.shape, dtype=acc, device=v.device)
        for step in range(ring.world):
            src = (ring.rank - step) % ring.world
            use, diag = _visible(src, ring.rank, ctx.causal)
            if use:
                gq, gk, gv = _bwd(dout, q, kc, vc, out, lse, ctx.scale, diag)
                dq += gq.to(acc)
                dkc += gk.to(acc)
                dvc += gv.to(acc)
            # the accumulators follow their chunk; after world hops they are home
            last = step + 1 == ring.world
            bufs = ring.start([dkc, dvc] if last else [kc, vc, dkc, dvc])
            ring.wait()
            if last:
                dkc, dvc = bufs
            else:
                kc, vc, dkc, dvc = bufs
        return dq.to(q.dtype), dkc.to(k.dtype), dvc.to(v.dtype), None, None, None


def ring_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    group: dist.ProcessGroup | None = None,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> Tensor:
    """Attention over a sequence split across the ranks of ``group`` (flash-attn layout).

    q, k, v: this rank's chunk, (batch, seqlen_chunk, heads, head_dim) / (batch, seqlen_chunk,
    heads_kv, head_dim); rank r holds tokens [r * seqlen_chunk, (r + 1) * seqlen_chunk) of the
    sequence; every rank must use the same chunk length. causal: query i sees keys j <= i of the
    whole sequence. Returns this rank's chunk of the output; differentiable (q, k and v get their
    gradients on their own rank). Extra memory: O(chunk) per rank, two K/V chunks in flight.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("flashattn_lite: ring_attention needs an initialised torch.distributed process group")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"flashattn_lite: {name} must be a 4-D tensor (batch, seqlen_chunk, heads, head_dim)")
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError(
            "flashattn_lite: causal ring attention needs q and k chunks of the same length, got "
            f"{q.shape[1]} and {k.shape[1]}"
        )
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return _RingAttention.apply(q, k, v, group, bool(causal), scale)
