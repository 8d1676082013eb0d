"""Public API: flash-attn 2 compatible functions and a torch SDPA compatible function.

flash_attn_* : layout (batch, seqlen, heads, head_dim), causal/window aligned bottom-right.
scaled_dot_product_attention : layout (batch, heads, seqlen, head_dim), is_causal top-left.
Both go through ``torch.ops.flashattn_lite.fwd`` (differentiable through its registered autograd).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from .errors import flash_attn_errors

Tensor = torch.Tensor


def _check_features(dropout_p: float, softcap: float) -> None:
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"flashattn_lite: dropout_p must be in [0, 1), got {dropout_p}")
    if not softcap >= 0.0 or math.isinf(softcap):
        raise ValueError(f"flashattn_lite: softcap must be >= 0 and finite, got {softcap}")


def _window(window_size: tuple[int, int]) -> tuple[int, int]:
    if len(window_size) != 2:
        raise ValueError(f"flashattn_lite: window_size must be a pair (left, right), got {window_size}")
    left, right = int(window_size[0]), int(window_size[1])
    if left < -1 or right < -1:
        raise ValueError(
            f"flashattn_lite: window_size entries must be >= -1 (-1 = unbounded), got {window_size}")
    return left, right


def rng_state_for(dropout_p: float, device: torch.device) -> Optional[Tensor]:
    """[seed, offset] (int64) for the dropout RNG, drawn from the default generator of `device`
    (so torch.manual_seed reproduces a call); None without dropout."""
    if dropout_p == 0.0:
        return None
    return torch.randint(-(2 ** 63), 2 ** 63 - 1, (2,), dtype=torch.int64, device=device)


def _attn(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool, bottom_right: bool,
          window: tuple[int, int], deterministic: bool = False, *, attn_mask: Optional[Tensor] = None,
          alibi_slopes: Optional[Tensor] = None, softcap: float = 0.0, dropout_p: float = 0.0,
          rng_state: Optional[Tensor] = None, cu_seqlens_q: Optional[Tensor] = None,
          cu_seqlens_k: Optional[Tensor] = None, max_seqlen_q: int = -1, max_seqlen_k: int = -1,
          seqused_k: Optional[Tensor] = None, num_splits: int = 0,
          block_table: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """(b, s_q, h, d) x (b, s_k, h_kv, d) x (b, s_k, h_kv, d_v) -> out (b, s_q, h, d_v), lse (b, h, s_q);
    packed (total, h, d) inputs with cu_seqlens -> out (total_q, h, d_v), lse (h, total_q)."""
    return torch.ops.flashattn_lite.fwd.default(
        q, k, v, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table, rng_state,
        int(max_seqlen_q), int(max_seqlen_k), float(scale), bool(causal), bool(bottom_right),
        window[0], window[1], float(softcap), float(dropout_p), int(num_splits), bool(deterministic))


def _attn_probs(q: Tensor, k: Tensor, lse: Tensor, keep: Optional[Tensor], **score_kwargs: object) -> Tensor:
    """flash-attn's S_dmask for return_attn_probs: the normalised softmax probabilities
    (b, h, s_q, s_k) in fp32, negated where dropout drops them (keep: bool (b, h, s_q, s_k));
    O(s^2), for tests and debugging. flash-attn's own S_dmask holds block-wise unnormalised
    probabilities padded to its CUDA tile; ours is exact (README, "Semantics")."""
    from .reference import transformed_scores
    with torch.no_grad():
        s = transformed_scores(q.float(), k.float(), **score_kwargs)  # type: ignore[arg-type]
        probs = torch.exp(s - lse.float().unsqueeze(-1)).nan_to_num(nan=0.0)
        if keep is not None:
            probs = torch.where(keep.to(probs.device), probs, -probs)
    return probs


def _keep_pattern(rng_state: Tensor, b: int, h: int, s_q: int, s_k: int, dropout_p: float) -> Tensor:
    return torch.ops.flashattn_lite.dropout_keep(rng_state, b, h, s_q, s_k, dropout_p)


def _attn_probs_varlen(q: Tensor, k: Tensor, lse: Tensor, cu_q: Tensor, cu_k: Tensor, max_q: int, max_k: int,
                       rng_state: Tensor, dropout_p: float, alibi_slopes: Optional[Tensor],
                       **score_kwargs: object) -> Tensor:
    """S_dmask of the varlen functions: (batch, heads, max_seqlen_q, max_seqlen_k), sequence i's
    probabilities in [:len_q_i, :len_k_i] (negative where dropped), zero beyond."""
    b, h = cu_q.numel() - 1, q.shape[1]
    keep = _keep_pattern(rng_state, b, h, max_q, max_k, dropout_p)
    out = q.new_zeros((b, h, max_q, max_k), dtype=torch.float32)
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for i in range(b):
        nq, nk = cq[i + 1] - cq[i], ck[i + 1] - ck[i]
        slopes = alibi_slopes[i] if alibi_slopes is not None and alibi_slopes.dim() == 2 else alibi_slopes
        out[i, :, :nq, :nk] = _attn_probs(q[cq[i]:cq[i + 1]].unsqueeze(0), k[ck[i]:ck[i + 1]].unsqueeze(0),
                                          lse[:, cq[i]:cq[i + 1]].unsqueeze(0), keep[i:i + 1, :, :nq, :nk],
                                          alibi_slopes=slopes, **score_kwargs)[0]
    return out


def _default_scale(head_dim: int, softmax_scale: Optional[float]) -> float:
    return float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(head_dim)


def _check_4d(t: Tensor, name: str, layout: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"flashattn_lite: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"flashattn_lite: {name} must have 4 dims {layout}, got shape {tuple(t.shape)}")


@flash_attn_errors
def flash_attn_func(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
                    softmax_scale: Optional[float] = None, causal: bool = False,
                    window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                    alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                    return_attn_probs: bool = False
                    ) -> Union[Tensor, tuple[Tensor, Tensor, Optional[Tensor]]]:
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
    out, lse = _attn(q, k, v, scale, causal, True, window, deterministic, alibi_slopes=alibi_slopes,
                     softcap=softcap, dropout_p=dropout_p, rng_state=rng)
    if return_attn_probs:  # as flash-attn: the probabilities only with dropout (O(s^2), for tests)
        probs = None if rng is None else _attn_probs(
            q, k, lse, _keep_pattern(rng, q.shape[0], q.shape[2], q.shape[1], k.shape[1], dropout_p),
            softmax_scale=scale, causal=causal, window_size=window, softcap=softcap, alibi_slopes=alibi_slopes)
        return out, lse, probs
    return out


@flash_attn_errors
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


@flash_attn_errors
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


def _check_3d(t: Tensor, name: str, layout: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"flashattn_lite: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 3:
        raise ValueError(f"flashattn_lite: {name} must have 3 dims {layout}, got shape {tuple(t.shape)}")


@flash_attn_errors
def flash_attn_varlen_func(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                           max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = 0.0,
                           softmax_scale: Optional[float] = None, causal: bool = False,
                           window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                           alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                           return_attn_probs: bool = False, block_table: Optional[Tensor] = None
                           ) -> Union[Tensor, tuple[Tensor, Tensor, Optional[Tensor]]]:
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
            raise ValueError("flashattn_lite: with block_table, k and v are paged: (num_blocks, page_size, heads_kv, "
                             f"head_dim), got k {tuple(k.shape)}, v {tuple(v.shape)}")
        if dropout_p > 0:
            raise ValueError("flashattn_lite: block_table (paged K/V) is inference only: dropout_p must be 0")
        q, k, v = q.detach(), k.detach(), v.detach()
    else:
        _check_3d(k, "k", "(total_k, heads_kv, head_dim)")
        _check_3d(v, "v", "(total_k, heads_kv, head_dim)")
    _check_features(dropout_p, softcap)
    rng = rng_state_for(dropout_p, q.device)
    scale, window = _default_scale(q.shape[-1], softmax_scale), _window(window_size)
    out, lse = _attn(q, k, v, scale, causal, True, window,
                     deterministic, alibi_slopes=alibi_slopes, softcap=softcap, dropout_p=dropout_p,
                     rng_state=rng, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                     max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, block_table=block_table)
    if return_attn_probs:  # as flash-attn: the probabilities only with dropout (O(s^2), for tests)
        probs = None if rng is None else _attn_probs_varlen(
            q, k, lse, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), rng, dropout_p,
            alibi_slopes, softmax_scale=scale, causal=causal, window_size=window, softcap=softcap)
        return out, lse, probs
    return out


@flash_attn_errors
def flash_attn_varlen_qkvpacked_func(qkv: Tensor, cu_seqlens: Tensor, max_seqlen: int, dropout_p: float = 0.0,
                                     softmax_scale: Optional[float] = None, causal: bool = False,
                                     window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                                     alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                                     return_attn_probs: bool = False
                                     ) -> Union[Tensor, tuple[Tensor, Tensor, Optional[Tensor]]]:
    """flash-attn 2's ``flash_attn_varlen_qkvpacked_func``: qkv is (total, 3, heads, head_dim)."""
    if not isinstance(qkv, Tensor) or qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError("flashattn_lite: qkv must have shape (total, 3, heads, head_dim), "
                         f"got {tuple(qkv.shape) if isinstance(qkv, Tensor) else type(qkv).__name__}")
    q, k, v = qkv.unbind(1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p,
                                  softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs)


@flash_attn_errors
def flash_attn_varlen_kvpacked_func(q: Tensor, kv: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                                    max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = 0.0,
                                    softmax_scale: Optional[float] = None, causal: bool = False,
                                    window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                                    alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                                    return_attn_probs: bool = False
                                    ) -> Union[Tensor, tuple[Tensor, Tensor, Optional[Tensor]]]:
    """flash-attn 2's ``flash_attn_varlen_kvpacked_func``: kv is (total_k, 2, heads_kv, head_dim)."""
    if not isinstance(kv, Tensor) or kv.dim() != 4 or kv.shape[1] != 2:
        raise ValueError("flashattn_lite: kv must have shape (total_k, 2, heads_kv, head_dim), "
                         f"got {tuple(kv.shape) if isinstance(kv, Tensor) else type(kv).__name__}")
    k, v = kv.unbind(1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                  softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs)


@flash_attn_errors
def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tensor:
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
            raise ValueError(f"flashattn_lite: {name} must have 4 dims (batch, heads, seqlen, head_dim) "
                             f"or 3 dims (heads, seqlen, head_dim), got shape {tuple(t.shape)}")
    if not query.dim() == key.dim() == value.dim():
        raise ValueError("flashattn_lite: query, key and value must have the same number of dims, got "
                         f"{query.dim()}, {key.dim()}, {value.dim()}")
    if attn_mask is not None:
        if is_causal:
            raise ValueError("flashattn_lite: attn_mask and is_causal=True cannot both be set")
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"flashattn_lite: attn_mask must be a torch.Tensor, got {type(attn_mask).__name__}")
    _check_features(dropout_p, 0.0)
    if query.shape[-3] != key.shape[-3] and not enable_gqa:
        raise ValueError(f"flashattn_lite: key has {key.shape[-3]} heads but query has {query.shape[-3]}; "
                         "pass enable_gqa=True for grouped-query attention")
    squeeze = query.dim() == 3
    if squeeze:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
    out, _ = _attn(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                   _default_scale(query.shape[-1], scale), is_causal, False, (-1, -1),
                   attn_mask=attn_mask, dropout_p=dropout_p,
                   rng_state=rng_state_for(dropout_p, query.device))
    out = out.transpose(1, 2)
    return out.squeeze(0) if squeeze else out
