"""Public API: flash-attn 2 compatible functions and a torch SDPA compatible function.

flash_attn_* : layout (batch, seqlen, heads, head_dim), causal/window aligned bottom-right.
scaled_dot_product_attention : layout (batch, heads, seqlen, head_dim), is_causal top-left.
Both go through ``torch.ops.flashattn_lite.fwd`` (differentiable through its registered autograd).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

Tensor = torch.Tensor


def _not_built(name: str) -> NotImplementedError:
    return NotImplementedError(
        f"flashattn_lite: {name} is not implemented yet (tracked by the features issue); "
        "leave it at its default")


def _check_unbuilt(dropout_p: float, softcap: float, alibi_slopes: Optional[Tensor]) -> None:
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"flashattn_lite: dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p > 0.0:
        raise _not_built("dropout_p > 0")
    if softcap < 0.0:
        raise ValueError(f"flashattn_lite: softcap must be >= 0, got {softcap}")
    if softcap > 0.0:
        raise _not_built("softcap > 0")
    if alibi_slopes is not None:
        raise _not_built("alibi_slopes")


def _window(window_size: tuple[int, int]) -> tuple[int, int]:
    if len(window_size) != 2:
        raise ValueError(f"flashattn_lite: window_size must be a pair (left, right), got {window_size}")
    left, right = int(window_size[0]), int(window_size[1])
    if left < -1 or right < -1:
        raise ValueError(
            f"flashattn_lite: window_size entries must be >= -1 (-1 = unbounded), got {window_size}")
    return left, right


def _attn(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool, bottom_right: bool,
          window: tuple[int, int], deterministic: bool = False) -> tuple[Tensor, Tensor]:
    """(b, s_q, h, d) x (b, s_k, h_kv, d) x (b, s_k, h_kv, d_v) -> out (b, s_q, h, d_v), lse (b, h, s_q)."""
    return torch.ops.flashattn_lite.fwd.default(
        q, k, v, None, None, None, None, None, None, None, -1, -1, float(scale), bool(causal),
        bool(bottom_right), window[0], window[1], 0.0, 0.0, 0, bool(deterministic))


def _default_scale(head_dim: int, softmax_scale: Optional[float]) -> float:
    return float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(head_dim)


def _check_4d(t: Tensor, name: str, layout: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"flashattn_lite: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"flashattn_lite: {name} must have 4 dims {layout}, got shape {tuple(t.shape)}")


def flash_attn_func(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
                    softmax_scale: Optional[float] = None, causal: bool = False,
                    window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                    alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                    return_attn_probs: bool = False
                    ) -> Union[Tensor, tuple[Tensor, Tensor, Optional[Tensor]]]:
    """flash-attn 2's ``flash_attn_func``.

    q: (batch, seqlen_q, heads, head_dim); k, v: (batch, seqlen_k, heads_kv, head_dim), heads a
    multiple of heads_kv (GQA/MQA). Causal and window are aligned bottom-right.
    Returns out (batch, seqlen_q, heads, head_dim), or (out, softmax_lse (batch, heads, seqlen_q)
    fp32, None) with return_attn_probs=True (the probabilities are only defined with dropout).
    """
    _check_4d(q, "q", "(batch, seqlen_q, heads, head_dim)")
    _check_4d(k, "k", "(batch, seqlen_k, heads_kv, head_dim)")
    _check_4d(v, "v", "(batch, seqlen_k, heads_kv, head_dim)")
    _check_unbuilt(dropout_p, softcap, alibi_slopes)
    out, lse = _attn(q, k, v, _default_scale(q.shape[-1], softmax_scale), causal, True,
                     _window(window_size), deterministic)
    if return_attn_probs:
        return out, lse, None
    return out


def flash_attn_qkvpacked_func(qkv: Tensor, dropout_p: float = 0.0,
                              softmax_scale: Optional[float] = None, causal: bool = False,
                              window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                              alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                              return_attn_probs: bool = False
                              ) -> Union[Tensor, tuple[Tensor, Tensor, Optional[Tensor]]]:
    """flash-attn 2's ``flash_attn_qkvpacked_func``: qkv is (batch, seqlen, 3, heads, head_dim)."""
    if not isinstance(qkv, Tensor) or qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError("flashattn_lite: qkv must have shape (batch, seqlen, 3, heads, head_dim), "
                         f"got {tuple(qkv.shape) if isinstance(qkv, Tensor) else type(qkv).__name__}")
    q, k, v = qkv.unbind(2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


def flash_attn_kvpacked_func(q: Tensor, kv: Tensor, dropout_p: float = 0.0,
                             softmax_scale: Optional[float] = None, causal: bool = False,
                             window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                             alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                             return_attn_probs: bool = False
                             ) -> Union[Tensor, tuple[Tensor, Tensor, Optional[Tensor]]]:
    """flash-attn 2's ``flash_attn_kvpacked_func``: kv is (batch, seqlen_k, 2, heads_kv, head_dim)."""
    if not isinstance(kv, Tensor) or kv.dim() != 5 or kv.shape[2] != 2:
        raise ValueError("flashattn_lite: kv must have shape (batch, seqlen_k, 2, heads_kv, head_dim), "
                         f"got {tuple(kv.shape) if isinstance(kv, Tensor) else type(kv).__name__}")
    k, v = kv.unbind(2)
    return flash_attn_func(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` with the same signature.

    query (batch, heads, L, E), key (batch, heads_kv, S, E), value (batch, heads_kv, S, Ev); 3-D
    inputs (heads, L, E) are accepted too. is_causal is aligned top-left (query i sees keys j <= i).
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"flashattn_lite: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (3, 4):
            raise ValueError(f"flashattn_lite: {name} must have 4 dims (batch, heads, seqlen, head_dim) "
                             f"or 3 dims (heads, seqlen, head_dim), got shape {tuple(t.shape)}")
    if not query.dim() == key.dim() == value.dim():
        raise ValueError("flashattn_lite: query, key and value must have the same number of dims, got "
                         f"{query.dim()}, {key.dim()}, {value.dim()}")
    if attn_mask is not None:
        if is_causal:
            raise ValueError("flashattn_lite: attn_mask and is_causal=True cannot both be set")
        raise _not_built("attn_mask")
    _check_unbuilt(dropout_p, 0.0, None)
    if query.shape[-3] != key.shape[-3] and not enable_gqa:
        raise ValueError(f"flashattn_lite: key has {key.shape[-3]} heads but query has {query.shape[-3]}; "
                         "pass enable_gqa=True for grouped-query attention")
    squeeze = query.dim() == 3
    if squeeze:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
    out, _ = _attn(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                   _default_scale(query.shape[-1], scale), is_causal, False, (-1, -1))
    out = out.transpose(1, 2)
    return out.squeeze(0) if squeeze else out
