"""Fake (meta) and autograd registrations of the flashattn_lite ops.

The schemas and device kernels are registered in C++ (``flashattn_lite._C``). Here:
* ``register_fake`` gives shapes and dtypes for torch.compile / FakeTensor tracing;
* ``register_autograd`` makes ``fwd`` differentiable; its backward calls the registered ``bwd``
  op and saves only q, k, v, out and softmax_lse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Tensor = torch.Tensor


def arg_names(op: torch._ops.OpOverload) -> tuple[str, ...]:
    """The argument names of a registered op, in order: its schema (csrc/torch/module.cpp) is the
    one definition; Python calls the ops with these names as keywords."""
    return tuple(a.name for a in op._schema.arguments)


FWD_ARG_NAMES: tuple[str, ...] = arg_names(torch.ops.flashattn_lite.fwd.default)
BWD_ARG_NAMES: tuple[str, ...] = arg_names(torch.ops.flashattn_lite.bwd.default)
# bwd arguments after attn_mask: the last one is mask_grad.
BWD_TAIL_NAMES: tuple[str, ...] = BWD_ARG_NAMES[BWD_ARG_NAMES.index("attn_mask") + 1 :]
# The fwd arguments the backward passes on to bwd (all that bwd takes of them, beside q, k, v).
_FWD_TO_BWD: tuple[str, ...] = tuple(n for n in BWD_ARG_NAMES if n in FWD_ARG_NAMES and n not in ("q", "k", "v"))


def _lse_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


@torch.library.register_fake("flashattn_lite::fwd")
def _fwd_fake(q: Tensor, k: Tensor, v: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    torch._check(q.dim() in (3, 4), lambda: f"flashattn_lite: q must have 4 dims (3 packed), got {q.dim()}")
    torch._check(
        v.dim() == q.dim() or (q.dim() == 3 and v.dim() == 4),  # 4-D: paged K/V of varlen
        lambda: f"flashattn_lite: v must have {q.dim()} dims, got {v.dim()}",
    )
    out = q.new_empty(tuple(q.shape[:-1]) + (v.shape[-1],))
    if q.dim() == 3:  # packed (total_q, h, d): lse (h, total_q)
        lse = q.new_empty((q.shape[1], q.shape[0]), dtype=_lse_dtype(q))
    else:
        b, s_q, h, _ = q.shape
        lse = q.new_empty((b, h, s_q), dtype=_lse_dtype(q))
    return out, lse


@torch.library.register_fake("flashattn_lite::bwd")
def _bwd_fake(
    dout: Tensor,
    dlse: Tensor | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    attn_mask: Tensor | None,
    *args: Any,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    mask_grad = bool(args[-1]) if len(args) == len(BWD_TAIL_NAMES) else False
    dmask = attn_mask.new_empty(attn_mask.shape) if (mask_grad and attn_mask is not None) else q.new_empty((0,))
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dmask)


@torch.library.register_fake("flashattn_lite::dropout_keep")
def _dropout_keep_fake(
    rng_state: Tensor, batch: int, heads: int, seqlen_q: int, seqlen_k: int, dropout_p: float
) -> Tensor:
    return rng_state.new_empty((batch, heads, seqlen_q, seqlen_k), dtype=torch.bool)


def _setup_context(ctx: Any, inputs: Sequence[Any], output: tuple[Tensor, Tensor]) -> None:
    args = dict(zip(FWD_ARG_NAMES, inputs))  # torch fills in the arguments left at their defaults
    out, lse = output
    ctx.save_for_backward(args["q"], args["k"], args["v"], out, lse)
    # The optional tensors travel by reference: they are inputs the caller keeps (an attn_mask that
    # requires grad gets its gradient from the bwd op).
    ctx.fwd_args = {n: args[n] for n in _FWD_TO_BWD}


def _backward(ctx: Any, dout: Tensor | None, dlse: Tensor | None) -> tuple[Tensor | None, ...]:
    grads: dict[str, Tensor | None] = dict.fromkeys(FWD_ARG_NAMES)  # one per fwd argument
    if dout is None and dlse is None:
        return tuple(grads.values())
    q, k, v, out, lse = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    mask = ctx.fwd_args["attn_mask"]
    needs_mask_grad = ctx.needs_input_grad[FWD_ARG_NAMES.index("attn_mask")]
    mask_grad = bool(needs_mask_grad) and mask is not None and mask.is_floating_point()
    dq, dk, dv, dmask = torch.ops.flashattn_lite.bwd.default(
        dout=dout, dlse=dlse, q=q, k=k, v=v, out=out, softmax_lse=lse, **ctx.fwd_args, mask_grad=mask_grad
    )
    grads.update(q=dq, k=dk, v=dv, attn_mask=dmask if mask_grad else None)
    return tuple(grads.values())


torch.library.register_autograd("flashattn_lite::fwd", _backward, setup_context=_setup_context)


@torch.library.register_fake("flashattn_lite::fwd_kvcache")
def _fwd_kvcache_fake(q: Tensor, k_cache: Tensor, v_cache: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    b, s_q, h, _ = q.shape
    out = q.new_empty((b, s_q, h, v_cache.shape[-1]))
    return out, q.new_empty((b, h, s_q), dtype=_lse_dtype(q))


@torch.library.register_fake("flashattn_lite::kvcache_append")
def _kvcache_append_fake(
    k_cache: Tensor,
    v_cache: Tensor,
    k: Tensor,
    v: Tensor,
    cache_seqlens: Tensor,
    cache_batch_idx: Tensor | None,
    block_table: Tensor | None,
    q: Tensor,
    rotary_cos: Tensor | None,
    rotary_sin: Tensor | None,
    rotary_interleaved: bool,
    rotary_q_rows: bool,
) -> tuple[Tensor, Tensor]:
    q_rot = q.new_empty(q.shape) if rotary_cos is not None else q.new_empty((0,))
    return q_rot, cache_seqlens.new_empty((k.shape[0],))
