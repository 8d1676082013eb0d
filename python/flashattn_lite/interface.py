"""Public API: flash-attn 2 compatible functions and a torch SDPA compatible function.

flash_attn_* : layout (batch, seqlen, heads, head_dim), causal/window aligned bottom-right.
scaled_dot_product_attention : layout (batch, heads, seqlen, head_dim), is_causal top-left.
All go through ``torch.ops.flashattn_lite.fwd`` (differentiable through its registered autograd).
The varlen functions live in varlen.py (re-exported here); shared checks in _common.py.
"""

from __future__ import annotations

import torch

from ._common import (
    _attn,
    _attn_probs,
    _check_4d,
    _check_features,
    _default_scale,
    _keep_pattern,
    _window,
    rng_state_for,
)
from .errors import flash_attn_errors
from .varlen import (
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
)

Tensor = torch.Tensor

__all__ = [
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "rng_state_for",
    "scaled_dot_product_attention",
]


@flash_attn_errors
def flash_attn_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor | None]:
    """flash-attn 2's ``flash_attn_func``.

    q: (batch, seqlen_q, heads, head_dim); k, v: (batch, seqlen_k, heads_kv, head_dim), heads a
    multiple of heads_kv (GQA/MQA). Causal and window are aligned bottom-right. softcap: scores
    s <- softcap * tanh(s / softcap); alibi_slopes fp32 (heads,) or (batch, heads): bias
    -slope * |i + seqlen_k - seqlen_q - j|; dropout_p: dropout on the probabilities, seeded from
    torch's default generator of q's device.
    Returns out (batch, seqlen_q, heads, head_dim), or with return_attn_probs=True
    (out, softmax_lse (batch, heads, seqlen_q) fp32, S_dmask). S_dmask is None without dropout (as
    flash-attn); with dropout_p > 0 it is the normalised softmax probabilities P (batch, heads,
    seqlen_q, seqlen_k) in fp32 at the exact shape, negated where dropout drops them: the keep mask
    is ``S_dmask >= 0`` and P is ``S_dmask.abs()``; out = (P * keep / (1 - dropout_p)) @ v.
    (flash-attn's holds block-wise unnormalised probabilities in q's dtype padded to its tile size,
    which its docstring allows: "might have different scaling".) O(seqlen^2): for tests.
    Bad arguments raise ArgumentError / ArgumentTypeError (catchable as RuntimeError, as
    flash-attn's).
    """
    _check_4d(q, "q", "(batch, seqlen_q, heads, head_dim)")
    _check_4d(k, "k", "(batch, seqlen_k, heads_kv, head_dim)")
    _check_4d(v, "v", "(batch, seqlen_k, heads_kv, head_dim)")
    _check_features(dropout_p, softcap)
    scale = _default_scale(q.shape[-1], softmax_scale)
    window = _window(window_size)
    rng = rng_state_for(dropout_p, q.device)
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
    )
    if return_attn_probs:  # as flash-attn: the probabilities only with dropout (O(s^2), for tests)
        probs = (
            None
            if rng is None
            else _attn_probs(
                q,
                k,
                lse,
                _keep_pattern(rng, q.shape[0], q.shape[2], q.shape[1], k.shape[1], dropout_p),
                softmax_scale=scale,
                causal=causal,
                window_size=window,
                softcap=softcap,
                alibi_slopes=alibi_slopes,
            )
        )
        return out, lse, probs
    return out


@flash_attn_errors
def flash_attn_qkvpacked_func(
    qkv: Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor | None]:
    """flash-attn 2's ``flash_attn_qkvpacked_func``: qkv is (batch, seqlen, 3, heads, head_dim)."""
    if not isinstance(qkv, Tensor) or qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(
            "flashattn_lite: qkv must have shape (batch, seqlen, 3, heads, head_dim), "
            f"got {tuple(qkv.shape) if isinstance(qkv, Tensor) else type(qkv).__name__}"
        )
    q, k, v = qkv.unbind(2)
    return flash_attn_func(
        q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs
    )


@flash_attn_errors
def flash_attn_kvpacked_func(
    q: Tensor,
    kv: Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor | None]:
    """flash-attn 2's ``flash_attn_kvpacked_func``: kv is (batch, seqlen_k, 2, heads_kv, head_dim)."""
    if not isinstance(kv, Tensor) or kv.dim() != 5 or kv.shape[2] != 2:
        raise ValueError(
            "flashattn_lite: kv must have shape (batch, seqlen_k, 2, heads_kv, head_dim), "
            f"got {tuple(kv.shape) if isinstance(kv, Tensor) else type(kv).__name__}"
        )
    k, v = kv.unbind(2)
    return flash_attn_func(
        q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs
    )


@flash_attn_errors
def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` with the same signature.

    query (batch, heads, L, E), key (batch, heads_kv, S, E), value (batch, heads_kv, S, Ev); 3-D
    inputs (heads, L, E) are accepted too. is_causal is aligned top-left (query i sees keys j <= i).
    attn_mask: bool (True = attend) or floating (added to the scores), broadcastable to
    (batch, heads, L, S); a floating mask that requires grad gets its gradient. A row that sees no
    key outputs 0. dropout_p is seeded from torch's default generator of query's device.
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"flashattn_lite: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (3, 4):
            raise ValueError(
                f"flashattn_lite: {name} must have 4 dims (batch, heads, seqlen, head_dim) "
                f"or 3 dims (heads, seqlen, head_dim), got shape {tuple(t.shape)}"
            )
    if not query.dim() == key.dim() == value.dim():
        raise ValueError(
            "flashattn_lite: query, key and value must have the same number of dims, got "
            f"{query.dim()}, {key.dim()}, {value.dim()}"
        )
    if attn_mask is not None:
        if is_causal:
            raise ValueError("flashattn_lite: attn_mask and is_causal=True cannot both be set")
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"flashattn_lite: attn_mask must be a torch.Tensor, got {type(attn_mask).__name__}")
    _check_features(dropout_p, 0.0)
    if query.shape[-3] != key.shape[-3] and not enable_gqa:
        raise ValueError(
            f"flashattn_lite: key has {key.shape[-3]} heads but query has {query.shape[-3]}; "
            "pass enable_gqa=True for grouped-query attention"
        )
    squeeze = query.dim() == 3
    if squeeze:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
    out, _ = _attn(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        _default_scale(query.shape[-1], scale),
        is_causal,
        False,
        (-1, -1),
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        rng_state=rng_state_for(dropout_p, query.device),
    )
    out = out.transpose(1, 2)
    return out.squeeze(0) if squeeze else out
