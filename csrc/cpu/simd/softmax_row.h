// softmax_row.h -- the online-softmax row step of online_softmax.h on kN fp32 lanes, as every SIMD
// stage (forward fp32 / bf16, decode) calls it. Scores stay in natural units: exp(s - m) is formed
// as exp2((s - m) log2 e) from the difference, so a large score loses no precision to log2 e.
#pragma once
#include "cpu/simd/common.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

struct VecLane {
  static constexpr int N = kN;
  VF v;
  static VecLane load(const float* p) { return {VF::load(p)}; }
  void store(float* p) const { v.store(p); }
  static VecLane set1(float x) { return {VF::set1(x)}; }
  static VecLane zero() { return {VF::zero()}; }
  float hmax() const { return v.hmax(); }
  float hsum() const { return v.hsum(); }
  friend VecLane vmax(VecLane a, VecLane b) { return {FAL_CPU_NS::vmax(a.v, b.v)}; }
  friend VecLane operator+(VecLane a, VecLane b) { return {a.v + b.v}; }
  friend VecLane operator*(VecLane a, VecLane b) { return {a.v * b.v}; }
  static VecLane exp_diff(VecLane s, VecLane m) { return {exp2<5>((s.v - m.v) * VF::set1(kLog2e))}; }
  static float exp_diff(float a, float b) { return std::exp2((a - b) * kLog2e); }
};

// m, l, acc of one row updated by the scores s[0, n) (n a multiple of kN); s becomes P. See
// online_softmax_step: false when the row has seen no key yet (P = 0).
inline bool softmax_row_step(float* s, int n, float& m, float& l, float* acc, int acc_n) {
  return online_softmax_step<VecLane>(s, n, m, l, acc, acc_n);
}

// The step for R rows at once (online_softmax_rows_step): rows lds apart, acc rows acc_ld apart.
template <int R>
inline void softmax_rows_step(float* s, int lds, int n, float* m, float* l, float* acc, int acc_ld, int acc_n,
                              bool* seen) {
  online_softmax_rows_step<VecLane, R>(s, lds, n, m, l, acc, acc_ld, acc_n, seen);
}

// out[0, n) = acc * inv in T and the row's LSE, from the final (m, l) (finish_row).
template <typename T>
inline float write_row(const float* acc, int n, float m, float l, T* out) {
  const RowResult<float> f = finish_row(m, l);
  for (int x = 0; x < n; ++x) out[x] = store_as<T, float>(acc[x] * f.inv);
  return f.lse;
}

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
