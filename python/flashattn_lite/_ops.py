"""Fake (meta) and autograd registrations of the flashattn_lite ops.

The schemas and device kernels are registered in C++ (``flashattn_lite._C``). Here:
* ``register_fake`` gives shapes and dtypes for torch.compile / FakeTensor tracing;
* ``register_autograd`` makes ``fwd`` differentiable; its backward calls the registered ``bwd``
  op and saves only q, k, v, out and softmax_lse.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

Tensor = torch.Tensor

# bwd schema arguments after attn_mask (module.cpp): the last one is mask_grad.
BWD_TAIL_NAMES: tuple[str, ...] = (
    "alibi_slopes", "cu_seqlens_q", "cu_seqlens_k", "seqused_k", "rng_state", "max_seqlen_q",
    "max_seqlen_k", "softmax_scale", "causal", "bottom_right", "window_left", "window_right",
    "softcap", "dropout_p", "deterministic", "mask_grad",
)

# Names of the fwd schema arguments, in order (module.cpp is the source of truth).
FWD_ARG_NAMES: tuple[str, ...] = (
    "q", "k", "v", "attn_mask", "alibi_slopes", "cu_seqlens_q", "cu_seqlens_k", "seqused_k",
    "block_table", "rng_state", "max_seqlen_q", "max_seqlen_k", "softmax_scale", "causal",
    "bottom_right", "window_left", "window_right", "softcap", "dropout_p", "num_splits",
    "deterministic",
)


def _lse_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


@torch.library.register_fake("flashattn_lite::fwd")
def _fwd_fake(q: Tensor, k: Tensor, v: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    torch._check(q.dim() in (3, 4), lambda: f"flashattn_lite: q must have 4 dims (3 packed), got {q.dim()}")
    torch._check(v.dim() == q.dim() or (q.dim() == 3 and v.dim() == 4),  # 4-D: paged K/V of varlen
                 lambda: f"flashattn_lite: v must have {q.dim()} dims, got {v.dim()}")
    out = q.new_empty(tuple(q.shape[:-1]) + (v.shape[-1],))
    if q.dim() == 3:  # packed (total_q, h, d): lse (h, total_q)
        lse = q.new_empty((q.shape[1], q.shape[0]), dtype=_lse_dtype(q))
    else:
        b, s_q, h, _ = q.shape
        lse = q.new_empty((b, h, s_q), dtype=_lse_dtype(q))
    return out, lse


@torch.library.register_fake("flashattn_lite::bwd")
def _bwd_fake(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, out: Tensor,
              lse: Tensor, attn_mask: Optional[Tensor], *args: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    mask_grad = bool(args[-1]) if len(args) == len(BWD_TAIL_NAMES) else False
    dmask = attn_mask.new_empty(attn_mask.shape) if (mask_grad and attn_mask is not None) else q.new_empty((0,))
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dmask)


@torch.library.register_fake("flashattn_lite::dropout_keep")
def _dropout_keep_fake(rng_state: Tensor, batch: int, heads: int, seqlen_q: int, seqlen_k: int,
                       dropout_p: float) -> Tensor:
    return rng_state.new_empty((batch, heads, seqlen_q, seqlen_k), dtype=torch.bool)


def _setup_context(ctx: Any, inputs: Sequence[Any], output: tuple[Tensor, Tensor]) -> None:
    args = dict(zip(FWD_ARG_NAMES, inputs))
    args.setdefault("deterministic", False)
    out, lse = output
    ctx.save_for_backward(args["q"], args["k"], args["v"], out, lse)
    # Optional tensors travel by reference: they are inputs the caller keeps (an attn_mask that
    # requires grad gets its gradient from the bwd op).
    ctx.opt_tensors = {n: args[n] for n in ("attn_mask", "alibi_slopes", "cu_seqlens_q",
                                            "cu_seqlens_k", "seqused_k", "rng_state")}
    ctx.scalars = {n: args[n] for n in ("max_seqlen_q", "max_seqlen_k", "softmax_scale", "causal",
                                        "bottom_right", "window_left", "window_right", "softcap",
                                        "dropout_p", "deterministic")}


def _backward(ctx: Any, dout: Optional[Tensor], dlse: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
    q, k, v, out, lse = ctx.saved_tensors
    n_rest = len(FWD_ARG_NAMES) - 3
    if dout is None and dlse is None:
        return (None, None, None) + (None,) * n_rest
    if dout is None:
        dout = torch.zeros_like(out)
    o, s = ctx.opt_tensors, ctx.scalars
    mask = o["attn_mask"]
    mask_grad = bool(ctx.needs_input_grad[3]) and mask is not None and mask.is_floating_point()
    dq, dk, dv, dmask = torch.ops.flashattn_lite.bwd.default(
        dout, dlse, q, k, v, out, lse,
        o["attn_mask"], o["alibi_slopes"], o["cu_seqlens_q"], o["cu_seqlens_k"], o["seqused_k"],
        o["rng_state"], s["max_seqlen_q"], s["max_seqlen_k"], s["softmax_scale"], s["causal"],
        s["bottom_right"], s["window_left"], s["window_right"], s["softcap"], s["dropout_p"],
        s["deterministic"], mask_grad)
    return (dq, dk, dv, dmask if mask_grad else None) + (None,) * (n_rest - 1)


torch.library.register_autograd("flashattn_lite::fwd", _backward, setup_context=_setup_context)


@torch.library.register_fake("flashattn_lite::fwd_kvcache")
def _fwd_kvcache_fake(q: Tensor, k_cache: Tensor, v_cache: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    b, s_q, h, _ = q.shape
    out = q.new_empty((b, s_q, h, v_cache.shape[-1]))
    return out, q.new_empty((b, h, s_q), dtype=_lse_dtype(q))
