"""Train a small character-level transformer on the CPU with flashattn_lite, and the same model with
torch's scaled_dot_product_attention: same seed, same batches. Prints the time per step and the
speedup, checks that the two loss curves agree, and saves both curves to a plot.

    python examples/train_char_transformer.py [--steps 300] [--out examples/char_loss.png]

The text is Python's own standard-library source (always there, no download).
"""

from __future__ import annotations

import argparse
import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import flashattn_lite as fal
from flashattn_lite.kvcache import apply_rotary
from flashattn_lite.nn import rotary_tables

AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def fal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return fal.flash_attn_func(q, k, v, causal=True)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    )
    return out.transpose(1, 2)


def corpus() -> str:
    import argparse as ap
    import collections  # noqa: E401
    import functools
    import json
    import pathlib

    return "".join(inspect.getsource(m) for m in (collections, functools, json.decoder, pathlib, ap))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, attn: AttnFn) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * self.hd, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.attn = attn

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(
            [self.heads * self.hd, self.kv_heads * self.hd, self.kv_heads * self.hd], -1
        )
        q = apply_rotary(q.view(b, s, self.heads, self.hd), cos, sin, pos, False)
        k = apply_rotary(k.view(b, s, self.kv_heads, self.hd), cos, sin, pos, False)
        v = v.view(b, s, self.kv_heads, self.hd)
        x = x + self.proj(self.attn(q, k, v).reshape(b, s, -1))
        return x + self.mlp(self.ln2(x))


class CharModel(nn.Module):
    def __init__(self, vocab: int, dim: int, layers: int, heads: int, kv_heads: int, ctx: int, attn: AttnFn) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, kv_heads, attn) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        cos, sin = rotary_tables(torch.arange(ctx), dim // heads)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, s = idx.shape
        pos = torch.arange(s).expand(b, s)
        x = self.emb(idx)
        for blk in self.blocks:
            x = blk(x, self.cos, self.sin, pos)
        return self.head(self.ln(x))


def train(attn: AttnFn, data: torch.Tensor, vocab: int, args: argparse.Namespace) -> tuple[list[float], float]:
    torch.manual_seed(0)
    model = CharModel(vocab, args.dim, args.layers, args.heads, args.kv_heads, args.ctx, attn)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(1)
    losses, t_total = [], 0.0
    for step in range(args.steps):
        starts = torch.randint(0, len(data) - args.ctx - 1, (args.batch,), generator=gen)
        x = torch.stack([data[s : s + args.ctx] for s in starts])
        y = torch.stack([data[s + 1 : s + 1 + args.ctx] for s in starts])
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= 3:  # warm-up excluded
            t_total += time.perf_counter() - t0
        losses.append(loss.item())
    return losses, t_total / max(1, args.steps - 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("char_loss.png"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    text = corpus()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    print(
        f"corpus: {len(text)} chars, vocab {len(chars)}; model dim {args.dim}, {args.layers} layers, "
        f"{args.heads} heads ({args.kv_heads} kv), context {args.ctx}, batch {args.batch}, {args.steps} steps"
    )
    runs = {}
    for name, fn in (("flashattn_lite", fal_attention), ("torch SDPA", sdpa_attention)):
        losses, per_step = train(fn, data, len(chars), args)
        runs[name] = (losses, per_step)
        print(f"{name:15s} final loss {sum(losses[-10:]) / 10:.4f}  {per_step * 1e3:.1f} ms/step")
    (la, ta), (lb, tb) = runs["flashattn_lite"], runs["torch SDPA"]
    gap = max(abs(a - b) for a, b in zip(la, lb))
    print(f"speedup (time per training step): {tb / ta:.2f}x; max |loss difference| over the run: {gap:.4f}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, (losses, per_step) in runs.items():
            ax.plot(losses, label=f"{name} ({per_step * 1e3:.0f} ms/step)", alpha=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("char-level transformer, CPU")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"plot: {args.out}")
    except ImportError:
        print("matplotlib not installed: no plot")
    if not (gap < 0.05 and math.isfinite(la[-1])):
        raise SystemExit(f"loss curves disagree (max gap {gap:.4f})")


if __name__ == "__main__":
    main()
