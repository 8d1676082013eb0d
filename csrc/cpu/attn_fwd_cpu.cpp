// attn_fwd_cpu.cpp -- portable FlashAttention-2 forward on the CPU.
//   out[b, i, h, :] = sum_j softmax_j(scale * q[b, i, h, :] . k[b, j, h / g, :]) v[b, j, h / g, :]
// One work item is a tile of kFwdBlockM query rows of one (batch, head). It walks the key
// tiles its rows can see, keeps a running row max m and row sum l, and rescales the fp32
// (fp64 for fp64 inputs) accumulator when the max grows. Extra memory: O(tile * d).
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "cpu/tile_io.h"
#include "flashattn_lite/attn_math.h"
#include "flashattn_lite/online_softmax.h"

namespace fal::cpu {
namespace {

template <typename T>
void fwd_tile(const FwdParams& p, int bi, int hi, int qt, std::vector<typename AccOf<T>::type>& buf) {
  using Acc = typename AccOf<T>::type;
  constexpr int BM = kFwdBlockM, BN = kFwdBlockN;
  const Acc neg_inf = -std::numeric_limits<Acc>::infinity();
  const int d = p.d, dv = p.d_v;
  const int hk = hi / (p.h / p.h_kv);
  const SeqInfo sq = seq_info(p, bi);
  const int i0 = qt * BM, i1 = std::min(i0 + BM, sq.s_q), rows = i1 - i0;
  if (rows <= 0) return;  // a tile past this (varlen) sequence's end

  // scratch: Qs[BM][d], Kt[d][BN], Vs[BN][dv], S[BM][BN], O[BM][dv], m[BM], l[BM]
  Acc* Qs = buf.data();
  Acc* Kt = Qs + BM * d;
  Acc* Vs = Kt + d * BN;
  Acc* S = Vs + BN * dv;
  Acc* O = S + BM * BN;
  Acc* m = O + BM * dv;
  Acc* l = m + BM;

  const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + sq.q_row0 * p.q_row_stride + hi * p.q_head_stride;
  const T* k = kv_head_ptr<T>(p.k, p.k_batch_stride, p.k_head_stride, p, sq, hk);
  const T* v = kv_head_ptr<T>(p.v, p.v_batch_stride, p.v_head_stride, p, sq, hk);
  const KvRows krows = kv_rows(p, sq, bi, p.k_row_stride, p.k_batch_stride);
  const KvRows vrows = kv_rows(p, sq, bi, p.v_row_stride, p.v_batch_stride);
  T* o = static_cast<T*>(p.o) + bi * p.o_batch_stride + sq.q_row0 * p.o_row_stride + hi * p.o_head_stride;
  Acc* lse = static_cast<Acc*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0;
  const ScoreMod mod = make_score_mod(p, bi, hi, sq.s_q, sq.s_k);

  // Q tile, pre-multiplied by the softmax scale.
  load_rows(q + i0 * p.q_row_stride, p.q_row_stride, rows, d, Acc(p.scale), Qs, d);
  std::fill(O, O + rows * dv, Acc(0));
  std::fill(m, m + rows, neg_inf);
  std::fill(l, l + rows, Acc(0));

  const Visibility vis = make_visibility(p, sq.s_q, sq.s_k);
  const KeyRange kr = vis.keys_of_rows(i0, i1);
  for (int j0 = kr.lo; j0 < kr.hi; j0 += BN) {
    const int j1 = std::min(j0 + BN, kr.hi), cols = j1 - j0;
    for (int c = 0; c < cols; ++c) {  // row by row: the rows may live in different pages
      load_rows_transposed(k + krows.at(j0 + c), 0, 1, d, Kt + c, BN);
      load_rows(v + vrows.at(j0 + c), 0, 1, dv, Acc(1), Vs + c * dv, dv);
    }

    // S = (scale * Q) K^T : rows x cols
    for (int r = 0; r < rows; ++r) {
      Acc* s = S + r * BN;
      std::fill(s, s + cols, Acc(0));
      const Acc* qr = Qs + r * d;
      for (int x = 0; x < d; ++x) {
        const Acc qv = qr[x];
        const Acc* kt = Kt + x * BN;
        for (int c = 0; c < cols; ++c) s[c] += qv * kt[c];
      }
    }
    const bool full = vis.tile_fully_visible(i0, i1, j0, j1);
    for (int r = 0; r < rows; ++r) {
      Acc* s = S + r * BN;
      if (mod.any) mod.apply_row(i0 + r, j0, s, cols);
      if (!full) {
        const KeyRange rr = vis.keys_of_row(i0 + r);
        for (int c = 0; c < cols; ++c)
          if (j0 + c < rr.lo || j0 + c >= rr.hi) s[c] = neg_inf;
      }
      bool seen[BN];  // key visible to the row (its score not -inf): only those take part in P V
      for (int c = 0; c < cols; ++c) seen[c] = s[c] != neg_inf;
      Acc* orow = O + r * dv;
      // m, l, O rescaled; s <- P (online_softmax.h); false: the row sees no key yet
      if (!online_softmax_step<ScalarLane<Acc>>(s, cols, m[r], l[r], orow, dv)) continue;
      if (mod.drop.on) mod.drop.apply_row(i0 + r, j0, s, cols);  // P V with the dropped P; l without
      // O += P V over the visible keys: a masked key's value (even NaN) does not reach the row
      for (int c = 0; c < cols; ++c) {
        if (!seen[c]) continue;
        const Acc pc = s[c];
        const Acc* vr = Vs + c * dv;
        for (int x = 0; x < dv; ++x) orow[x] += pc * vr[x];
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    T* orow = o + (i0 + r) * p.o_row_stride;
    const RowResult<Acc> f = finish_row(m[r], l[r]);  // a row that saw no key outputs 0
    for (int x = 0; x < dv; ++x) orow[x] = store_as<T, Acc>(O[r * dv + x] * f.inv);
    lse[i0 + r] = f.lse;
  }
}

}  // namespace

int64_t fwd_num_work_items(const FwdParams& p) { return int64_t(p.b) * p.h * num_tiles(p.s_q, kFwdBlockM); }

namespace {

// Calls f(tag, bi, hi, qt, buf) for the work items [begin, end), with one tile's scratch.
template <typename F>
void for_each_tile(const FwdParams& p, int64_t begin, int64_t end, F&& f) {
  const int nqt = num_tiles(p.s_q, kFwdBlockM);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using Acc = typename AccOf<decltype(tag)>::type;
    constexpr int BM = kFwdBlockM, BN = kFwdBlockN;
    std::vector<Acc> buf(size_t(BM) * p.d + size_t(p.d) * BN + size_t(BN) * p.d_v + BM * BN + size_t(BM) * p.d_v +
                         2 * BM);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t bh = w / nqt;
      f(tag, int(bh / p.h), int(bh % p.h), int(w % nqt), buf);
    }
  });
}

// Whether the tile's output has a NaN in a row whose LSE is finite (a NaN value, not a NaN score).
template <typename T>
bool tile_has_nan_value(const FwdParams& p, int bi, int hi, int qt, bool nan_rows) {
  using Acc = typename AccOf<T>::type;
  const SeqInfo sq = seq_info(p, bi);
  const int i0 = qt * kFwdBlockM, i1 = std::min(i0 + kFwdBlockM, sq.s_q);
  const T* o = static_cast<const T*>(p.o) + bi * p.o_batch_stride + sq.q_row0 * p.o_row_stride + hi * p.o_head_stride;
  const Acc* lse = static_cast<const Acc*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0;
  int nan = 0;
  for (int i = i0; i < i1; ++i) {
    if (lse[i] != lse[i]) {  // a NaN score: the whole row is NaN, as in the reference (nan_rows: maybe not)
      if (nan_rows) return true;
      continue;
    }
    const T* orow = o + int64_t(i) * p.o_row_stride;
    for (int x = 0; x < p.d_v; ++x) {  // no early exit: an OR-reduction the compiler vectorises
      const Acc ox = load_acc<Acc>(orow + x);
      nan |= int(ox != ox);
    }
  }
  return nan != 0;
}

}  // namespace

bool fwd_run(const FwdParams& p, int64_t begin, int64_t end) {
  for_each_tile(p, begin, end,
                [&](auto tag, int bi, int hi, int qt, auto& buf) { fwd_tile<decltype(tag)>(p, bi, hi, qt, buf); });
  return true;
}

void fwd_redo_nan_tiles(const FwdParams& p, int64_t begin, int64_t end, bool nan_rows) {
  // the scan only, as a rule: a tile's scratch (18 KB at d 64) is allocated at the first tile to redo,
  // not per call (with the merge's grain in cpu_ops.cpp: 282 K -> 228 K instructions per short decode
  // call, callgrind, H8 64 keys D64 bf16, 2 splits, 1 thread)
  const int nqt = num_tiles(p.s_q, kFwdBlockM);
  int64_t w = begin;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (; w < end; ++w) {
      const int64_t bh = w / nqt;
      if (tile_has_nan_value<T>(p, int(bh / p.h), int(bh % p.h), int(w % nqt), nan_rows)) break;
    }
  });
  if (w < end)
    for_each_tile(p, w, end, [&](auto tag, int bi, int hi, int qt, auto& buf) {
      using T = decltype(tag);
      if (tile_has_nan_value<T>(p, bi, hi, qt, nan_rows)) fwd_tile<T>(p, bi, hi, qt, buf);
    });
}

bool fwd_combine_run(const FwdParams& p, int64_t begin, int64_t end) {
  bool nan_value = false;
  // lse = log sum_s exp(lse_s); out = sum_s exp(lse_s - lse) * out_s  (SplitMerge, online_softmax.h)
  const int64_t split_stride = int64_t(p.b) * p.h * p.s_q;
  for_each_split_row(p, begin, end, [&](auto tag, int64_t w, int bi, int hi, int i, const SeqInfo& sq) {
    using T = decltype(tag);
    const SplitMerge mg = SplitMerge::of(p.num_splits, [&](int s) { return p.lse_accum[s * split_stride + w]; });
    T* o = static_cast<T*>(p.o) + bi * p.o_batch_stride + hi * p.o_head_stride + (sq.q_row0 + i) * p.o_row_stride;
    // chunks of kChunk values: each split's weight (an exp) once per chunk, not per value (16 rows x
    // D128 x 2 splits spent ~20 us in the exps); the sum per value in split order, as before
    constexpr int kChunk = 64;
    for (int x0 = 0; x0 < p.d_v; x0 += kChunk) {
      const int n = std::min(kChunk, p.d_v - x0);
      float acc[kChunk] = {};
      if (mg.has_mass())
        for (int s = 0; s < p.num_splits; ++s) {
          const float ws = mg.weight(p.lse_accum[s * split_stride + w]);
          const float* src = p.o_accum + (s * split_stride + w) * p.d_v + x0;
          for (int x = 0; x < n; ++x) acc[x] += ws * src[x];
        }
      int bad = 0;  // a value NaN or infinite (an OR of compares: vectorised, unlike a float sum)
      for (int x = 0; x < n; ++x) {
        o[x0 + x] = store_as<T, float>(acc[x]);
        bad |= int(acc[x] - acc[x] != 0.f);
      }
      if (bad && mg.lse == mg.lse) nan_value = true;
    }
    static_cast<float*>(p.lse)[bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0 + i] = mg.lse;
  });
  return nan_value;
}

}  // namespace fal::cpu
