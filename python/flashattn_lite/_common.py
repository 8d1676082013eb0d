"""Shared pieces of the public functions: argument checks, the call of the ``fwd`` op, the dropout
RNG state, and the attention-probabilities tensor (``S_dmask``) of ``return_attn_probs``."""

from __future__ import annotations

import math

import torch

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
        raise ValueError(f"flashattn_lite: window_size entries must be >= -1 (-1 = unbounded), got {window_size}")
    return left, right


def rng_state_for(dropout_p: float, device: torch.device) -> Tensor | None:
    """[seed, offset] (int64) for the dropout RNG, drawn from the default generator of `device`
    (so torch.manual_seed reproduces a call); None without dropout."""
    if dropout_p == 0.0:
        return None
    return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device=device)


def _attn(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    causal: bool,
    bottom_right: bool,
    window: tuple[int, int],
    deterministic: bool = False,
    *,
    attn_mask: Tensor | None = None,
    alibi_slopes: Tensor | None = None,
    softcap: float = 0.0,
    dropout_p: float = 0.0,
    rng_state: Tensor | None = None,
    cu_seqlens_q: Tensor | None = None,
    cu_seqlens_k: Tensor | None = None,
    max_seqlen_q: int = -1,
    max_seqlen_k: int = -1,
    seqused_k: Tensor | None = None,
    num_splits: int = 0,
    block_table: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(b, s_q, h, d) x (b, s_k, h_kv, d) x (b, s_k, h_kv, d_v) -> out (b, s_q, h, d_v), lse (b, h, s_q);
    packed (total, h, d) inputs with cu_seqlens -> out (total_q, h, d_v), lse (h, total_q)."""
    args = (
        q,
        k,
        v,
        attn_mask,
        alibi_slopes,
        cu_seqlens_q,
        cu_seqlens_k,
        seqused_k,
        block_table,
        rng_state,
        int(max_seqlen_q),
        int(max_seqlen_k),
        float(scale),
        bool(causal),
        bool(bottom_right),
        window[0],  # window_left
        window[1],  # window_right
        float(softcap),
        float(dropout_p),
        int(num_splits),
        bool(deterministic),
    )  # positional, in the schema's order (module.cpp): keywords cost ~3 us per call
    op = torch.ops.flashattn_lite.fwd.default
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or not _plain(q, k, v, attn_mask, alibi_slopes):
        return op(*args)
    # grad disabled (torch.no_grad: decoding): straight to the device kernel -- the autograd layer
    # (_ops.py, in Python) would only redispatch, ~8 us per call
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _plain(*ts: Tensor | None) -> bool:
    """Tensors of the plain Python type (not a subclass such as FakeTensor or Parameter), or None."""
    return all(t is None or type(t) is Tensor for t in ts)


def _attn_probs(q: Tensor, k: Tensor, lse: Tensor, keep: Tensor | None, **score_kwargs: object) -> Tensor:
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


def _attn_probs_varlen(
    q: Tensor,
    k: Tensor,
    lse: Tensor,
    cu_q: Tensor,
    cu_k: Tensor,
    max_q: int,
    max_k: int,
    rng_state: Tensor,
    dropout_p: float,
    alibi_slopes: Tensor | None,
    **score_kwargs: object,
) -> Tensor:
    """S_dmask of the varlen functions: (batch, heads, max_seqlen_q, max_seqlen_k), sequence i's
    probabilities in [:len_q_i, :len_k_i] (negative where dropped), zero beyond."""
    b, h = cu_q.numel() - 1, q.shape[1]
    keep = _keep_pattern(rng_state, b, h, max_q, max_k, dropout_p)
    out = q.new_zeros((b, h, max_q, max_k), dtype=torch.float32)
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for i in range(b):
        nq, nk = cq[i + 1] - cq[i], ck[i + 1] - ck[i]
        slopes = alibi_slopes[i] if alibi_slopes is not None and alibi_slopes.dim() == 2 else alibi_slopes
        out[i, :, :nq, :nk] = _attn_probs(
            q[cq[i] : cq[i + 1]].unsqueeze(0),
            k[ck[i] : ck[i + 1]].unsqueeze(0),
            lse[:, cq[i] : cq[i + 1]].unsqueeze(0),
            keep[i : i + 1, :, :nq, :nk],
            alibi_slopes=slopes,
            **score_kwargs,
        )[0]
    return out


def _default_scale(head_dim: int, softmax_scale: float | None) -> float:
    return float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(head_dim)


def _check_4d(t: Tensor, name: str, layout: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"flashattn_lite: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"flashattn_lite: {name} must have 4 dims {layout}, got shape {tuple(t.shape)}")


def _check_3d(t: Tensor, name: str, layout: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"flashattn_lite: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 3:
        raise ValueError(f"flashattn_lite: {name} must have 3 dims {layout}, got shape {tuple(t.shape)}")
