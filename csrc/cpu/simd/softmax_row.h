// softmax_row.h -- the online-softmax row step of online_softmax.h on kN fp32 lanes, as every SIMD
// stage (forward fp32 / bf16, decode) calls it. Scores stay in natural units: exp(s - m) is formed
// as exp2((s - m) log2 e) from the difference, so a large score loses no precision to log2 e.
#pragma once
#include "cpu/simd/common.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

// kN fp32 lanes for online_softmax.h. exp_diff(s, m) = exp(s - m): exp2 of (s - m) log2 e with a
// degree-5 polynomial (VecLane); for a P that is rounded to bf16 (the AVX-512 bf16 forward, P V on
// vdpbf16ps) or feeds an fp16 / bf16 output (fwd.cpp's fp32 panels of fp16 / bf16 inputs) exp2 of
// one FMA, s log2 e - m log2 e, with a degree-3 polynomial (VecLaneBf16P: relative error 1e-4
// against bf16's 2^-9 and fp16's 2^-11; 3 of ~14 vector ops per 16 scores fewer: the bf16
// forward 1.024-1.042x, H8 N2048 D64 and causal N4096 D128, 1-2 threads, in one process, Zen 4,
// 2026-12-02). One lane type per kernel for every tile: a masked tile's row step and a plain
// tile's must give the same P (an all-True mask changes nothing, bit for bit).
template <bool kBf16P>
struct VecLaneT {
  static constexpr int N = kN;
  VF v;
  static VecLaneT load(const float* p) { return {VF::load(p)}; }
  void store(float* p) const { v.store(p); }
  static VecLaneT set1(float x) { return {VF::set1(x)}; }
  static VecLaneT zero() { return {VF::zero()}; }
  float hmax() const { return v.hmax(); }
  float hsum() const { return v.hsum(); }
  friend VecLaneT vmax(VecLaneT a, VecLaneT b) { return {FAL_CPU_NS::vmax(a.v, b.v)}; }
  friend VecLaneT operator+(VecLaneT a, VecLaneT b) { return {a.v + b.v}; }
  friend VecLaneT operator*(VecLaneT a, VecLaneT b) { return {a.v * b.v}; }
  static VecLaneT exp_diff(VecLaneT s, VecLaneT m) {
    if constexpr (kBf16P)
      return {exp2<3>(fma(s.v, VF::set1(kLog2e), m.v * VF::set1(-kLog2e)))};
    else
      return {exp2<5>((s.v - m.v) * VF::set1(kLog2e))};
  }
  static float exp_diff(float a, float b) { return std::exp2((a - b) * kLog2e); }
};
using VecLane = VecLaneT<false>;
using VecLaneBf16P = VecLaneT<true>;

// m, l, acc of one row updated by the scores s[0, n) (n a multiple of kN); s becomes P. See
// online_softmax_step: false when the row has seen no key yet (P = 0).
template <class L = VecLane>
inline bool softmax_row_step(float* s, int n, float& m, float& l, float* acc, int acc_n) {
  return online_softmax_step<L>(s, n, m, l, acc, acc_n);
}

// The step for R rows at once (online_softmax_rows_step): rows lds apart, acc rows acc_ld apart.
template <int R, class L = VecLane>
inline void softmax_rows_step(float* s, int lds, int n, float* m, float* l, float* acc, int acc_ld, int acc_n,
                              bool* seen) {
  online_softmax_rows_step<L, R>(s, lds, n, m, l, acc, acc_ld, acc_n, seen);
}

// The step for kN rows held one per lane (S transposed: s[j] = key j's scores of every row), as
// the multi-row decode computes them (decode_cols.h's decode_cols_block): every reduction over the keys is a vertical
// max or add, none horizontal. m, l: the rows' running max and sum, one per lane; s[0, n) become
// P^T. Per lane the arithmetic of online_softmax_step: a row that has seen no key yet (max -inf)
// gets P = 0 and keeps m = -inf, l = 0 (NaN when one of its scores is NaN). Returns each row's
// accumulator factor exp(m_old - m_new): exactly 1 where the max did not change, the caller
// rescales only the other rows (the comparison is unordered: a NaN factor rescales too).
inline VF softmax_cols_step(VF* s, int n, VF& m, VF& l) {
  const VF neg_inf = VF::set1(-std::numeric_limits<float>::infinity());
  // four partial maxima and sums: short dependency chains (n a multiple of 4)
  VF mp[4] = {m, s[1], s[2], s[3]};
  mp[0] = vmax(mp[0], s[0]);
  for (int j = 4; j < n; j += 4)
    for (int i = 0; i < 4; ++i) mp[i] = vmax(mp[i], s[j + i]);
  const VF mx = vmax(vmax(mp[0], mp[1]), vmax(mp[2], mp[3]));
  const VF mu = select_eq(mx, neg_inf, VF::zero(), mx);  // unseen rows: exp(-inf - 0) = 0
  const VF c = VF::set1(kLog2e);
  VF sp[4] = {VF::zero(), VF::zero(), VF::zero(), VF::zero()};
  for (int j = 0; j < n; j += 4)
    for (int i = 0; i < 4; ++i) {
      s[j + i] = exp2<5>((s[j + i] - mu) * c);
      sp[i] = sp[i] + s[j + i];
    }
  const VF sum = (sp[0] + sp[1]) + (sp[2] + sp[3]);
  const VF alpha = select_eq(mx, neg_inf, VF::set1(1.f), exp2<5>((m - mu) * c));
  l = fma(l, alpha, sum);
  m = mx;
  return alpha;
}

// out[0, n) = acc * inv in T (store_row) and the row's LSE, from the final (m, l) (finish_row).
// nan_value is set when the row's LSE is not NaN and a value is NaN or infinite: only then can the
// NaN pass (cpu_kernels.h) find a tile to redo, and without it the pass's scan of the output is
// skipped. Against scalar conversions and the scan on every call: fwd H8 N2048 D64 bf16
// 1.02-1.03x, fp16 1.07x, fp32 1.02x, causal bf16 N4096 D128 1.02x (1-2 threads, in one process,
// Zen 4, 2026-12-02).
template <typename T>
inline float write_row(const float* acc, int n, float m, float l, T* out, bool& nan_value) {
  const RowResult<float> f = finish_row(m, l);
  const float c = store_row(acc, n, f.inv, out);
  if (c != c && f.lse == f.lse) nan_value = true;
  return f.lse;
}

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
