// bwd_head.h -- the SIMD backward's skeleton (bwd.cpp's vector panels; bwd_amx.cpp's AMX tiles):
//   dV = P^T dO,  dP = dO V^T,  dS = P o (dP - D) with D = rowsum(dO o O) - dlse,
//   dQ = scale dS K,  dK = scale dS^T Q,  P = exp(scale Q K^T - lse) recomputed from the saved LSE.
// One work item = (batch, kv head, split), as in the portable kernel (no atomics): a split of the
// keys owns dK/dV of its keys and its dQ partial of the query heads that share the kv head; a split
// of those query heads (p.split_heads) owns their dQ and its dK/dV partial; unsplit, all of them.
//
// One skeleton, bwd_head, over a panels policy that owns the operand layouts and the five products
// (as the forward's fwd_chunk):
//   for each pass of Panels::kTiles key tiles (kBN keys each): pack their K and V once;
//     for each query head of the group, for each block of Panels::kQB query rows, for each tile it sees:
//       S = Q K^T, dP = dO V^T                          panels.scores   (Panels::kRows rows at a time)
//       P = exp(mul S - lse), dS = P o (dP - D)         p_ds_rows       (transforms, dropout, mask grad)
//       dV += P^T dO,  dK += dS^T Q                     panels.accumulate (LeveledSum blocks; kBN x dp,
//                                                       or dp x kBN where Panels::kTransposedKV)
//       dQacc += dS K                                   panels.dq       (Panels::kRows rows at a time)
//     dK = dk_scale dK, dV rounded once per key tile;
//   dQ = scale dQacc, rounded once.
// A panels type supplies T, kRows, kQB, kTiles, kTransposedKV, score_mul (S times it is scale q.k),
// dk_scale, and load_head / select / pack_keys (into tile slot t) / tile (the slot scores and dq
// use) / scores / accumulate / dq (see bwd.cpp).
// Extra memory per item: dQacc (g x s_q x dp fp32) + D, LSE (g x s_q) + Q and dO of the g heads as
// the panels hold them + O(tile) panels.
#pragma once
#include "cpu/simd/micro_f32.h"
#include "cpu/simd/score_mods.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

// Q and dO are converted / packed once per work item for every query head of the group (rows past
// s_q zero), and a step reads kQB rows from an even row i0 <= the tile's first row (the row pairs
// of the bf16 panels start there): s_q + kQB + 1 rows, even. Per step this saved re-converting the
// block's rows once per key tile (fwd+bwd fp32 / bf16 H8 N2048 D64: see bench/results/cpu-2026-12-01.md).
inline int bwd_rows_pad(int s_q, int kQB) { return round_up(s_q + kQB + 1, 2); }

// dst (kBN x n, rows n apart) = src^T (n x kBN, rows kBN apart), n a multiple of kN: kN x kN
// register transposes (transpose_store)
inline void transpose_cols(const float* src, int n, float* dst) {
  VF t[kN];
  for (int x0 = 0; x0 < n; x0 += kN)
    for (int c0 = 0; c0 < kBN; c0 += kN) {
      for (int i = 0; i < kN; ++i) t[i] = VF::load(src + size_t(x0 + i) * kBN + c0);
      transpose_store(t, dst + size_t(c0) * n + x0, n);
    }
}

// One group of kRows rows of the backward (the panels' Panels::kRows), in place: on entry pr = unscaled-or-scaled
// scores S (times `mul` gives scale * q.k) and dsr = dP; on exit pr = P = exp(mul S - lse) and dsr = dS = P o (dP - D),
// both 0 where a row does not see a key, for padding rows and for rows with no key. With score transforms / dropout
// (mod) the elements go one by one: s' = mod(mul S), P = exp(s' - lse), dS' = P o (dP o Z - D) (Z: dropout factor), the
// mask gradient dmask = dS' (when dmask is given: rows from row0, dm_stride apart, columns from key 0), dS = dS' *
// softcap'(S), and pr = P o Z for dV.
template <int kRows>
inline void p_ds_rows_mod(float* Pr, float* dSr, float mul, int row0, int nrows, int j0, int cols,
                          const Visibility& vis, const float* lse, const float* D, const ScoreMod& mod, float* dmask,
                          int64_t dm_stride) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  float z[kBN];
  for (int r = 0; r < kRows; ++r) {
    float* pr = Pr + r * kBN;
    float* dsr = dSr + r * kBN;
    if (r >= nrows || lse[r] == neg_inf) {
      fill(pr, pr + kBN, 0.f);
      fill(dsr, dsr + kBN, 0.f);
      continue;
    }
    const int i = row0 + r;
    const KeyRange rk = vis.keys_of_row(i);
    const int lo = std::max(0, rk.lo - j0), hi = std::min(cols, rk.hi - j0);
    fill(z, z + kBN, 1.f);
    if (mod.drop.on) dropout_row_vec(mod.drop, i, j0, z, cols);
    float* dmrow = dmask ? dmask + int64_t(i) * dm_stride + j0 : nullptr;
    for (int cc = 0; cc < lo; ++cc) pr[cc] = dsr[cc] = 0.f;
    for (int cc = std::max(hi, 0); cc < kBN; ++cc) pr[cc] = dsr[cc] = 0.f;
    int c0 = lo;
    {  // whole vectors (fp32 / bool masks: fp64 inputs never reach the SIMD kernels)
      const VF mb = VF::set1(mul), lb = VF::set1(lse[r]), Db = VF::set1(D[r]), l2e = VF::set1(kLog2e);
      for (; c0 + kN <= hi; c0 += kN) {
        VF g;
        const VF sv = mod_vec(mod, VF::load(pr + c0) * mb, i, j0 + c0, &g);
        const VF pv = exp2<5>((sv - lb) * l2e);
        const VF zv = VF::load(z + c0);
        const VF ds = pv * (VF::load(dsr + c0) * zv - Db);
        if (dmrow) ds.store(dmrow + c0);
        (ds * g).store(dsr + c0);
        (pv * zv).store(pr + c0);
      }
    }
    for (int cc = c0; cc < hi; ++cc) {
      float g = 1.f;
      float sv = pr[cc] * mul;
      if (mod.any) sv = mod.apply(sv, i, j0 + cc, &g);
      const float pv = std::exp(sv - lse[r]);
      const float ds = pv * (dsr[cc] * z[cc] - D[r]);
      if (dmrow) dmrow[cc] = ds;
      dsr[cc] = ds * g;
      pr[cc] = pv * z[cc];
    }
  }
}

template <int kRows>
inline void p_ds_rows(float* Pr, float* dSr, float mul, int row0, int nrows, int j0, int cols, const Visibility& vis,
                      const float* lse, const float* D, const ScoreMod& mod, float* dmask, int64_t dm_stride) {
  if (mod.any || mod.drop.on || dmask)
    return p_ds_rows_mod<kRows>(Pr, dSr, mul, row0, nrows, j0, cols, vis, lse, D, mod, dmask, dm_stride);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int r = 0; r < kRows; ++r) {
    float* pr = Pr + r * kBN;
    float* dsr = dSr + r * kBN;
    if (r >= nrows || lse[r] == neg_inf) {
      fill(pr, pr + kBN, 0.f);
      fill(dsr, dsr + kBN, 0.f);
      continue;
    }
    const KeyRange rk = vis.keys_of_row(row0 + r);
    const int lo = std::max(0, rk.lo - j0), hi = std::min(cols, rk.hi - j0);
    const VF mb = VF::set1(mul), lb = VF::set1(lse[r]), Db = VF::set1(D[r]), l2e = VF::set1(kLog2e);
    for (int cc = 0; cc < kBN; cc += kN) {
      const VF pv = exp2<5>(fma(VF::load(pr + cc), mb, VF::zero() - lb) * l2e);  // exp(scale q.k - lse)
      pv.store(pr + cc);
      (pv * (VF::load(dsr + cc) - Db)).store(dsr + cc);
    }
    if (lo > 0 || hi < kBN)
      for (int cc = 0; cc < kBN; ++cc)
        if (cc < lo || cc >= hi) pr[cc] = dsr[cc] = 0.f;
  }
}

// D = rowsum(dO o O) - dlse and the LSE for every query row of the heads h0 + [0, gn) (gn x s_q
// each).
template <typename T>
void row_stats(const BwdParams& p, int bi, int h0, int gn, float* dsum, float* lse2) {
  const int dv = p.d_v;
  const SeqInfo sq = seq_info(p, bi);
  Buf<float> row_a(round_up(dv, kN)), row_b(round_up(dv, kN));
  for (int gi = 0; gi < gn; ++gi) {
    const int hi = h0 + gi;
    const T* o = static_cast<const T*>(p.o) + bi * p.o_batch_stride + sq.q_row0 * p.o_row_stride + hi * p.o_head_stride;
    const T* dout =
        static_cast<const T*>(p.dout) + bi * p.do_batch_stride + sq.q_row0 * p.do_row_stride + hi * p.do_head_stride;
    const float* lse = static_cast<const float*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0;
    const float* dlse =
        p.dlse ? static_cast<const float*>(p.dlse) + bi * p.dlse_batch_stride + hi * p.dlse_head_stride + sq.q_row0
               : nullptr;
    for (int i = 0; i < sq.s_q; ++i) {
      convert_row(o + i * p.o_row_stride, dv, 1.f, row_a.data());
      convert_row(dout + i * p.do_row_stride, dv, 1.f, row_b.data());
      dsum[size_t(gi) * sq.s_q + i] = dot(row_a.data(), row_b.data(), dv) - (dlse ? dlse[i] : 0.f);
      lse2[size_t(gi) * sq.s_q + i] = lse[i];
    }
  }
}

// dQ of the heads h0 + [0, gn) = scale * dQacc (gn x s_q x dp fp32), rounded once into the output.
template <typename T>
void write_dq(const BwdParams& p, int bi, int h0, int gn, const float* dq_acc, int dp) {
  const float sc = float(p.scale);
  const SeqInfo sq = seq_info(p, bi);
  for (int gi = 0; gi < gn; ++gi) {
    const int hi = h0 + gi;
    T* dq = static_cast<T*>(p.dq) + bi * p.dq_batch_stride + sq.q_row0 * p.dq_row_stride + hi * p.dq_head_stride;
    for (int i = 0; i < sq.s_q; ++i) {
      const float* src = dq_acc + (size_t(gi) * sq.s_q + i) * dp;
      T* dqr = dq + i * p.dq_row_stride;
      store_row(src, p.d, sc, dqr);
    }
  }
}

// dq_partial[split] rows of the heads sharing kv head hk = the unscaled fp32 dQ sum of this split
// (bwd_combine_run scales and adds the splits).
void write_dq_partial(const BwdParams& p, int bi, int hk, int split, const float* dq_acc, int dp) {
  const int g = p.h / p.h_kv, s_q = seq_info(p, bi).s_q;
  for (int gi = 0; gi < g; ++gi) {
    const int hi = hk * g + gi;
    float* dst = p.dq_partial + ((int64_t(split) * p.b + bi) * p.h + hi) * int64_t(p.s_q) * p.d;
    for (int i = 0; i < s_q; ++i) {
      const float* src = dq_acc + (size_t(gi) * s_q + i) * dp;
      for (int x = 0; x < p.d; ++x) dst[int64_t(i) * p.d + x] = src[x];
    }
  }
}

// The key tiles [t0, t1) of split `split` of ns: equal shares of the work, a tile's being the rows
// that see it (plus one), so that the splits of a causal or windowed item cost alike and one split
// per thread balances (plan.cpp).
inline void split_tiles(const Visibility& vis, int s_q, int s_k, int ns, int split, int& t0, int& t1) {
  const int tiles = (s_k + kBN - 1) / kBN;
  auto work = [&](int t) {
    const KeyRange r = vis.rows_of_keys(t * kBN, std::min(s_k, (t + 1) * kBN), s_q);
    return int64_t(1) + (r.hi - r.lo);
  };
  int64_t total = 0;
  for (int t = 0; t < tiles; ++t) total += work(t);
  auto start = [&](int sp) {  // the first tile whose predecessors' work reaches sp / ns of the total
    if (sp >= ns) return tiles;
    const int64_t goal = (total * sp + ns - 1) / ns;
    int t = 0;
    for (int64_t acc = 0; t < tiles && acc < goal; ++t) acc += work(t);
    return t;
  };
  t0 = start(split);
  t1 = start(split + 1);
}

// The fp32 dK (times dk_scale) and dV rows of keys [jt, jt + cols) of a head split into its
// partial (params.h: split x b x h_kv x s_k rows of d + dv), for bwd_combine_run.
inline void write_kv_partial(const BwdParams& p, int bi, int hk, int split, int jt, int cols, const float* dKs,
                             int64_t k_ld, const float* dVs, int64_t v_ld, float dk_scale) {
  const int64_t w = p.d + p.d_v;
  float* dst = p.dq_partial + (((int64_t(split) * p.b + bi) * p.h_kv + hk) * p.s_k + jt) * w;
  for (int cc = 0; cc < cols; ++cc) {
    float* r = dst + cc * w;
    for (int x = 0; x < p.d; ++x) r[x] = dKs[cc * k_ld + x] * dk_scale;
    for (int x = 0; x < p.d_v; ++x) r[p.d + x] = dVs[cc * v_ld + x];
  }
}

// One work item: (batch bi, kv head hk), split `split` of p.key_splits: key tiles of the split
// (equal work), or with p.split_heads every key tile for the split's share of the query heads.
template <class Panels>
void bwd_head(const BwdParams& p, int bi, int hk, int split) {
  using T = typename Panels::T;
  const int d = p.d, dv = p.d_v, g = p.h / p.h_kv;
  const int dp = round_up(d, kNV * kN), dvp = round_up(dv, kNV * kN);
  const SeqInfo sq = seq_info(p, bi);
  const int s_q = sq.s_q, s_k = sq.s_k;
  const Visibility vis = make_visibility(p, sq.s_q, sq.s_k);

  const int ns = std::max(1, p.key_splits);
  const bool heads_split = p.split_heads && ns > 1;
  int t_begin = 0, t_end = (s_k + kBN - 1) / kBN;
  if (!heads_split) split_tiles(vis, s_q, s_k, ns, split, t_begin, t_end);
  const int j_begin = std::min(s_k, t_begin * kBN), j_end = std::min(s_k, t_end * kBN);
  // an empty key split: its (zeroed) dQ partial stays 0; a head split owns its heads' dQ and
  // writes it (0 where the sequence has no key)
  if (j_begin >= j_end && ns > 1 && !heads_split) return;
  // the query heads of this item: h0 + [0, gn) (plan.cpp: a head split takes g / ns of them)
  const int gn = heads_split ? g / ns : g;
  const int h0 = hk * g + (heads_split ? split * gn : 0);

  constexpr int kRows = Panels::kRows, kQB = Panels::kQB, kTiles = Panels::kTiles;
  Panels pn(p, gn, s_q);
  Buf<float> dq_acc(size_t(gn) * s_q * dp, 0.f), dsum(size_t(gn) * s_q), lse2(size_t(gn) * s_q);
  Buf<LeveledSum> dK, dV;  // per key tile of a pass
  dK.resize(kTiles);
  dV.resize(kTiles);
  for (int t = 0; t < kTiles; ++t) {
    dK[t].resize(size_t(kBN) * dp);
    dV[t].resize(size_t(kBN) * dvp);
  }
  Buf<float> P(size_t(kQB) * kBN), dS(size_t(kQB) * kBN), tmp(size_t(kRows) * dp);
  Buf<float> kt(Panels::kTransposedKV ? size_t(kBN) * dp : 0), vt(Panels::kTransposedKV ? size_t(kBN) * dvp : 0);

  row_stats<T>(p, bi, h0, gn, dsum.data(), lse2.data());

  const T* k = static_cast<const T*>(p.k) + bi * p.k_batch_stride + sq.k_row0 * p.k_row_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + bi * p.v_batch_stride + sq.k_row0 * p.v_row_stride + hk * p.v_head_stride;
  T* dkp = static_cast<T*>(p.dk) + bi * p.dk_batch_stride + sq.k_row0 * p.dk_row_stride + hk * p.dk_head_stride;
  T* dvp_out = static_cast<T*>(p.dv) + bi * p.dv_batch_stride + sq.k_row0 * p.dv_row_stride + hk * p.dv_head_stride;

  for (int gi = 0; gi < gn; ++gi) {
    const int hi = h0 + gi;
    pn.load_head(
        gi, static_cast<const T*>(p.q) + bi * p.q_batch_stride + sq.q_row0 * p.q_row_stride + hi * p.q_head_stride,
        p.q_row_stride,
        static_cast<const T*>(p.dout) + bi * p.do_batch_stride + sq.q_row0 * p.do_row_stride + hi * p.do_head_stride,
        p.do_row_stride, s_q);
  }

  // A pass: up to kTiles key tiles from j0 against every block of query rows that sees one of them --
  // each block's Q, dO and dQ rows serve all the pass's tiles while they are in cache.
  for (int j0 = j_begin; j0 < j_end; j0 += kTiles * kBN) {
    const int nt = std::min(kTiles, (j_end - j0 + kBN - 1) / kBN);
    KeyRange qt[kTiles];
    for (int t = 0; t < nt; ++t) {
      const int jt = j0 + t * kBN, cols = std::min(kBN, s_k - jt);
      pn.pack_keys(t, k, p.k_row_stride, v, p.v_row_stride, jt, cols);
      dK[t].clear();
      dV[t].clear();
      qt[t] = vis.rows_of_keys(jt, jt + cols, s_q);
    }
    const KeyRange qr = vis.rows_of_keys(j0, std::min(s_k, j0 + nt * kBN), s_q);

    for (int gi = 0; gi < gn; ++gi) {
      const int hi = h0 + gi;
      const float* Dg = dsum.data() + size_t(gi) * s_q;
      const float* L2 = lse2.data() + size_t(gi) * s_q;
      float* dqg = dq_acc.data() + size_t(gi) * s_q * dp;
      const ScoreMod mod = make_score_mod(p, bi, hi, s_q, s_k);
      float* dmask =
          p.dmask ? static_cast<float*>(p.dmask) + bi * p.dmask_batch_stride + hi * p.dmask_head_stride : nullptr;
      for (int i0 = qr.lo & ~1; i0 < qr.hi; i0 += kQB) {  // (a row before qr.lo sees no key: P = dS = 0)
        pn.select(gi, i0);
        for (int t = 0; t < nt; ++t) {
          // rows of the block that see tile t: [i0, i0 + nr), those before qt[t].lo with P = dS = 0
          if (i0 + kQB <= qt[t].lo || i0 >= qt[t].hi) continue;
          const int jt = j0 + t * kBN, cols = std::min(kBN, s_k - jt), nr = std::min(kQB, qt[t].hi - i0);
          pn.tile(t);
          for (int r0 = 0; r0 < kQB; r0 += kRows) {
            float* Pr = P.data() + size_t(r0) * kBN;
            float* dSr = dS.data() + size_t(r0) * kBN;
            if (r0 >= nr) {
              fill(Pr, Pr + kRows * kBN, 0.f);
              fill(dSr, dSr + kRows * kBN, 0.f);
              continue;
            }
            pn.scores(r0, Pr, dSr);
            p_ds_rows<kRows>(Pr, dSr, pn.score_mul, i0 + r0, nr - r0, jt, cols, vis, L2 + i0 + r0, Dg + i0 + r0, mod,
                             dmask, p.dmask_row_stride);
          }
          pn.accumulate(nr, P.data(), dS.data(), dV[t].block(), dK[t].block());
          dV[t].step();
          dK[t].step();
          for (int r0 = 0; r0 < nr; r0 += kRows) {
            if (r0 + kRows <= nr) {
              pn.dq(dS.data(), r0, cols, dqg + size_t(i0 + r0) * dp);
            } else {  // last partial group: accumulate into a padded scratch block
              fill(tmp.begin(), tmp.end(), 0.f);
              pn.dq(dS.data(), r0, cols, tmp.data());
              for (int r = 0; r < nr - r0; ++r)
                for (int x = 0; x < dp; ++x) dqg[size_t(i0 + r0 + r) * dp + x] += tmp[size_t(r) * dp + x];
            }
          }
        }
      }
    }
    for (int t = 0; t < nt; ++t) {
      const int jt = j0 + t * kBN, cols = std::min(kBN, s_k - jt);
      const float* dKs = dK[t].flush();
      const float* dVs = dV[t].flush();
      if constexpr (Panels::kTransposedKV) {  // dK^T (dp x kBN), dV^T (dvp x kBN): transposed first
        transpose_cols(dKs, dp, kt.data());
        transpose_cols(dVs, dvp, vt.data());
        if (heads_split) {
          write_kv_partial(p, bi, hk, split, jt, cols, kt.data(), dp, vt.data(), dvp, pn.dk_scale);
          continue;
        }
        for (int cc = 0; cc < cols; ++cc) {
          store_row(kt.data() + size_t(cc) * dp, d, pn.dk_scale, dkp + (jt + cc) * p.dk_row_stride);
          store_row(vt.data() + size_t(cc) * dvp, dv, 1.f, dvp_out + (jt + cc) * p.dv_row_stride);
        }
      } else if (heads_split) {
        write_kv_partial(p, bi, hk, split, jt, cols, dKs, dp, dVs, dvp, pn.dk_scale);
      } else {
        for (int cc = 0; cc < cols; ++cc) {
          store_row(dKs + size_t(cc) * dp, d, pn.dk_scale, dkp + (jt + cc) * p.dk_row_stride);
          store_row(dVs + size_t(cc) * dvp, dv, 1.f, dvp_out + (jt + cc) * p.dv_row_stride);
        }
      }
    }
  }
  if (ns > 1 && !heads_split)
    write_dq_partial(p, bi, hk, split, dq_acc.data(), dp);
  else
    write_dq<T>(p, bi, h0, gn, dq_acc.data(), dp);
}

// Work items [begin, end) of bwd_items (batch, kv head, split) with one panels type.
template <class Panels>
void bwd_items_loop(const BwdParams& p, int64_t begin, int64_t end) {
  const int ns = std::max(1, p.key_splits);
  for (int64_t it = begin; it < end; ++it) {
    const int64_t bh = it / ns;
    bwd_head<Panels>(p, int(bh / p.h_kv), int(bh % p.h_kv), int(it % ns));
  }
}

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
