// online_softmax.h -- the online softmax of FlashAttention, one home for every kernel: the row
// step (FA2's softmax_rescale_o), the row epilogue and the split-KV merge.
//
//   per block of scores s of a row:  m_new = max(m, max s);  acc *= exp(m - m_new);
//                                    P = exp(s - m_new);     l = l exp(m - m_new) + sum P
//   at the end:                      out = acc / l,  lse = m + log l
//   across splits s of the keys:     lse = log sum_s exp(lse_s),  out = sum_s exp(lse_s - lse) out_s
//
// The step is written once over a "lane" type L: a scalar (ScalarLane, the portable kernels) or a
// SIMD vector (csrc/cpu/simd/softmax_row.h). Epilogue and merge are __host__ __device__ scalars.
// The CUDA kernels still carry their own copies (csrc/cuda/attn_fwd_tc.cuh, attn_simt.cuh): they
// were verified on a GPU as they are, and move to these helpers with the next GPU-verified variant.
#pragma once
#include "flashattn_lite/isa_ns.h"
#include <cmath>
#include <limits>
#include "flashattn_lite/attn_math.h"

namespace fal {
FAL_ISA_NS_BEGIN

// A row's result from its final (m, l): out = acc * inv. A row that saw no key (l = 0) outputs 0
// with lse = -inf; a row whose scores held a NaN (l NaN) stays NaN.
template <typename E>
struct RowResult {
  E inv;
  E lse;
};
template <typename E>
FAL_HD RowResult<E> finish_row(E m, E l) {
  if (!row_has_mass(l)) return {E(0), -std::numeric_limits<E>::infinity()};
  return {E(1) / l, m + std::log(l)};
}

// The split-KV merge of one row: weights exp(lse_s - lse) of the splits' normalised partial outputs.
// lse_of(s) gives split s's LSE (-inf for a split that saw no key, NaN for a NaN score).
struct SplitMerge {
  float lse;  // the row's LSE; -inf when no split saw a key, NaN when any split is NaN
  template <typename F>
  FAL_HD static SplitMerge of(int n_splits, F&& lse_of) {
    float mx = -std::numeric_limits<float>::infinity();
    bool nan = false;  // a NaN in any split's scores makes the row NaN
    for (int s = 0; s < n_splits; ++s) {
      const float ls = lse_of(s);
      nan |= ls != ls;
      mx = ls > mx ? ls : mx;
    }
    if (nan) return {std::numeric_limits<float>::quiet_NaN()};
    if (mx == -std::numeric_limits<float>::infinity()) return {mx};
    float sum = 0.f;
    for (int s = 0; s < n_splits; ++s) sum += std::exp(lse_of(s) - mx);
    return {mx + std::log(sum)};
  }
  // false only when no split saw a key (output 0); a NaN row still merges (its output is NaN)
  FAL_HD bool has_mass() const { return lse != -std::numeric_limits<float>::infinity(); }
  FAL_HD float weight(float lse_s) const { return std::exp(lse_s - lse); }
};

// A scalar lane for the row step (N = 1): exact exp in the accumulator type (fp32, fp64).
template <typename E>
struct ScalarLane {
  static constexpr int N = 1;
  E v;
  static ScalarLane load(const E* p) { return {*p}; }
  void store(E* p) const { *p = v; }
  static ScalarLane set1(E x) { return {x}; }
  static ScalarLane zero() { return {E(0)}; }
  E hmax() const { return v; }
  E hsum() const { return v; }
  friend ScalarLane vmax(ScalarLane a, ScalarLane b) { return {b.v > a.v ? b.v : a.v}; }
  friend ScalarLane operator+(ScalarLane a, ScalarLane b) { return {a.v + b.v}; }
  friend ScalarLane operator*(ScalarLane a, ScalarLane b) { return {a.v * b.v}; }
  static ScalarLane exp_diff(ScalarLane s, ScalarLane m) { return {std::exp(s.v - m.v)}; }  // exp(s - m)
  static E exp_diff(E a, E b) { return std::exp(a - b); }
};

// The online-softmax step of one row over a block of scores s[0, n) (n a multiple of L::N; masked
// entries -inf), in place:
//   m_new = max(m, max_c s[c]);  when m moved: acc[0, acc_n) *= exp(m - m_new), l likewise;
//   s[c] <- P = exp(s[c] - m_new);  l += sum_c P.
// Returns false when the row has seen no key yet (m stays -inf, l 0, P = 0) -- unless a score was
// NaN, which sets m = l = NaN (the row's output and LSE become NaN). Dropout, if any, applies to P
// afterwards (l sums the undropped P).
template <class L, typename E>
inline bool online_softmax_step(E* s, int n, E& m, E& l, E* acc, int acc_n) {
  L mv = L::set1(m);
  for (int c = 0; c < n; c += L::N) mv = vmax(mv, L::load(s + c));
  const E mx = mv.hmax();
  if (mx == -std::numeric_limits<E>::infinity()) {
    for (int c = 0; c < n; ++c) {
      if (s[c] != s[c]) m = l = std::numeric_limits<E>::quiet_NaN();
      s[c] = E(0);
    }
    return false;
  }
  const L mb = L::set1(mx);
  L sum = L::zero();
  for (int c = 0; c < n; c += L::N) {
    const L p = L::exp_diff(L::load(s + c), mb);
    p.store(s + c);
    sum = sum + p;
  }
  if (mx != m) {  // acc *= exp(m_old - m_new); exp(-inf) = 0 on the row's first visible block
    const E alpha = L::exp_diff(m, mx);
    const L ab = L::set1(alpha);
    for (int x = 0; x < acc_n; x += L::N) (L::load(acc + x) * ab).store(acc + x);
    l *= alpha;
    m = mx;
  }
  l += sum.hsum();
  return true;
}

// The end of R rows' step, given each row's new max mx and its sum of P: where the max moved,
// acc *= exp(m - m_new) and l likewise; then l += the row's sum (online_softmax_step's last lines;
// online_softmax_rows_step writes the same lines out).
template <class L, int R, typename E>
inline void online_softmax_rows_finish(const E* mx, const L* sum, E* m, E* l, E* acc, int acc_ld, int acc_n) {
  for (int r = 0; r < R; ++r) {
    if (mx[r] != m[r]) {
      const E alpha = L::exp_diff(m[r], mx[r]);
      const L ab = L::set1(alpha);
      for (int x = 0; x < acc_n; x += L::N) (L::load(acc + r * acc_ld + x) * ab).store(acc + r * acc_ld + x);
      l[r] *= alpha;
      m[r] = mx[r];
    }
    l[r] += sum[r].hsum();
  }
}

// online_softmax_step for R rows at once (score rows lds apart, acc rows acc_ld apart), the same
// arithmetic row by row with the phases interleaved across the rows -- every row's max, then every
// row's exponentials, then the rescales -- so the rows' dependency chains (horizontal max, exp
// polynomial, horizontal sum) overlap instead of following each other. A row that has seen no
// key yet sends the whole group through online_softmax_step. seen[r]: its return value.
template <class L, int R, typename E>
inline void online_softmax_rows_step(E* s, int lds, int n, E* m, E* l, E* acc, int acc_ld, int acc_n, bool* seen) {
  E mx[R];
  bool empty = false;
  for (int r = 0; r < R; ++r) {
    L mv = L::set1(m[r]);
    for (int c = 0; c < n; c += L::N) mv = vmax(mv, L::load(s + r * lds + c));
    mx[r] = mv.hmax();
    empty |= mx[r] == -std::numeric_limits<E>::infinity();
  }
  if (empty) {
    for (int r = 0; r < R; ++r) seen[r] = online_softmax_step<L>(s + r * lds, n, m[r], l[r], acc + r * acc_ld, acc_n);
    return;
  }
  L sum[R];
  for (int r = 0; r < R; ++r) {
    const L mb = L::set1(mx[r]);
    sum[r] = L::zero();
    for (int c = 0; c < n; c += L::N) {
      const L p = L::exp_diff(L::load(s + r * lds + c), mb);
      p.store(s + r * lds + c);
      sum[r] = sum[r] + p;
    }
  }
  // online_softmax_rows_finish's lines, written out: through the helper (even always inlined) the
  // AVX2 fp32 / bf16 forward issued 1.5 % more instructions (callgrind, 2026-12-02)
  for (int r = 0; r < R; ++r) {
    if (mx[r] != m[r]) {
      const E alpha = L::exp_diff(m[r], mx[r]);
      const L ab = L::set1(alpha);
      for (int x = 0; x < acc_n; x += L::N) (L::load(acc + r * acc_ld + x) * ab).store(acc + r * acc_ld + x);
      l[r] *= alpha;
      m[r] = mx[r];
    }
    l[r] += sum[r].hsum();
    seen[r] = true;
  }
}

// online_softmax_rows_step on a block held in registers: s[r][v], R rows of NV lane vectors (the
// whole block), become P -- the same arithmetic in the same order, without S going through memory.
// Returns false, having changed nothing, when a row's max is -inf (no key seen yet, or every score
// -inf): the caller then stores s and runs online_softmax_rows_step, which handles such rows.
template <class L, int R, int NV, typename E>
inline bool online_softmax_tile_step(L (&s)[R][NV], E* m, E* l, E* acc, int acc_ld, int acc_n) {
  E mx[R];
  bool empty = false;
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    L mv = L::set1(m[r]);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) mv = vmax(mv, s[r][v]);
    mx[r] = mv.hmax();
    empty |= mx[r] == -std::numeric_limits<E>::infinity();
  }
  if (empty) return false;
  L sum[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const L mb = L::set1(mx[r]);
    sum[r] = L::zero();
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      s[r][v] = L::exp_diff(s[r][v], mb);
      sum[r] = sum[r] + s[r][v];
    }
  }
  online_softmax_rows_finish<L, R>(mx, sum, m, l, acc, acc_ld, acc_n);
  return true;
}

FAL_ISA_NS_END
}  // namespace fal
