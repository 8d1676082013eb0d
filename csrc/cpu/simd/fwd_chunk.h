// fwd_chunk.h -- the SIMD forward's skeleton (fwd.cpp's panels, fwd_amx.cpp's AMX panels): one
// work item = (batch, query heads [h0, h0 + nh) of one kv head, chunk of Panels::kChunkRows query
// rows; nh = fwd_item_heads, cpu_kernels.h), for each key tile the rows can see: pack K and V once,
// then per head, per group of Panels::kRows rows S = Q K^T, the score mods and visibility mask
// (score_mods.h), the online softmax step (softmax_row.h), dropout, O += P V; at the end
// out = O / l and lse = m + log l (write_row). A panels policy provides:
//   T, kRows, kFusedStep, Lane        input type, rows per group, S kept in registers or not, the
//                                      step's lane type
//   load_q(p, q0, rows, rows_pad, nh)  the chunk's Q rows of nh heads (head j at q0 + j
//                                      p.q_head_stride) as panel rows [j rows_pad, j rows_pad + rows)
//   pack(k, krows, v, vrows, j0, cols)  the key tile's K and V
//   qk(r0, S)                         S (kRows x kBN, scaled) of the group from panel row r0
//   qk_softmax(r0, m, l, o)           S, the step and P of a plain, fully visible tile (kFusedStep)
//   emit_p(r, sr)                     row r's P (fp32, in S) to the layout pv reads
//   pv(S, cols, o)                    O of the group += P V
//   kRedoNanRows                      a row with a NaN score may be wrong (split operands): flag it
//                                      for the NaN pass (cpu_kernels.h NanPass::kRows)
#pragma once
#include "cpu/simd/prefetch.h"
#include "cpu/simd/score_mods.h"
#include "cpu/simd/softmax_row.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

// Per-chunk state besides the panels: S of a row group, O, m, l of the chunk's rows.
struct ChunkState {
  Buf<float> s, o, m, l;
};

// One work item; true when an output row may hold a NaN value (write_row). Head h0 + j's rows are
// panel / state rows [j rows_pad, j rows_pad + rows).
template <class Panels>
bool fwd_chunk(const FwdParams& p, int bi, int h0, int nh, int qc, Panels& pn, ChunkState& w) {
  using T = typename Panels::T;
  constexpr int kRows = Panels::kRows;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int dv = p.d_v, dvp = round_up(dv, kNV * kN);
  const int hk = h0 / (p.h / p.h_kv);
  const SeqInfo sq = seq_info(p, bi);
  const int i0 = qc * Panels::kChunkRows, i1 = std::min(i0 + Panels::kChunkRows, sq.s_q), rows = i1 - i0;
  if (rows <= 0) return false;  // a chunk past this (varlen) sequence's end
  const int rows_pad = round_up(rows, kRows), all_pad = nh * rows_pad;
  ScoreMod mods[kFwdMaxItemHeads];
  for (int j = 0; j < nh; ++j) mods[j] = make_score_mod(p, bi, h0 + j, sq.s_q, sq.s_k);

  const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + sq.q_row0 * p.q_row_stride + h0 * p.q_head_stride;
  const T* k = kv_head_ptr<T>(p.k, p.k_batch_stride, p.k_head_stride, p, sq, hk);
  const T* v = kv_head_ptr<T>(p.v, p.v_batch_stride, p.v_head_stride, p, sq, hk);
  const KvRows krows = kv_rows(p, sq, bi, p.k_row_stride, p.k_batch_stride);
  const KvRows vrows = kv_rows(p, sq, bi, p.v_row_stride, p.v_batch_stride);
  pn.load_q(p, q + i0 * p.q_row_stride, rows, rows_pad, nh);
  w.s.resize(size_t(kRows) * kBN);
  w.o.assign(size_t(all_pad) * dvp, 0.f);
  w.m.assign(all_pad, neg_inf);
  w.l.assign(all_pad, 0.f);

  const Visibility vis = make_visibility(p, sq.s_q, sq.s_k);
  const KeyRange kr = vis.keys_of_rows(i0, i1);
  float* S = w.s.data();
  // The next key tile's K and V lines, prefetched in pieces between the row groups' steps (KeyLines,
  // prefetch.h) with the decode's hint for several rows' next block (isa.h: T1 on a 32 KB L1 and on Intel), so pack()
  // finds them cached. Against the whole slice of a row group at once into L1 (T0), 2 threads, 5
  // rounds (Zen 4, 2026-12-01): few rows over a long cache (chunked prefill: 32-64 query rows,
  // 16384-32768 keys, D128) AVX-512 1.02-1.19x, AVX2 1.1-1.18x; fwd H8 N2048 D64 and causal N4096
  // D128 1.0-1.02x on AVX-512, 1.03-1.2x on AVX2.
  KeyLines next;
  next.setup(k, krows, int64_t(p.d) * int64_t(sizeof(T)), v, vrows, int64_t(p.d_v) * int64_t(sizeof(T)),
             decode_prefetch().rows);
  const int steps = 3 * nh * ((rows + kRows - 1) / kRows);  // the pf() calls of a tile
  for (int j0 = kr.lo; j0 < kr.hi; j0 += kBN) {
    const int cols = std::min(kBN, kr.hi - j0);
    next.finish();
    next.start(j0 + kBN, std::min(j0 + 2 * kBN, kr.hi));
    const int64_t per_step = (next.lines + steps - 1) / steps;
    auto pf = [&] { next.issue(per_step); };
    pn.pack(k, krows, v, vrows, j0, cols);
    for (int hj = 0; hj < nh; ++hj) {
      const ScoreMod& mod = mods[hj];
      for (int r0 = 0; r0 < rows; r0 += kRows) {
        const int g0 = i0 + r0, g1 = std::min(g0 + kRows, i1);
        const KeyRange gr = vis.keys_of_rows(g0, g1);
        if (gr.hi <= j0 || gr.lo >= j0 + cols) continue;  // no row of the group sees this tile
        const int pr0 = hj * rows_pad + r0;               // the group's panel / state rows
        float* m = w.m.data() + pr0;
        float* l = w.l.data() + pr0;
        float* o = w.o.data() + size_t(pr0) * dvp;
        // The plain case (no transform, mask or dropout; every row of the group sees the whole tile):
        // the group's rows through one interleaved softmax step, bit-identical to the row loop below
        // and 2-8 % faster overall (fwd H8 N2048 D64 fp32 / bf16 / fp16, 1 and 2 threads, in one
        // process); the bf16 panels run it on S in registers (qk_softmax: 1.02-1.035x, 1 and 2 threads,
        // Zen 4, 2026-12-02)
        // (full and plain: before S only for panels with a fused step, after it for all)
        auto is_full = [&] { return cols == kBN && vis.tile_fully_visible(g0, g1, j0, j0 + cols); };
        auto is_plain = [&](bool full) { return full && !mod.any && !mod.drop.on && g1 - g0 == kRows; };
        pf();
        bool fused = false;
        if constexpr (Panels::kFusedStep) fused = is_plain(is_full()) && pn.qk_softmax(pr0, m, l, o);
        if (!fused) pn.qk(pr0, S);
        pf();
        const bool full = is_full();
        if (is_plain(full)) {
          if (!fused) {
            bool seen[kRows];
            softmax_rows_step<kRows, typename Panels::Lane>(S, kBN, kBN, m, l, o, dvp, dvp, seen);
            for (int r = 0; r < kRows; ++r) pn.emit_p(r, S + r * kBN);
          }
          pf();
          pn.pv(S, cols, o);
          continue;
        }
        for (int r = 0; r < kRows; ++r) {
          float* sr = S + r * kBN;
          if (g0 + r >= g1) {  // padding row
            fill(sr, sr + kBN, 0.f);
          } else {
            if (mod.any) apply_mods_row(mod, g0 + r, j0, sr, cols);
            if (!full) {
              const KeyRange rk = vis.keys_of_row(g0 + r);
              const int lo = std::max(0, rk.lo - j0), hi_ = std::min(cols, rk.hi - j0);
              for (int c = 0; c < kBN; ++c)
                if (c < lo || c >= hi_) sr[c] = neg_inf;
            }
            const bool seen = softmax_row_step<typename Panels::Lane>(sr, kBN, m[r], l[r], o + size_t(r) * dvp, dvp);
            if (seen && mod.drop.on) dropout_row_vec(mod.drop, g0 + r, j0, sr, cols);  // P V with the dropped P
          }
          pn.emit_p(r, sr);
        }
        pf();
        pn.pv(S, cols, o);
      }
    }
  }

  bool nan_value = false;
  for (int hj = 0; hj < nh; ++hj) {
    const int hi = h0 + hj;
    T* o = static_cast<T*>(p.o) + bi * p.o_batch_stride + sq.q_row0 * p.o_row_stride + hi * p.o_head_stride;
    float* lse = static_cast<float*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0;
    const size_t base = size_t(hj) * rows_pad;
    for (int r = 0; r < rows; ++r) {
      lse[i0 + r] = write_row(w.o.data() + (base + r) * dvp, dv, w.m[base + r], w.l[base + r],
                              o + (i0 + r) * p.o_row_stride, nan_value);
      if constexpr (Panels::kRedoNanRows) nan_value |= lse[i0 + r] != lse[i0 + r];
    }
  }
  return nan_value;
}

// The work items [begin, end) (fwd_chunk_items) through one panels policy.
// Items: (batch, head group of fwd_item_heads heads, chunk), chunks fastest.
template <class Panels>
bool run_chunks(const FwdParams& p, int64_t begin, int64_t end) {
  const int nqc = (p.s_q + Panels::kChunkRows - 1) / Panels::kChunkRows;
  const int nh = fwd_item_heads(p), groups = p.h / nh;
  Panels pn;
  ChunkState w;
  bool nan_value = false;
  for (int64_t it = begin; it < end; ++it) {
    const int64_t bg = it / nqc;
    nan_value |= fwd_chunk(p, int(bg / groups), int(bg % groups) * nh, nh, int(it % nqc), pn, w);
  }
  return nan_value;
}
// Work items of panels with `chunk_rows` rows per chunk (run_chunks' decomposition).
inline int64_t chunk_items(const FwdParams& p, int chunk_rows) {
  return int64_t(p.b) * (p.h / fwd_item_heads(p)) * ((p.s_q + chunk_rows - 1) / chunk_rows);
}

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
