"""flash-attn 2's varlen functions: sequences of different lengths packed without padding
(``cu_seqlens``), optionally over a paged K/V (``block_table``)."""

from __future__ import annotations

import torch

from ._common import _attn, _attn_probs_varlen, _check_3d, _check_features, _default_scale, _window, rng_state_for
from .errors import flash_attn_errors

Tensor = torch.Tensor


@flash_attn_errors
def flash_attn_varlen_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    block_table: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor, Tensor | None]:
    """flash-attn 2's ``flash_attn_varlen_func``: sequences of different lengths packed without padding.

    q: (total_q, heads, head_dim), k/v: (total_k, heads_kv, head_dim); cu_seqlens_q/k: int32
    (batch + 1,) cumulative lengths starting at 0; max_seqlen_q/k bound the lengths. Sequence i is
    q[cu_seqlens_q[i]:cu_seqlens_q[i+1]] against k/v[cu_seqlens_k[i]:cu_seqlens_k[i+1]]; causal and
    window are aligned bottom-right per sequence. block_table (batch, max_blocks) int32: k/v are
    a paged cache (num_blocks, page_size, heads_kv, head_dim) and sequence i's keys are its
    cu_seqlens_k length from the pages in block_table[i] (forward only, as in flash-attn). Returns
    out (total_q, heads, head_dim), or with return_attn_probs=True (out, softmax_lse (heads, total_q),
    S_dmask): S_dmask as in flash_attn_func, shaped (batch, heads, max_seqlen_q, max_seqlen_k) with
    sequence i in [i, :, :seqlen_q_i, :seqlen_k_i] and zeros beyond; None without dropout.
    """
    _check_3d(q, "q", "(total_q, heads, head_dim)")
    for name, t in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(t, Tensor):
            raise TypeError(f"flashattn_lite: {name} must be an int32 torch.Tensor, got {type(t).__name__}")
    if block_table is not None:  # paged K/V: forward only, as in flash-attn
        if k.dim() != 4 or v.dim() != 4:
            raise ValueError(
                "flashattn_lite: with block_table, k and v are paged: (num_blocks, page_size, heads_kv, "
                f"head_dim), got k {tuple(k.shape)}, v {tuple(v.shape)}"
            )
        if dropout_p > 0:
            raise ValueError("flashattn_lite: block_table (paged K/V) is inference only: dropout_p must be 0")
        q, k, v = q.detach(), k.detach(), v.detach()
    else:
        _check_3d(k, "k", "(total_k, heads_kv, head_dim)")
        _check_3d(v, "v", "(total_k, heads_kv, head_dim)")
    _check_features(dropout_p, softcap)
    rng = rng_state_for(dropout_p, q.device)
    scale, window = _default_scale(q.shape[-1], softmax_scale), _window(window_size)
    out, lse = _attn(
        q,
        k,
        v,
        scale,
        causal,
        True,
        window,
        deterministic,
        alibi_slopes=alibi_slopes,
        softcap=softcap,
        dropout_p=dropout_p,
        rng_state=rng,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        block_table=block_table,
    )
    if return_attn_probs:  # as flash-attn: the probabilities only with dropout (O(s^2), for tests)
        probs = (
            None
            if rng is None
            else _attn_probs_varlen(
                q,
                k,
                lse,
                cu_seqlens_q,
                cu_seqlens_k,
                int(max_seqlen_q),
                int(max_seqlen_k),
                rng,
                dropout_p,
                alibi_slopes,
                softmax_scale=scale,
                causal=causal,
                window_size=window,
                softcap=softcap,
            )
        )
        return out, lse, probs
    return out


@flash_attn_errors
def flash_attn_varlen_qkvpacked_func(
    qkv: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor | None]:
    """flash-attn 2's ``flash_attn_varlen_qkvpacked_func``: qkv is (total, 3, heads, head_dim)."""
    if not isinstance(qkv, Tensor) or qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(
            "flashattn_lite: qkv must have shape (total, 3, heads, head_dim), "
            f"got {tuple(qkv.shape) if isinstance(qkv, Tensor) else type(qkv).__name__}"
        )
    q, k, v = qkv.unbind(1)
    return flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens,
        cu_seqlens,
        max_seqlen,
        max_seqlen,
        dropout_p,
        softmax_scale,
        causal,
        window_size,
        softcap,
        alibi_slopes,
        deterministic,
        return_attn_probs,
    )


@flash_attn_errors
def flash_attn_varlen_kvpacked_func(
    q: Tensor,
    kv: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor | None]:
    """flash-attn 2's ``flash_attn_varlen_kvpacked_func``: kv is (total_k, 2, heads_kv, head_dim)."""
    if not isinstance(kv, Tensor) or kv.dim() != 4 or kv.shape[1] != 2:
        raise ValueError(
            "flashattn_lite: kv must have shape (total_k, 2, heads_kv, head_dim), "
            f"got {tuple(kv.shape) if isinstance(kv, Tensor) else type(kv).__name__}"
        )
    k, v = kv.unbind(1)
    return flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p,
        softmax_scale,
        causal,
        window_size,
        softcap,
        alibi_slopes,
        deterministic,
        return_attn_probs,
    )
