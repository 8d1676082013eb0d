"""Modules for model code: a drop-in ``torch.nn.MultiheadAttention`` and a rotary/GQA self-attention
block, both on the flashattn_lite kernels."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .interface import flash_attn_func, flash_attn_varlen_func, scaled_dot_product_attention
from .kvcache import apply_rotary

Tensor = torch.Tensor


def _as_allowed_or_bias(mask: Tensor, what: str) -> Tensor:
    """torch.nn.MultiheadAttention's masks (bool: True = NOT allowed; float: added) as SDPA's
    (bool: True = attend; float: added)."""
    if mask.dtype == torch.bool:
        return ~mask
    if not mask.is_floating_point():
        raise TypeError(f"flashattn_lite: {what} must be bool or floating, got {mask.dtype}")
    return mask


def _combine(a: Tensor | None, b: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Both masks in SDPA form, broadcast together (bool & bool, else additive)."""
    if a is None or b is None:
        return a if b is None else b
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b

    def bias(m: Tensor) -> Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, float("-inf"))
        return m.to(dtype)

    return bias(a) + bias(b)


class MultiheadAttention(nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` with the same constructor, parameters and state_dict keys.

    ``need_weights=False`` runs fused on the flashattn_lite kernels (projections, masks merged into
    one broadcast mask, attention without an (L, S) matrix per head). ``need_weights=True`` must
    return the (L, S) weights, so it runs torch's implementation (O(L·S) memory per head, torch's
    speed). Differences from torch: a query row that every mask hides outputs 0 instead of NaN.
    """

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if need_weights:
            return super().forward(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=True,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "flashattn_lite: Need attn_mask if specifying the is_causal hint (as torch.nn.MultiheadAttention)"
            )
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        # (L, N, E) from here on
        tgt_len, bsz, _ = query.shape
        h, dh = self.num_heads, self.head_dim
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q)
        k = F.linear(key, w_k, b_k)
        v = F.linear(value, w_v, b_v)

        mask = None if attn_mask is None else _as_allowed_or_bias(attn_mask, "attn_mask")
        kpm = None if key_padding_mask is None else _as_allowed_or_bias(key_padding_mask, "key_padding_mask")

        def pad_last(m: Tensor | None) -> Tensor | None:  # one more key, visible
            if m is None:
                return None
            return F.pad(m, (0, 1), value=True if m.dtype == torch.bool else 0.0)

        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(1, bsz, -1)])
            v = torch.cat([v, self.bias_v.expand(1, bsz, -1)])
            mask, kpm = pad_last(mask), pad_last(kpm)
        # (N, H, L, Dh)
        q = q.view(tgt_len, bsz, h, dh).permute(1, 2, 0, 3)
        k = k.view(k.shape[0], bsz, h, dh).permute(1, 2, 0, 3)
        v = v.view(v.shape[0], bsz, h, dh).permute(1, 2, 0, 3)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(bsz, h, 1, dh)], dim=2)
            v = torch.cat([v, v.new_zeros(bsz, h, 1, dh)], dim=2)
            mask, kpm = pad_last(mask), pad_last(kpm)
        src_len = k.shape[2]
        if mask is not None and mask.dim() == 3:  # (N * H, L, S)
            mask = mask.view(bsz, h, tgt_len, src_len)
        if kpm is not None:
            kpm = kpm.view(bsz, 1, 1, src_len)
        merged = _combine(mask, kpm, q.dtype)
        causal = bool(is_causal and key_padding_mask is None)
        if causal:
            merged = None  # the hint: attn_mask is the causal mask
        out = scaled_dot_product_attention(
            q, k, v, attn_mask=merged, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, h * dh)
        out = self.out_proj(out)
        if unbatched:
            return out.squeeze(1), None
        return (out.transpose(0, 1) if self.batch_first else out), None


def rotary_tables(
    positions: Tensor, dim: int, theta: float = 10000.0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """cos/sin (n, dim / 2) of rotary embeddings at integer positions (n,)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64) / dim))
    ang = positions.to(torch.float64).unsqueeze(1) * inv_freq.unsqueeze(0)
    return ang.cos().to(dtype), ang.sin().to(dtype)


class SelfAttention(nn.Module):
    """Self-attention block for model code: fused QKV projection, grouped-query heads, rotary
    embeddings, causal / sliding-window attention on the flashattn_lite kernels.

    forward(x (batch, seqlen, embed_dim)) -> (batch, seqlen, embed_dim); or packed sequences
    x (total, embed_dim) with cu_seqlens (batch + 1,) int32 and max_seqlen (varlen, no padding;
    rotary positions restart at every sequence).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        *,
        bias: bool = False,
        causal: bool = True,
        dropout: float = 0.0,
        rotary: bool = True,
        rope_theta: float = 10000.0,
        rotary_interleaved: bool = False,
        window_size: tuple[int, int] = (-1, -1),
        softcap: float = 0.0,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if embed_dim % num_heads:
            raise ValueError(f"flashattn_lite: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if num_heads % num_kv_heads:
            raise ValueError(
                f"flashattn_lite: num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})"
            )
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        if rotary and self.head_dim % 2:
            raise ValueError(f"flashattn_lite: rotary embeddings need an even head_dim, got {self.head_dim}")
        self.causal, self.dropout, self.rotary = causal, dropout, rotary
        self.rope_theta, self.rotary_interleaved = rope_theta, rotary_interleaved
        self.window_size, self.softcap = window_size, softcap
        kw = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(embed_dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=bias, **kw)
        self.out = nn.Linear(num_heads * self.head_dim, embed_dim, bias=bias, **kw)

    def _split(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, hk, d = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = qkv.split([h * d, hk * d, hk * d], dim=-1)
        lead = qkv.shape[:-1]
        return q.view(*lead, h, d), k.view(*lead, hk, d), v.view(*lead, hk, d)

    def _rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        cos, sin = rotary_tables(
            torch.arange(int(positions.max()) + 1, device=q.device) if positions.numel() else positions,
            self.head_dim,
            self.rope_theta,
        )
        return (
            apply_rotary(q, cos, sin, positions, self.rotary_interleaved),
            apply_rotary(k, cos, sin, positions, self.rotary_interleaved),
        )

    def forward(self, x: Tensor, cu_seqlens: Tensor | None = None, max_seqlen: int | None = None) -> Tensor:
        drop = self.dropout if self.training else 0.0
        q, k, v = self._split(self.qkv(x))
        if cu_seqlens is None:
            if x.dim() != 3:
                raise ValueError(f"flashattn_lite: x must be (batch, seqlen, embed_dim), got {tuple(x.shape)}")
            b, s = x.shape[:2]
            if self.rotary:
                pos = torch.arange(s, device=x.device).expand(b, s)
                q, k = self._rotate(q, k, pos)
            out = flash_attn_func(
                q, k, v, dropout_p=drop, causal=self.causal, window_size=self.window_size, softcap=self.softcap
            )
            return self.out(cast(torch.Tensor, out).reshape(b, s, -1))  # a Tensor: no return_attn_probs
        if x.dim() != 2 or max_seqlen is None:
            raise ValueError("flashattn_lite: packed input is x (total, embed_dim) with cu_seqlens and max_seqlen")
        if self.rotary:
            starts = torch.repeat_interleave(cu_seqlens[:-1].long(), (cu_seqlens[1:] - cu_seqlens[:-1]).long())
            pos = (torch.arange(x.shape[0], device=x.device) - starts).unsqueeze(0)
            q, k = self._rotate(q.unsqueeze(0), k.unsqueeze(0), pos)
            q, k = q[0], k[0]
        out = flash_attn_varlen_func(
            q,
            k,
            v,
            cu_seqlens,
            cu_seqlens,
            max_seqlen,
            max_seqlen,
            dropout_p=drop,
            causal=self.causal,
            window_size=self.window_size,
            softcap=self.softcap,
        )
        return self.out(cast(torch.Tensor, out).reshape(x.shape[0], -1))  # a Tensor: no return_attn_probs


__all__ = ["MultiheadAttention", "SelfAttention", "rotary_tables"]
