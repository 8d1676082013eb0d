"""Reference attention, written from the documented semantics (materialises the full score
matrix: for tests and checks only, O(seqlen^2) memory).

``attention_ref`` uses flash-attn's layout (batch, seqlen, heads, head_dim). With
``upcast=True`` it computes in float64; with ``upcast=False`` it computes in the input dtype the
way a naive same-precision implementation would, which the numerical rule uses as its yardstick.
"""

from __future__ import annotations

import math
from typing import cast

import torch

Tensor = torch.Tensor


def visibility_mask(
    s_q: int,
    s_k: int,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    bottom_right: bool = True,
    device: torch.device | None = None,
) -> Tensor:
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


def _matmul(eq: str, a: Tensor, b: Tensor) -> Tensor:
    """einsum; in bf16 / fp16 as torch's matmul computes it (fp32 sums, the result rounded to the
    dtype), through fp32: torch's own bf16 matmul on AMX hardware spread a NaN of one row of `a`
    to its neighbour (2026-12-02, torch 2.13, a Xeon), which is no property of the computation."""
    if a.dtype in (torch.bfloat16, torch.float16):
        return torch.einsum(eq, a.float(), b.float()).to(a.dtype)
    return torch.einsum(eq, a, b)


def transformed_scores(
    q: Tensor,
    k: Tensor,
    *,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    bottom_right: bool = True,
    softcap: float = 0.0,
    alibi_slopes: Tensor | None = None,
    attn_mask: Tensor | None = None,
) -> Tensor:
    """Scores (b, h, s_q, s_k) in q's dtype after every transform, in flash-attn's order:
    scale, softcap (s <- c tanh(s / c)), ALiBi (-slope |i + s_k - s_q - j|), attn_mask (bool:
    False -> -inf; float: added), then the visibility rule (causal / window) -> -inf."""
    b, s_q, h, d = q.shape
    s_k, h_kv = k.shape[1], k.shape[2]
    if h % h_kv:
        raise ValueError(f"heads of q ({h}) must be a multiple of heads of k ({h_kv})")
    k = k.repeat_interleave(h // h_kv, dim=2)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    scores = _matmul("bqhd,bkhd->bhqk", q, k) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(scores.dtype)
        slopes = slopes.view(1, h, 1, 1) if slopes.dim() == 1 else slopes.view(b, h, 1, 1)
        i = torch.arange(s_q, device=q.device).view(-1, 1)
        j = torch.arange(s_k, device=q.device).view(1, -1)
        scores = scores - slopes * (i + s_k - s_q - j).abs().to(scores.dtype)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(scores.dtype)
    vis = visibility_mask(s_q, s_k, causal, window_size, bottom_right, q.device)
    return scores.masked_fill(~vis, float("-inf"))


def attention_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    bottom_right: bool = True,
    upcast: bool = True,
    softcap: float = 0.0,
    alibi_slopes: Tensor | None = None,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    dropout_keep: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention in flash-attn layout. Returns (out (b, s_q, h, d_v) in q's dtype, lse (b, h, s_q) fp32, fp64 for fp64 inputs).

    GQA: head i of q uses kv head i // (h / h_kv). A query row that sees no key outputs 0 and has
    lse = -inf. attn_mask broadcasts to (b, h, s_q, s_k) (SDPA's semantics). Dropout: the kept
    probabilities (dropout_keep, bool (b, h, s_q, s_k)) are scaled by 1 / (1 - dropout_p); the LSE
    is the undropped softmax's.
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.double()
    scores = transformed_scores(
        q,
        k,
        softmax_scale=softmax_scale,
        causal=causal,
        window_size=window_size,
        bottom_right=bottom_right,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        attn_mask=attn_mask,
    )
    v = v.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    seen = ~(scores == float("-inf")).all(-1, keepdim=True)  # NaN rows stay NaN
    lse = torch.logsumexp(scores.float() if not upcast else scores, dim=-1)
    # rows that see no key: probabilities 0, gradients 0 (softmax of all -inf would give NaN)
    probs = torch.softmax(torch.where(seen, scores, torch.zeros_like(scores)), dim=-1)
    probs = torch.where(seen, probs, torch.zeros_like(probs))
    if dropout_keep is not None:
        probs = probs * dropout_keep.to(probs.dtype) / (1.0 - dropout_p)
    v_nan = torch.isnan(v)
    out = _matmul("bhqk,bkhd->bqhd", probs, torch.where(v_nan, torch.zeros_like(v), v))
    # a NaN in v[j] reaches exactly the rows that see key j (the matmul would also spread 0 x NaN
    # to rows for which key j is masked): NaN where a visible key's value is NaN
    if v_nan.any():
        visible = (scores != float("-inf")).to(v.dtype)
        out = torch.where(
            torch.einsum("bhqk,bkhd->bqhd", visible, v_nan.to(v.dtype)) > 0, torch.full_like(out, float("nan")), out
        )
    return out.to(dtype), lse.to(torch.float64 if dtype == torch.float64 else torch.float32)


def varlen_ref(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, **kwargs: object
) -> tuple[Tensor, Tensor]:
    """attention_ref per sequence of packed (total, h, d) inputs. Returns out (total_q, h, d_v)
    (rows outside every sequence are 0) and lse (h, total_q) (-inf there)."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    alibi = cast("Tensor | None", kwargs.pop("alibi_slopes", None))
    out = q.new_zeros(q.shape[:-1] + (v.shape[-1],))
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=lse_dtype)
    for i in range(len(cq) - 1):
        qs, ks = q[cq[i] : cq[i + 1]].unsqueeze(0), k[ck[i] : ck[i + 1]].unsqueeze(0)
        vs = v[ck[i] : ck[i + 1]].unsqueeze(0)
        a = None if alibi is None else (alibi if alibi.dim() == 1 else alibi[i])
        o, o_lse = attention_ref(qs, ks, vs, alibi_slopes=a, **kwargs)  # type: ignore[arg-type]
        out[cq[i] : cq[i + 1]] = o[0]
        lse[:, cq[i] : cq[i + 1]] = o_lse[0]
    return out, lse


def sdpa_ref(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    upcast: bool = True,
    dropout_p: float = 0.0,
    dropout_keep: Tensor | None = None,
) -> Tensor:
    """torch SDPA semantics (layout (b, h, s, d), top-left causal, GQA by head groups; a fully
    masked row gives 0)."""
    out, _ = attention_ref(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        softmax_scale=scale,
        causal=is_causal,
        bottom_right=False,
        upcast=upcast,
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        dropout_keep=dropout_keep,
    )
    return out.transpose(1, 2)
