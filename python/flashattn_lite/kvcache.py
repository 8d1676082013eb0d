"""flash-attn 2's ``flash_attn_with_kvcache`` (inference): decode / chunked prefill against a KV
cache, contiguous or paged, with in-place append and rotary embeddings.

The new keys/values are rotated here and written into the cache in place (O(new tokens): on the
CPU by the ``flashattn_lite::kvcache_append`` op, elsewhere with torch ops); the attention
itself is the ``flashattn_lite::fwd_kvcache`` op, whose kernels read the cache in place (pages
included) and split long caches over threads.
"""

from __future__ import annotations

import math
from typing import overload

import torch

from .errors import flash_attn_errors

Tensor = torch.Tensor


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, interleaved: bool) -> Tensor:
    """Rotary embedding of x (batch, seqlen, heads, d) at positions (batch, seqlen): the first
    rotary_dim = 2 * cos.shape[1] dims rotate, the rest pass through. Non-interleaved (GPT-NeoX)
    pairs dim i with i + rotary_dim / 2; interleaved (GPT-J) pairs 2i with 2i + 1."""
    rd = 2 * cos.shape[1]
    c = cos[positions].unsqueeze(2).float()  # (b, s, 1, rd / 2)
    s = sin[positions].unsqueeze(2).float()
    xr = x[..., :rd].float()
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rot = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = xr[..., : rd // 2], xr[..., rd // 2 :]
        rot = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return torch.cat((rot.to(x.dtype), x[..., rd:]), dim=-1)


@overload
def _int32_vec(t: int | Tensor | None, name: str, b: int, device: torch.device, default: int) -> Tensor: ...
@overload
def _int32_vec(
    t: int | Tensor | None, name: str, b: int, device: torch.device, default: None = None
) -> Tensor | None: ...
def _int32_vec(
    t: int | Tensor | None, name: str, b: int, device: torch.device, default: int | None = None
) -> Tensor | None:
    if t is None:
        return None if default is None else torch.full((b,), default, dtype=torch.int32, device=device)
    if isinstance(t, int):
        return torch.full((b,), t, dtype=torch.int32, device=device)
    if not isinstance(t, Tensor):
        raise TypeError(f"flashattn_lite: {name} must be an int or an int32 tensor, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise TypeError(f"flashattn_lite: {name} must be int32, got {t.dtype}")
    if t.shape != (b,):
        raise ValueError(f"flashattn_lite: {name} must have shape ({b},), got {tuple(t.shape)}")
    return t


def _cache_rows(
    b: int, n_new: int, start: Tensor, block_table: Tensor | None, cache_batch_idx: Tensor | None, page_size: int
) -> tuple[Tensor, Tensor]:
    """(batch index, row index) into k_cache of each new token (b, n_new): contiguous caches index
    (cache batch, position); paged caches (block, position within the page)."""
    pos = start.long().unsqueeze(1) + torch.arange(n_new, device=start.device).unsqueeze(0)  # (b, n)
    if block_table is not None:
        blocks = torch.gather(block_table.long(), 1, pos // page_size)
        return blocks, pos % page_size
    rows = cache_batch_idx.long() if cache_batch_idx is not None else torch.arange(b, device=start.device)
    return rows.unsqueeze(1).expand(b, n_new), pos


@flash_attn_errors
def flash_attn_with_kvcache(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    k: Tensor | None = None,
    v: Tensor | None = None,
    rotary_cos: Tensor | None = None,
    rotary_sin: Tensor | None = None,
    cache_seqlens: int | Tensor | None = None,
    cache_batch_idx: Tensor | None = None,
    cache_leftpad: Tensor | None = None,
    block_table: Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    rotary_interleaved: bool = True,
    alibi_slopes: Tensor | None = None,
    num_splits: int = 0,
    return_softmax_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """flash-attn 2's ``flash_attn_with_kvcache`` (inference only, no autograd).

    q: (batch, seqlen_q, heads, head_dim). k_cache / v_cache: (batch_cache, seqlen_cache, heads_kv,
    head_dim), or paged (num_blocks, page_size, heads_kv, head_dim) with block_table (batch,
    max_blocks) int32 -- any page size. k / v (batch, seqlen_new, heads_kv, head_dim), when given,
    are written into the cache in place at positions cache_seqlens .. cache_seqlens + seqlen_new
    (after rotary, if any). cache_seqlens (int or (batch,) int32; None = the whole cache) are the
    cached lengths before the append; cache_batch_idx (batch,) picks the cache row of each
    sequence; cache_leftpad (batch,) = where each sequence's keys start. rotary_cos / rotary_sin
    (seqlen_ro, rotary_dim / 2), only with k and v: the new k is rotated at the cache indices
    cache_seqlens, cache_seqlens + 1, ...; q at the same indices if causal or windowed, else all
    of q at cache_seqlens (absolute cache indices: cache_leftpad does not shift them, as in
    flash-attn). Attention: q against keys [cache_leftpad, cache_seqlens + seqlen_new), causal
    and ALiBi aligned bottom-right on that range. num_splits: on the decode path (seqlen_q <= 16,
    a SIMD CPU ISA) 1 = no split, n > 1 = the keys of each (batch, head) split into n chunks
    merged by their LSE, 0 = the kernel's heuristic; other shapes never split. Returns out, or
    (out, softmax_lse (batch, heads, seqlen_q)). Bad arguments raise ArgumentError /
    ArgumentTypeError (catchable as RuntimeError, as flash-attn's).
    """
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, Tensor):
            raise TypeError(f"flashattn_lite: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"flashattn_lite: {name} must have 4 dims, got shape {tuple(t.shape)}")
    b, s_q = q.shape[0], q.shape[1]
    paged = block_table is not None
    if paged and (not isinstance(block_table, Tensor) or block_table.dim() != 2):
        raise ValueError("flashattn_lite: block_table must be an int32 tensor (batch, max_blocks)")
    page_size = k_cache.shape[1]
    capacity = block_table.shape[1] * page_size if block_table is not None else k_cache.shape[1]
    seqlens = _int32_vec(cache_seqlens, "cache_seqlens", b, q.device, default=capacity)
    leftpad = _int32_vec(cache_leftpad, "cache_leftpad", b, q.device)
    if cache_batch_idx is not None:
        _int32_vec(cache_batch_idx, "cache_batch_idx", b, q.device)
    if (k is None) != (v is None):
        raise ValueError("flashattn_lite: k and v must be given together (the tokens to append)")
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("flashattn_lite: rotary_cos and rotary_sin must be given together")
    if rotary_cos is not None and k is None:  # flash-attn: "Only applicable if k and v are passed in."
        raise ValueError("flashattn_lite: rotary_cos/rotary_sin need the new k and v to append (k is None)")
    if not isinstance(num_splits, int) or num_splits < 0:
        raise ValueError(f"flashattn_lite: num_splits must be an int >= 0 (0 = heuristic), got {num_splits!r}")
    n_new = 0
    if k is not None and v is not None:
        for name, t, cache in (("k", k, k_cache), ("v", v, v_cache)):
            if not isinstance(t, Tensor) or t.dim() != 4 or t.shape[0] != b or t.shape[2:] != cache.shape[2:]:
                raise ValueError(
                    f"flashattn_lite: {name} must have shape (batch={b}, seqlen_new, "
                    f"{tuple(cache.shape[2:])}), got {tuple(t.shape) if isinstance(t, Tensor) else t}"
                )
            if t.dtype != cache.dtype:
                raise TypeError(
                    f"flashattn_lite: {name} must have the dtype of its cache ({cache.dtype}), got {t.dtype}"
                )
        if v.shape[1] != k.shape[1]:
            raise ValueError(f"flashattn_lite: v must have the seqlen of k ({k.shape[1]}), got {v.shape[1]}")
        n_new = k.shape[1]
    # on the CPU one op (kvcache_append) checks the capacity, the rotary positions and every
    # destination, rotates q and k and appends; elsewhere torch ops do
    cpu_append = (
        k is not None
        and v is not None
        and n_new > 0
        and all(t.device.type == "cpu" for t in (q, k_cache, v_cache, k, v, seqlens))
        and all(t is None or t.device.type == "cpu" for t in (rotary_cos, rotary_sin))
    )
    if n_new > 0 and not cpu_append:
        top = int((seqlens.long() + n_new).max().item()) if b else 0
        if top > capacity:
            where = (
                f"the capacity addressable by block_table (max_num_blocks_per_seq * page_size = {capacity})"
                if paged
                else f"the capacity of k_cache (seqlen_cache = {capacity})"
            )
            raise ValueError(
                f"flashattn_lite: KV cache overflow: max(cache_seqlens) + seqlen_new = {top} exceeds {where}"
            )
    # flash-attn: "The key @k will be rotated by rotary_cos and rotary_sin at indices cache_seqlens,
    # cache_seqlens + 1, etc." -- absolute cache indices, with or without cache_leftpad; q at the
    # same indices when causal or windowed, else every row at cache_seqlens
    windowed = causal or window_size[0] >= 0 or window_size[1] >= 0
    if rotary_cos is not None and rotary_sin is not None:
        if rotary_cos.dim() != 2 or rotary_cos.shape != rotary_sin.shape:
            raise ValueError(
                "flashattn_lite: rotary_cos and rotary_sin must both have shape (seqlen_ro, rotary_dim / 2), "
                f"got {tuple(rotary_cos.shape)} and {tuple(rotary_sin.shape)}"
            )
        if 2 * rotary_cos.shape[1] > q.shape[-1]:
            raise ValueError(
                f"flashattn_lite: rotary_dim ({2 * rotary_cos.shape[1]}) must be <= head_dim ({q.shape[-1]})"
            )
        if not cpu_append:
            steps = torch.arange(max(s_q, n_new), device=q.device)
            q_pos = seqlens.long().unsqueeze(1) + (steps[:s_q] if windowed else torch.zeros_like(steps[:s_q]))
            k_pos = seqlens.long().unsqueeze(1) + steps[:n_new]
            need = int(max(q_pos.max().item() if q_pos.numel() else 0, k_pos.max().item() if k_pos.numel() else 0))
            if need >= rotary_cos.shape[0]:
                raise ValueError(
                    f"flashattn_lite: rotary_cos/rotary_sin have {rotary_cos.shape[0]} positions, "
                    f"position {need} is needed"
                )
            q = apply_rotary(q, rotary_cos, rotary_sin, q_pos, rotary_interleaved)
            if k is not None:
                k = apply_rotary(k, rotary_cos, rotary_sin, k_pos, rotary_interleaved)
    used = seqlens
    if cpu_append and k is not None and v is not None:
        q_rot, used = torch.ops.flashattn_lite.kvcache_append.default(
            k_cache.detach(),
            v_cache.detach(),
            k.detach(),
            v.detach(),
            seqlens,
            cache_batch_idx,
            block_table,
            q.detach(),
            rotary_cos,
            rotary_sin,
            bool(rotary_interleaved),
            bool(windowed),
        )
        if rotary_cos is not None:
            q = q_rot
    elif k is not None and v is not None and n_new > 0:
        rows, pos = _cache_rows(b, n_new, seqlens, block_table, cache_batch_idx, page_size)
        if ((rows < 0) | (rows >= k_cache.shape[0])).any():
            what = "block_table" if paged else "cache_batch_idx"
            raise ValueError(
                f"flashattn_lite: {what} points outside the cache (its first dim has "
                f"{k_cache.shape[0]} entries) where the new tokens go"
            )
        with torch.no_grad():
            k_cache[rows, pos] = k
            v_cache[rows, pos] = v
        used = (seqlens + n_new).to(torch.int32)
    window = (int(window_size[0]), int(window_size[1]))
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    # positional, in the schema's order (module.cpp): keywords cost ~3 us more per call
    out, lse = torch.ops.flashattn_lite.fwd_kvcache.default(
        q.detach(),  # q
        k_cache.detach(),  # k_cache
        v_cache.detach(),  # v_cache
        used,  # cache_seqlens
        cache_batch_idx,
        leftpad,  # cache_leftpad
        block_table,
        alibi_slopes,
        scale,  # softmax_scale
        bool(causal),
        window[0],  # window_left
        window[1],  # window_right
        float(softcap),
        num_splits,
    )
    return (out, lse) if return_softmax_lse else out
