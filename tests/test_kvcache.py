"""flash_attn_with_kvcache on the CPU, every ISA: contiguous and paged caches (any page size),
in-place append, rotary (both layouts), cache_batch_idx, cache_leftpad, split-KV for long caches."""

from __future__ import annotations

import pytest
import torch

from flashattn_lite import flash_attn_with_kvcache
from flashattn_lite.reference import attention_ref

from conftest import assert_rule, max_err, randn, slow


def rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor, interleaved: bool):
    """Rotation as a complex product in fp64: pairs (a, b) -> (a + ib) * (cos + i sin)."""
    rd = 2 * cos.shape[1]
    xd = x.double()
    if interleaved:
        z = torch.complex(xd[..., 0:rd:2], xd[..., 1:rd:2])
    else:
        z = torch.complex(xd[..., : rd // 2], xd[..., rd // 2 : rd])
    w = torch.complex(cos.double()[pos], sin.double()[pos]).unsqueeze(2)
    r = z * w
    if interleaved:
        rot = torch.stack((r.real, r.imag), -1).flatten(-2)
    else:
        rot = torch.cat((r.real, r.imag), -1)
    return torch.cat((rot, xd[..., rd:]), -1).to(x.dtype)


def make_case(b, s_q, h, h_kv, d, cap, dtype, page_size=None, n_new=0, batch_idx=False, leftpad=False, rotary_dim=0):
    seqlens = torch.randint(0, cap - n_new + 1, (b,), dtype=torch.int32)
    lp = None
    if leftpad:
        lp = (torch.rand(b) * seqlens.float()).to(torch.int32)
    q = randn((b, s_q, h, d), dtype)
    k_new = randn((b, n_new, h_kv, d), dtype) if n_new else None
    v_new = randn((b, n_new, h_kv, d), dtype) if n_new else None
    cache_b = b + 3 if batch_idx else b
    kc, vc = randn((cache_b, cap, h_kv, d), dtype), randn((cache_b, cap, h_kv, d), dtype)
    bidx = torch.randperm(cache_b)[:b].to(torch.int32) if batch_idx else None
    rot = None
    if rotary_dim:
        theta = torch.rand(cap + s_q, rotary_dim // 2) * 6
        rot = (theta.cos(), theta.sin())
    return dict(q=q, kc=kc, vc=vc, k=k_new, v=v_new, seqlens=seqlens, leftpad=lp, bidx=bidx, rot=rot)


def to_paged(kc, vc, page_size, b_rows):
    """Scatter contiguous caches (b, cap, ...) into shuffled pages; returns k_pages, v_pages, block_table."""
    b, cap = kc.shape[:2]
    n_pages = (cap + page_size - 1) // page_size
    total = b * n_pages + 5
    perm = torch.randperm(total)[: b * n_pages].view(b, n_pages).to(torch.int32)
    kp = randn((total, page_size) + tuple(kc.shape[2:]), kc.dtype)
    vp = randn((total, page_size) + tuple(vc.shape[2:]), vc.dtype)
    for i in range(b):
        for pg in range(n_pages):
            lo, hi = pg * page_size, min(cap, (pg + 1) * page_size)
            kp[perm[i, pg], : hi - lo] = kc[b_rows[i], lo:hi]
            vp[perm[i, pg], : hi - lo] = vc[b_rows[i], lo:hi]
    return kp, vp, perm


def expected(c, causal, interleaved, upcast, **kw):
    """Reference: rotate, append to copies of the caches, attend per sequence over [leftpad, used)."""
    q, kc, vc = c["q"], c["kc"].clone(), c["vc"].clone()
    b, s_q = q.shape[:2]
    rows = c["bidx"].long() if c["bidx"] is not None else torch.arange(b)
    seqlens = c["seqlens"].long()
    lp = c["leftpad"].long() if c["leftpad"] is not None else torch.zeros(b, dtype=torch.long)
    k, v = c["k"], c["v"]
    n_new = 0 if k is None else k.shape[1]
    if c["rot"] is not None:
        cos, sin = c["rot"]
        # flash-attn: "The key @k will be rotated by rotary_cos and rotary_sin at indices cache_seqlens,
        # cache_seqlens + 1, etc." -- absolute cache indices, cache_leftpad or not
        off = seqlens
        qpos = off[:, None] + (torch.arange(s_q)[None] if causal else 0 * torch.arange(s_q)[None])
        q = rotary_ref(q, cos, sin, qpos, interleaved)
        if k is not None:
            k = rotary_ref(k, cos, sin, off[:, None] + torch.arange(n_new)[None], interleaved)
    outs, lses = [], []
    for i in range(b):
        if k is not None:
            kc[rows[i], seqlens[i] : seqlens[i] + n_new] = k[i]
            vc[rows[i], seqlens[i] : seqlens[i] + n_new] = v[i]
        lo, hi = int(lp[i]), int(seqlens[i]) + n_new
        o, o_lse = attention_ref(
            q[i : i + 1],
            kc[rows[i] : rows[i] + 1, lo:hi],
            vc[rows[i] : rows[i] + 1, lo:hi],
            causal=causal,
            upcast=upcast,
            **{n: (a[i] if (n == "alibi_slopes" and a is not None and a.dim() == 2) else a) for n, a in kw.items()},
        )
        outs.append(o)
        lses.append(o_lse)
    return torch.cat(outs), torch.cat(lses), kc, vc


def run(c, causal, interleaved, page_size=None, **kw):
    kc, vc = c["kc"].clone(), c["vc"].clone()
    bt = None
    if page_size:
        rows = c["bidx"].long() if c["bidx"] is not None else torch.arange(c["q"].shape[0])
        kc, vc, bt = to_paged(kc, vc, page_size, rows)
    cos, sin = c["rot"] if c["rot"] is not None else (None, None)
    out, lse = flash_attn_with_kvcache(
        c["q"],
        kc,
        vc,
        c["k"],
        c["v"],
        rotary_cos=cos,
        rotary_sin=sin,
        cache_seqlens=c["seqlens"],
        cache_batch_idx=None if page_size else c["bidx"],
        cache_leftpad=c["leftpad"],
        block_table=bt,
        causal=causal,
        rotary_interleaved=interleaved,
        return_softmax_lse=True,
        **kw,
    )
    return out, lse, kc, vc, bt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, slow(torch.float16)])
@pytest.mark.parametrize("s_q,n_new", [slow(1, 0), (1, 1), (4, 4), slow(19, 19), slow(3, 0)])
@pytest.mark.parametrize("causal", [slow(False), True])
@pytest.mark.parametrize(
    "opts", ["plain", "batch_idx", "leftpad", "rotary", slow("rotary_gptj"), slow("rotary_leftpad")]
)
def test_kvcache_contiguous(dtype, s_q, n_new, causal, opts, isa):
    c = make_case(
        3,
        s_q,
        4,
        2,
        40,
        97,
        dtype,
        n_new=n_new,
        batch_idx=opts == "batch_idx",
        leftpad=opts in ("leftpad", "rotary_leftpad"),
        rotary_dim=24 if opts.startswith("rotary") else 0,
    )
    inter = opts == "rotary_gptj"
    if c["rot"] is not None and n_new == 0:
        # flash-attn: rotary_cos "Only applicable if k and v are passed in." (it raises RuntimeError)
        with pytest.raises(RuntimeError, match=r"rotary_cos/rotary_sin need the new k and v"):
            run(c, causal, inter)
        return
    out, lse, kc, vc, _ = run(c, causal, inter)
    ref, ref_lse, kc_ref, vc_ref = expected(c, causal, inter, upcast=True)
    same, _, _, _ = expected(c, causal, inter, upcast=False)
    assert_rule(out, ref, same, factor=3.0 if dtype != torch.float32 else 2.0)
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), fin)
    assert max_err(lse[fin], ref_lse[fin]) < 2e-3
    # the append happened in place, rotated
    tol = 0 if not opts.startswith("rotary") else (1e-6 if dtype == torch.float32 else 1e-2)
    assert max_err(kc, kc_ref) <= tol * max(1.0, kc_ref.abs().max().item())
    assert torch.equal(vc, vc_ref)


@pytest.mark.parametrize("page_size", [slow(1), 3, slow(16), 64, slow(256)])
@pytest.mark.parametrize("s_q,n_new", [(1, 1), slow(5, 0), (20, 20)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kvcache_paged_equals_contiguous(page_size, s_q, n_new, dtype, isa):
    c = make_case(3, s_q, 4, 1, 64, 300, dtype, n_new=n_new, leftpad=page_size == 3, rotary_dim=64 if n_new else 0)
    out_c, lse_c, kc, vc, _ = run(c, True, False)
    out_p, lse_p, kp, vp, bt = run(c, True, False, page_size=page_size)
    assert torch.equal(out_p, out_c)
    assert torch.equal(lse_p, lse_c)
    # the appended rows landed in the right pages
    for i in range(3):
        for j in range(int(c["seqlens"][i]), int(c["seqlens"][i]) + n_new):
            assert torch.equal(kp[bt[i, j // page_size], j % page_size], kc[i, j])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kvcache_long_split(dtype, isa):
    # one query against thousands of keys: the CPU splits the keys over threads and merges by LSE
    c = make_case(1, 1, 8, 2, 128, 5000, dtype, n_new=1)
    c["seqlens"][:] = 4990
    slopes = torch.rand(8) * 0.01
    out, lse, _, _, _ = run(c, False, False, softcap=20.0, alibi_slopes=slopes)
    ref, ref_lse, _, _ = expected(c, False, False, upcast=True, softcap=20.0, alibi_slopes=slopes)
    same, _, _, _ = expected(c, False, False, upcast=False, softcap=20.0, alibi_slopes=slopes)
    assert_rule(out, ref, same, factor=3.0, n_terms=5000)
    assert max_err(lse, ref_lse) < 2e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("h, h_kv, used", [(32, 8, 300), (8, 8, 1100), (4, 1, 20)])
def test_kvcache_unused_cache_rows_change_nothing(dtype, h, h_kv, used, isa):
    # flash_attn_with_kvcache: "cache_seqlens: int, or (batch_size,), dtype torch.int32. The sequence lengths of
    # the KV cache." -- a model preallocates the cache for its longest sequence: rows past cache_seqlens are no
    # input, so the output is the same bit for bit as with a cache of exactly those rows (the decode plans its
    # split-KV from the lengths, not from the cache's rows).
    d = 64
    q = randn((1, 1, h, d), dtype)
    kc, vc = randn((1, 8192, h_kv, d), dtype), randn((1, 8192, h_kv, d), dtype)
    seqlens = torch.tensor([used], dtype=torch.int32)
    big = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens)
    tight = flash_attn_with_kvcache(q, kc[:, :used].clone(), vc[:, :used].clone(), cache_seqlens=seqlens)
    assert torch.equal(big, tight)
    ref, _ = attention_ref(q.double(), kc[:, :used].double(), vc[:, :used].double())
    same, _ = attention_ref(q, kc[:, :used], vc[:, :used], upcast=False)
    assert_rule(big, ref, same, n_terms=used)


def test_kvcache_window_and_int_seqlens(isa):
    c = make_case(2, 6, 2, 2, 32, 50, torch.float32, n_new=6)
    c["seqlens"][:] = 30
    kw = dict(window_size=(10, 0))
    kc, vc = c["kc"].clone(), c["vc"].clone()
    out = flash_attn_with_kvcache(c["q"], kc, vc, c["k"], c["v"], cache_seqlens=30, causal=True, **kw)
    ref, _, _, _ = expected(c, True, False, upcast=True, **kw)
    assert max_err(out, ref) < 1e-5


def test_kvcache_no_grad_and_compile():
    c = make_case(2, 1, 2, 2, 16, 40, torch.float32, n_new=1)
    q = c["q"].requires_grad_(True)
    out = flash_attn_with_kvcache(q, c["kc"].clone(), c["vc"].clone(), c["k"], c["v"], cache_seqlens=c["seqlens"])
    assert not out.requires_grad
    torch._dynamo.reset()
    f = torch.compile(lambda q, kc, vc, s: flash_attn_with_kvcache(q, kc, vc, cache_seqlens=s), fullgraph=True)
    kc = c["kc"].clone()
    assert (
        max_err(
            f(c["q"].detach(), kc, c["vc"], c["seqlens"]),
            flash_attn_with_kvcache(c["q"].detach(), kc, c["vc"], cache_seqlens=c["seqlens"]),
        )
        < 1e-6
    )


def test_opcheck_fwd_kvcache():
    c = make_case(2, 3, 4, 2, 16, 40, torch.float32, leftpad=True)
    kp, vp, bt = to_paged(c["kc"], c["vc"], 7, torch.arange(2))
    for kc, vc, table in ((c["kc"], c["vc"], None), (kp, vp, bt)):
        torch.library.opcheck(
            torch.ops.flashattn_lite.fwd_kvcache.default,
            (c["q"], kc, vc, c["seqlens"], None, c["leftpad"], table, torch.rand(4), 0.25, True, -1, -1, 0.0),
        )


# ---- bad input ---------------------------------------------------------------------------------


def _base():
    return make_case(2, 1, 2, 2, 16, 20, torch.float32, n_new=1)


@pytest.mark.parametrize(
    "mutate,exc,msg",
    [
        (
            lambda c: c.update(seqlens=torch.tensor([20, 3], dtype=torch.int32)),
            ValueError,
            r"KV cache overflow: max\(cache_seqlens\) \+ seqlen_new = 21 exceeds the capacity of k_cache \(seqlen_cache = 20\)",
        ),
        (lambda c: c.update(seqlens=torch.tensor([2, 3])), TypeError, r"cache_seqlens must be int32"),
        (
            lambda c: c.update(seqlens=torch.tensor([2, 3, 4], dtype=torch.int32)),
            ValueError,
            r"cache_seqlens must have shape \(2,\)",
        ),
        (
            lambda c: c.update(bidx=torch.tensor([0, 2], dtype=torch.int32)),
            ValueError,
            r"cache_batch_idx points outside the cache",
        ),
        (lambda c: c.update(k=c["k"].double()), TypeError, r"k must have the dtype of its cache"),
        (lambda c: c.update(k=c["k"][:, :, :1]), ValueError, r"k must have shape \(batch=2, seqlen_new"),
    ],
)
def test_kvcache_bad_input(mutate, exc, msg):
    c = _base()
    mutate(c)
    with pytest.raises(exc, match=msg):
        flash_attn_with_kvcache(
            c["q"], c["kc"], c["vc"], c["k"], c["v"], cache_seqlens=c["seqlens"], cache_batch_idx=c["bidx"]
        )


def test_kvcache_bad_leftpad_and_block_table():
    c = make_case(2, 1, 2, 2, 16, 20, torch.float32)
    with pytest.raises(ValueError, match=r"cache_seqlens\[0\] = 3 must be >= cache_leftpad\[0\] = 5"):
        flash_attn_with_kvcache(
            c["q"],
            c["kc"],
            c["vc"],
            cache_seqlens=torch.tensor([3, 4], dtype=torch.int32),
            cache_leftpad=torch.tensor([5, 0], dtype=torch.int32),
        )
    kp, vp, bt = to_paged(c["kc"], c["vc"], 4, torch.arange(2))
    bad = bt.clone()
    bad[1, 2] = kp.shape[0]
    with pytest.raises(ValueError, match=r"block_table\[1, 2\] = \d+ is outside the cache's blocks"):
        flash_attn_with_kvcache(
            c["q"], kp, vp, cache_seqlens=torch.tensor([20, 20], dtype=torch.int32), block_table=bad
        )
    bad[1, 2] = -1
    with pytest.raises(ValueError, match=r"block_table\[1, 2\] = -1 is outside"):
        flash_attn_with_kvcache(
            c["q"], kp, vp, cache_seqlens=torch.tensor([20, 20], dtype=torch.int32), block_table=bad
        )
    with pytest.raises(ValueError, match=r"block_table points outside the cache"):
        flash_attn_with_kvcache(
            c["q"],
            kp,
            vp,
            randn((2, 1, 2, 16), torch.float32),
            randn((2, 1, 2, 16), torch.float32),
            cache_seqlens=torch.tensor([9, 9], dtype=torch.int32),
            block_table=bad,
        )
    kn, vn = randn((2, 1, 2, 16), torch.float32), randn((2, 1, 2, 16), torch.float32)
    with pytest.raises(ValueError, match=r"rotary_dim \(18\) must be <= head_dim \(16\)"):
        flash_attn_with_kvcache(
            c["q"],
            c["kc"],
            c["vc"],
            kn,
            vn,
            rotary_cos=torch.ones(30, 9),
            rotary_sin=torch.ones(30, 9),
            cache_seqlens=3,
        )
    with pytest.raises(ValueError, match=r"rotary_cos/rotary_sin have 2 positions, position 3 is needed"):
        flash_attn_with_kvcache(
            c["q"], c["kc"], c["vc"], kn, vn, rotary_cos=torch.ones(2, 4), rotary_sin=torch.ones(2, 4), cache_seqlens=3
        )


@pytest.mark.parametrize("page_size", [slow(1), 5, slow(16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_varlen_with_block_table_equals_packed(page_size, dtype, isa):
    from flashattn_lite import flash_attn_varlen_func

    lk = [17, 0, 40]
    cq = torch.tensor([0, 3, 4, 24], dtype=torch.int32)  # query lengths 3, 1, 20
    ck = torch.tensor([0, 17, 17, 57], dtype=torch.int32)
    q = randn((24, 4, 32), dtype)
    k, v = randn((57, 2, 32), dtype), randn((57, 2, 32), dtype)
    ref = flash_attn_varlen_func(q, k, v, cq, ck, 20, 40, causal=True)
    n_pages = [(n + page_size - 1) // page_size for n in lk]
    perm = torch.randperm(sum(n_pages) + 3)
    kp = randn((len(perm), page_size, 2, 32), dtype)
    vp = randn((len(perm), page_size, 2, 32), dtype)
    table = torch.zeros(3, max(n_pages), dtype=torch.int32)
    used = 0
    for i, n in enumerate(lk):
        for pg in range(n_pages[i]):
            blk = int(perm[used])
            used += 1
            table[i, pg] = blk
            lo, hi = pg * page_size, min(n, (pg + 1) * page_size)
            kp[blk, : hi - lo] = k[int(ck[i]) + lo : int(ck[i]) + hi]
            vp[blk, : hi - lo] = v[int(ck[i]) + lo : int(ck[i]) + hi]
    out = flash_attn_varlen_func(q, kp, vp, cq, ck, 20, 40, causal=True, block_table=table)
    assert torch.equal(out, ref)
    bad = table.clone()
    bad[2, 0] = len(perm)
    with pytest.raises(ValueError, match=r"block_table\[2, 0\] = \d+ is outside the cache's blocks"):
        flash_attn_varlen_func(q, kp, vp, cq, ck, 20, 40, block_table=bad)
    with pytest.raises(ValueError, match=r"more than its block_table row holds"):
        flash_attn_varlen_func(q, kp, vp, cq, ck, 20, 40, block_table=table[:, :1] if page_size < 40 else table[:, :0])


@pytest.mark.parametrize("paged", [False, True])
def test_kvcache_append_strided_new_tokens(paged):
    # flash-attn, k: "If not None, we concatenate k with k_cache, starting at the indices specified
    # by cache_seqlens" -- whatever k's strides: a view with a strided head dim and a transposed one
    # land in the cache as their contiguous copies do
    c = make_case(3, 1, 4, 2, 16, 24, torch.float32, n_new=3)
    wide = randn((3, 3, 2, 32), torch.float32)
    k_new = wide[..., ::2]  # head dim stride 2
    v_new = randn((3, 2, 3, 16), torch.float32).transpose(1, 2)  # seqlen and heads swapped in memory
    kwargs = {}
    kc, vc = c["kc"], c["vc"]
    if paged:
        kc, vc, bt = to_paged(kc, vc, 5, torch.arange(3))
        kwargs["block_table"] = bt
    got_k, got_v = kc.clone(), vc.clone()
    out = flash_attn_with_kvcache(c["q"], got_k, got_v, k_new, v_new, cache_seqlens=c["seqlens"], **kwargs)
    want_k, want_v = kc.clone(), vc.clone()
    ref = flash_attn_with_kvcache(
        c["q"], want_k, want_v, k_new.contiguous(), v_new.contiguous(), cache_seqlens=c["seqlens"], **kwargs
    )
    assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
    assert torch.equal(out, ref)
    for i in range(3):  # the rows themselves, at cache_seqlens[i] + t
        for t in range(3):
            pos = int(c["seqlens"][i]) + t
            blk, row = (int(kwargs["block_table"][i, pos // 5]), pos % 5) if paged else (i, pos)
            assert torch.equal(got_k[blk, row], k_new[i, t]) and torch.equal(got_v[blk, row], v_new[i, t])


@pytest.mark.parametrize("where", ["cache_batch_idx", "block_table", "negative", "rotary"])
def test_kvcache_bad_append_leaves_cache_unchanged(where):
    # an append that cannot land (its second sequence's destination is outside the cache) raises
    # before any row is written: the first sequence's rows are not half-appended
    c = make_case(2, 1, 2, 2, 16, 20, torch.float32, n_new=2)
    seqlens = torch.tensor([3, 4], dtype=torch.int32)
    kwargs = {}
    kc, vc = c["kc"], c["vc"]
    if where == "cache_batch_idx":
        kwargs["cache_batch_idx"] = torch.tensor([1, 2], dtype=torch.int32)  # 2: outside 2 cache rows
        msg = r"cache_batch_idx points outside the cache"
    elif where == "block_table":
        kc, vc, bt = to_paged(kc, vc, 4, torch.arange(2))
        bt[1, 1] = kc.shape[0]  # sequence 1's new tokens (positions 4, 5) go to page 1
        kwargs["block_table"] = bt
        msg = r"block_table"
    elif where == "negative":
        seqlens = torch.tensor([3, -1], dtype=torch.int32)
        msg = r"cache_seqlens"
    else:  # sequence 1's new keys sit at positions 4 and 5: a 5-position table lacks the last
        kwargs["rotary_cos"], kwargs["rotary_sin"] = torch.ones(5, 4), torch.zeros(5, 4)
        msg = r"rotary_cos/rotary_sin have 5 positions, position 5 is needed"
    k0, v0 = kc.clone(), vc.clone()
    with pytest.raises(ValueError, match=msg):
        flash_attn_with_kvcache(c["q"], kc, vc, c["k"], c["v"], cache_seqlens=seqlens, **kwargs)
    assert torch.equal(kc, k0) and torch.equal(vc, v0)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("causal,sin_dtype", [(False, torch.bfloat16), (True, torch.bfloat16), (True, torch.float32)])
def test_kvcache_rotary_tables_in_q_dtype_strided(interleaved, causal, sin_dtype):
    # flash-attn: "rotary_cos [, rotary_sin]: (seqlen_ro, rotary_dim / 2)" -- here in q's dtype (as
    # models keep them), with strided q / k: the appended keys are k rotated at cache_seqlens + t
    # (fp64 reference, then one rounding to bf16: within one bf16 step of it), the rows past
    # rotary_dim untouched, and q rotated as "at indices cache_seqlens, cache_seqlens + 1" when causal
    dt = torch.bfloat16
    b, s_q, n, h_kv, d, rd, cap = 2, 2, 3, 2, 16, 10, 30
    seqlens = torch.tensor([4, 11], dtype=torch.int32)
    theta = torch.rand(cap + 4, rd // 2) * 6
    cos, sin = theta.cos().to(dt), theta.sin().to(sin_dtype)  # sin in fp32 too: tables of two dtypes
    q = randn((b, s_q, 4, 2 * d), dt)[..., ::2]
    k = randn((b, h_kv, n, d), dt).transpose(1, 2)
    v = randn((b, n, h_kv, d), dt)
    kc, vc = randn((b, cap, h_kv, d), dt), randn((b, cap, h_kv, d), dt)
    out = flash_attn_with_kvcache(
        q,
        kc,
        vc,
        k,
        v,
        rotary_cos=cos,
        rotary_sin=sin,
        cache_seqlens=seqlens,
        causal=causal,
        rotary_interleaved=interleaved,
    )
    k_pos = seqlens.long()[:, None] + torch.arange(n)[None]
    want_k = rotary_ref(k, cos, sin, k_pos, interleaved)
    for i in range(b):
        got = kc[i, int(seqlens[i]) : int(seqlens[i]) + n]
        assert torch.allclose(got.float(), want_k[i].float(), rtol=2**-7, atol=2**-7)
        assert torch.equal(got[..., rd:], k[i, :, :, rd:])
        assert torch.equal(vc[i, int(seqlens[i]) : int(seqlens[i]) + n], v[i])
    q_pos = seqlens.long()[:, None] + (torch.arange(s_q)[None] if causal else torch.zeros(1, s_q, dtype=torch.long))
    qr = rotary_ref(q, cos, sin, q_pos, interleaved)
    used = seqlens + n
    for i in range(b):  # per sequence: the keys [0, used) of its cache
        keys = slice(0, int(used[i]))
        ref_i, _ = attention_ref(qr[i : i + 1], kc[i : i + 1, keys], vc[i : i + 1, keys], causal=causal)
        same_i, _ = attention_ref(qr[i : i + 1], kc[i : i + 1, keys], vc[i : i + 1, keys], causal=causal, upcast=False)
        assert_rule(out[i : i + 1], ref_i, same_i)
