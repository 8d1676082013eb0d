"""Reference attention, written from the documented semantics (materialises the full score
matrix: for tests and checks only, O(seqlen^2) memory).

``attention_ref`` uses flash-attn's layout (batch, seqlen, heads, head_dim). With
``upcast=True`` it computes in float64; with ``upcast=False`` it computes in the input dtype the
way a naive same-precision implementation would, which the numerical rule uses as its yardstick.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

Tensor = torch.Tensor


def visibility_mask(s_q: int, s_k: int, causal: bool = False, window_size: tuple[int, int] = (-1, -1),
                    bottom_right: bool = True, device: Optional[torch.device] = None) -> Tensor:
    """Bool (s_q, s_k): True where query i may attend to key j.

    Query i is aligned with key i + diag (diag = s_k - s_q bottom-right, 0 top-left) and sees
    keys j with i + diag - left <= j <= i + diag + right; causal sets right = 0; -1 = unbounded.
    """
    left, right = window_size
    if causal:
        right = 0
    i = torch.arange(s_q, device=device).unsqueeze(1)
    j = torch.arange(s_k, device=device).unsqueeze(0)
    c = i + (s_k - s_q if bottom_right else 0)
    vis = torch.ones(s_q, s_k, dtype=torch.bool, device=device)
    if left >= 0:
        vis &= j >= c - left
    if right >= 0:
        vis &= j <= c + right
    return vis


def attention_ref(q: Tensor, k: Tensor, v: Tensor, *, softmax_scale: Optional[float] = None,
                  causal: bool = False, window_size: tuple[int, int] = (-1, -1),
                  bottom_right: bool = True, upcast: bool = True) -> tuple[Tensor, Tensor]:
    """Attention in flash-attn layout. Returns (out (b, s_q, h, d_v) in q's dtype, lse (b, h, s_q) fp32, fp64 for fp64 inputs).

    GQA: head i of q uses kv head i // (h / h_kv). A query row that sees no key outputs 0 and has
    lse = -inf.
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    b, s_q, h, d = q.shape
    s_k, h_kv = k.shape[1], k.shape[2]
    if h % h_kv:
        raise ValueError(f"heads of q ({h}) must be a multiple of heads of k ({h_kv})")
    g = h // h_kv
    k = k.repeat_interleave(g, dim=2)
    v = v.repeat_interleave(g, dim=2)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    scores = torch.einsum("bqhd,bkhd->bhqk", q * scale if not upcast else q, k)
    if upcast:
        scores = scores * scale
    vis = visibility_mask(s_q, s_k, causal, window_size, bottom_right, q.device)
    scores = scores.masked_fill(~vis, float("-inf"))
    lse = torch.logsumexp(scores.float() if not upcast else scores, dim=-1)
    probs = torch.softmax(scores, dim=-1)
    probs = torch.where(vis.any(-1, keepdim=True), probs, torch.zeros_like(probs))
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v)
    return out.to(dtype), lse.to(torch.float64 if dtype == torch.float64 else torch.float32)


def sdpa_ref(query: Tensor, key: Tensor, value: Tensor, *, is_causal: bool = False,
             scale: Optional[float] = None, upcast: bool = True) -> Tensor:
    """torch SDPA semantics (layout (b, h, s, d), top-left causal, GQA by head groups)."""
    out, _ = attention_ref(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                           softmax_scale=scale, causal=is_causal, bottom_right=False, upcast=upcast)
    return out.transpose(1, 2)
