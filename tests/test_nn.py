"""flashattn_lite.nn: MultiheadAttention as a drop-in for torch's (same state_dict, same outputs and
gradients), and the rotary/GQA SelfAttention block against a plain torch implementation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import flashattn_lite
from flashattn_lite.nn import MultiheadAttention, SelfAttention, rotary_tables

from conftest import max_err, randn, slow


def _pair(**kw):
    ref = torch.nn.MultiheadAttention(**kw)
    ours = MultiheadAttention(**kw)
    ours.load_state_dict(ref.state_dict())
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    return ref, ours


CONFIGS = [
    dict(embed_dim=32, num_heads=4),
    dict(embed_dim=32, num_heads=4, batch_first=True),
    dict(embed_dim=24, num_heads=3, kdim=16, vdim=20, batch_first=True),
    dict(embed_dim=32, num_heads=2, bias=False),
    dict(embed_dim=32, num_heads=4, add_bias_kv=True),
    dict(embed_dim=32, num_heads=4, add_zero_attn=True, batch_first=True),
]


def _inputs(cfg, L=7, S=9, N=3, dtype=torch.float32):
    bf = cfg.get("batch_first", False)
    shape = (lambda n, e: (N, n, e)) if bf else (lambda n, e: (n, N, e))
    q = randn(shape(L, cfg["embed_dim"]), dtype)
    k = randn(shape(S, cfg.get("kdim") or cfg["embed_dim"]), dtype)
    v = randn(shape(S, cfg.get("vdim") or cfg["embed_dim"]), dtype)
    return q, k, v


MASKS = ["none", slow("bool_attn"), slow("float_attn"), slow("3d_attn"), slow("kpm"), slow("kpm_float"), "both"]


def _masks(kind, L, S, N, H):
    am = kpm = None
    if kind in ("bool_attn", "both"):
        am = torch.rand(L, S) < 0.3
        am[:, 0] = False  # keep every row alive (torch gives NaN for fully masked rows, we give 0)
    if kind == "float_attn":
        am = torch.randn(L, S)
    if kind == "3d_attn":
        am = torch.rand(N * H, L, S) < 0.3
        am[..., 0] = False
    if kind in ("kpm", "both"):
        kpm = torch.zeros(N, S, dtype=torch.bool)
        kpm[0, -3:] = True
        kpm[2, 1:4] = True
    if kind == "kpm_float":
        kpm = torch.randn(N, S)
    return am, kpm


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("mask", MASKS)
def test_mha_matches_torch(cfg, mask):
    ref, ours = _pair(**cfg)
    q, k, v = _inputs(cfg)
    L, S, N = 7, 9, 3
    am, kpm = _masks(mask, L, S, N, cfg["num_heads"])
    if cfg.get("kdim") is None and mask != "none":
        pass
    outs = []
    for mod in (ref, ours):
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        out, w = mod(qq, kk, vv, key_padding_mask=kpm, attn_mask=am, need_weights=False)
        assert w is None
        out.backward(torch.ones_like(out))
        outs.append((out, qq.grad, kk.grad, vv.grad, [p.grad.clone() for p in mod.parameters()]))
        mod.zero_grad()
    (o1, *g1, p1), (o2, *g2, p2) = outs
    assert max_err(o1, o2) < 1e-5
    for a, b in zip(g1, g2):
        assert max_err(a, b) < 1e-4
    for a, b in zip(p1, p2):
        assert max_err(a, b) < 1e-4


def test_mha_need_weights_and_causal_hint():
    ref, ours = _pair(embed_dim=32, num_heads=4, batch_first=True)
    q, k, v = _inputs(dict(embed_dim=32, batch_first=True), L=8, S=8)
    o1, w1 = ref(q, k, v, need_weights=True)
    o2, w2 = ours(q, k, v, need_weights=True)
    assert torch.equal(o1, o2) and torch.equal(w1, w2)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(8)
    o1, _ = ref(q, q, q, attn_mask=causal, is_causal=True, need_weights=False)
    o2, _ = ours(q, q, q, attn_mask=causal, is_causal=True, need_weights=False)
    assert max_err(o1, o2) < 1e-5
    with pytest.raises(RuntimeError, match="Need attn_mask if specifying the is_causal hint"):
        ours(q, q, q, is_causal=True, need_weights=False)


def test_mha_unbatched_and_dropout_train_mode():
    ref, ours = _pair(embed_dim=16, num_heads=2, dropout=0.5)
    x = randn((5, 16), torch.float32)
    ref.eval(), ours.eval()
    assert max_err(ref(x, x, x, need_weights=False)[0], ours(x, x, x, need_weights=False)[0]) < 1e-5
    ours.train()
    torch.manual_seed(1)
    a = ours(x, x, x, need_weights=False)[0]
    torch.manual_seed(1)
    b = ours(x, x, x, need_weights=False)[0]
    assert torch.equal(a, b)
    assert max_err(a, ours.eval()(x, x, x, need_weights=False)[0]) > 1e-3


def test_mha_inside_transformer_encoder_layer():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    ours = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    ours.self_attn = MultiheadAttention(32, 4, batch_first=True)
    ours.load_state_dict(layer.state_dict())
    x = randn((2, 10, 32), torch.float32)
    kpm = torch.zeros(2, 10, dtype=torch.bool)
    kpm[1, 7:] = True
    layer.train(), ours.train()  # no fast path: both run their attention modules
    assert max_err(layer(x, src_key_padding_mask=kpm), ours(x, src_key_padding_mask=kpm)) < 1e-5


def _self_attn_ref(m: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    b, s, _ = x.shape
    q, k, v = m._split(m.qkv(x))
    cos, sin = rotary_tables(torch.arange(s), m.head_dim, m.rope_theta)

    # rotate as complex numbers (non-interleaved: dims i and i + d / 2 form a pair)
    def rot(t):
        half = m.head_dim // 2
        z = torch.complex(t[..., :half].double(), t[..., half:].double())
        z = z * torch.complex(cos.double(), sin.double()).view(1, s, 1, half)
        return torch.cat([z.real, z.imag], -1).to(t.dtype)

    q, k = rot(q), rot(k)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=m.causal, enable_gqa=True
    )
    return m.out(out.transpose(1, 2).reshape(b, s, -1))


def test_self_attention_matches_plain_torch_and_varlen():
    torch.manual_seed(0)
    m = SelfAttention(64, 8, num_kv_heads=2)
    x = randn((2, 33, 64), torch.float32, requires_grad=True)
    out = m(x)
    ref = _self_attn_ref(m, x)
    assert max_err(out, ref) < 1e-5
    g1 = torch.autograd.grad(out.sum(), [x] + list(m.parameters()))
    g2 = torch.autograd.grad(ref.sum(), [x] + list(m.parameters()))
    for a, b in zip(g1, g2):
        assert max_err(a, b) < 1e-4
    # packed sequences: the same as running each sequence alone
    lens = [5, 17, 1]
    cu = torch.tensor([0, 5, 22, 23], dtype=torch.int32)
    xp = randn((23, 64), torch.float32)
    packed = m(xp, cu_seqlens=cu, max_seqlen=17)
    for i in range(len(lens)):
        one = m(xp[int(cu[i]) : int(cu[i + 1])].unsqueeze(0))[0]
        assert max_err(packed[int(cu[i]) : int(cu[i + 1])], one) < 1e-5


def test_self_attention_bad_config():
    with pytest.raises(ValueError, match=r"num_heads \(6\) must be a multiple of num_kv_heads \(4\)"):
        SelfAttention(48, 6, num_kv_heads=4)
    assert isinstance(flashattn_lite.nn.SelfAttention(16, 2), torch.nn.Module)
