"""Hugging Face transformers attention backend.

    import flashattn_lite.integrations.transformers as fal_hf
    name = fal_hf.register()                     # "fal_lite"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=name)
    model.set_attn_implementation(name)          # or switch an existing model

The backend is FA2-shaped: its mask function hands the attention the 2D padding mask (or None when
nothing is padded), and padded batches run through ``flash_attn_varlen_func`` on the unpadded
tokens, so no compute is spent on padding. Causal models (decoders, ``generate`` with a KV cache,
left or right padding), encoders (bidirectional, padding masks), GQA, sliding windows and softcap
are supported, for inference and training. The name contains no "flash": transformers treats any
such name as a Hub kernel to download.
"""

from __future__ import annotations

from typing import Any, cast

import torch

from ..interface import flash_attn_func, flash_attn_varlen_func

Tensor = torch.Tensor
NAME = "fal_lite"


def _window(module: Any, kwargs: dict, k_len: int) -> tuple[int, int]:
    sw = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
    if sw is not None and k_len > sw:  # as transformers' flash path: (sw - 1) on each side, causal cuts the right
        return int(sw) - 1, int(sw) - 1
    return -1, -1


def _cu(lengths: Tensor) -> Tensor:
    return torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))


def attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' attention-function signature: query (b, h, s_q, d), key/value (b, h_kv, s_k, d),
    attention_mask the 2D (b, s_k) bool padding mask or None. Returns ((b, s_q, h, d), None)."""
    if kwargs.get("output_attentions", False):
        raise NotImplementedError("flashattn_lite: output_attentions=True needs the probabilities; use 'eager'")
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    b, s_q, s_k = q.shape[0], q.shape[1], k.shape[1]
    window = _window(module, kwargs, s_k)
    softcap = float(kwargs.get("softcap") or 0.0)
    drop = float(dropout) if module.training else 0.0
    if attention_mask is None:
        out = flash_attn_func(
            q, k, v, dropout_p=drop, softmax_scale=scaling, causal=causal, window_size=window, softcap=softcap
        )
        return cast(Tensor, out), None  # a Tensor: no return_attn_probs
    if attention_mask.dim() != 2:
        raise ValueError(
            "flashattn_lite: expected the 2D padding mask from its mask function, got shape "
            f"{tuple(attention_mask.shape)}"
        )
    kmask = attention_mask[:, -s_k:].bool()
    qmask = kmask[:, -s_q:]  # the queries are the last s_q positions
    lens_k, lens_q = kmask.sum(1, dtype=torch.int32), qmask.sum(1, dtype=torch.int32)
    out_packed = cast(
        Tensor,
        flash_attn_varlen_func(
            q[qmask],
            k[kmask],
            v[kmask],
            _cu(lens_q),
            _cu(lens_k),
            int(lens_q.max()),
            int(lens_k.max()),
            dropout_p=drop,
            softmax_scale=scaling,
            causal=causal,
            window_size=window,
            softcap=softcap,
        ),
    )  # a Tensor: no return_attn_probs
    out = out_packed.new_zeros((b, s_q) + tuple(out_packed.shape[1:]))
    out = out.index_put((qmask,), out_packed)  # padding rows stay 0
    return out, None


def register(name: str = NAME) -> str:
    """Registers the attention function and its mask function with transformers under ``name``
    (default "fal_lite"; must not contain "flash") and returns the name."""
    if "flash" in name:
        raise ValueError("flashattn_lite: transformers treats names containing 'flash' as Hub kernels; pick another")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name
