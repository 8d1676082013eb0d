// micro_f32.h -- the fp32 register-blocked microkernels: S = Q K^T and O += P V of the forward and
// the backward's A^T B products (dV, dK), with the tile shape of common.h (kRM rows x kNV vectors).
#pragma once
#include "cpu/simd/common.h"

// The product loops (x in micro_qk, c in micro_pv, r in micro_tn_block) unrolled by 2 on AVX2: a
// kRM x kNV = 6 x 2 tile is 12 FMAs per iteration, and the loop's own instructions (pointer steps,
// compare and branch) came to 16 % of the forward's. Unrolled (Zen 3, 2026-12-04): fwd fp32 H8
// N2048 D64 issues 5 % fewer instructions (callgrind, 1281 -> 1217 M); the microkernels alone
// (bench/micro_f32.cpp, binaries alternating) ran at 81-89 % of the FMA probe against 76-88 % on a
// busy host, the same 90-94 % on a quiet one; in one process, calls alternating, fwd D64 fp32 /
// fp16 / bf16 on 1-2 threads 0.97-1.12x (13 of 16 pairs ahead), causal bf16 D128 0.97-1.01x,
// fwd+bwd fp32 / bf16 0.95-1.20x (6 of 7 ahead). AVX-512 (24 FMAs per iteration) stays rolled: on a
// Zen 4 (2026-12-04, bench/micro_f32.cpp built with and without -DFAL_MICRO_UNROLL=..., binaries
// alternating, 3 rounds) qk + pv ran at 94-96 % of the FMA probe rolled, 96-98 % unrolled -- at most
// 1-2 % of the products' time, within the host's noise.
#if defined(FAL_MICRO_UNROLL)  // set by a measurement build (bench/micro_f32.cpp)
#elif defined(FAL_SIMD_AVX2)
#define FAL_MICRO_UNROLL _Pragma("GCC unroll 2")
#else
#define FAL_MICRO_UNROLL
#endif

namespace fal::cpu::FAL_CPU_NS {
namespace {

// S[r][c] = sum_x Q[r][x] * Kt[x][c]  for r < kRM, c < kBN (Q rows ldq apart)
inline void micro_qk(const float* q, int d, const float* kt, float* s, int ldq) {
  for (int kc = 0; kc < kBN; kc += kNV * kN) {
    VF acc[kRM][kNV];
    for (int r = 0; r < kRM; ++r)
      for (int v = 0; v < kNV; ++v) acc[r][v] = VF::zero();
    FAL_MICRO_UNROLL
    for (int x = 0; x < d; ++x) {
      VF kv[kNV];
      for (int v = 0; v < kNV; ++v) kv[v] = VF::load(kt + x * kBN + kc + v * kN);
      for (int r = 0; r < kRM; ++r) {
        const VF qb = VF::set1(q[r * ldq + x]);
        for (int v = 0; v < kNV; ++v) acc[r][v] = fma(qb, kv[v], acc[r][v]);
      }
    }
    for (int r = 0; r < kRM; ++r)
      for (int v = 0; v < kNV; ++v) acc[r][v].store(s + r * kBN + kc + v * kN);
  }
}

// O[r][x] += sum_{c < cols} P[r][c] * V[c][x]  for r < kRM, x < dvp (dvp multiple of kNV * kN;
// P rows kBN apart, V and O rows dvp apart)
inline void micro_pv(const float* pr, const float* vp, int cols, int dvp, float* o) {
  for (int dc = 0; dc < dvp; dc += kNV * kN) {
    VF acc[kRM][kNV];
    for (int r = 0; r < kRM; ++r)
      for (int v = 0; v < kNV; ++v) acc[r][v] = VF::load(o + r * dvp + dc + v * kN);
    FAL_MICRO_UNROLL
    for (int c = 0; c < cols; ++c) {
      VF vv[kNV];
      for (int v = 0; v < kNV; ++v) vv[v] = VF::load(vp + c * dvp + dc + v * kN);
      for (int r = 0; r < kRM; ++r) {
        const VF pb = VF::set1(pr[r * kBN + c]);
        for (int v = 0; v < kNV; ++v) acc[r][v] = fma(pb, vv[v], acc[r][v]);
      }
    }
    for (int r = 0; r < kRM; ++r)
      for (int v = 0; v < kNV; ++v) acc[r][v].store(o + r * dvp + dc + v * kN);
  }
}

// out[c][x] += sum_{r < rows} A[r][c] * B[r][x]   (A^T B; A rows kBN apart, B and out rows ldb
// apart; c < kBN, x < ldb with ldb a multiple of kNV * kN). Blocks of NC <= kRM keys x kNV vectors.
// The block's sum starts from zero and is added to out once (blocked summation: dK/dV sum s_q
// rows, and a running sum would grow their rounding error with s_q instead of s_q / rows).
template <int NC>
inline void micro_tn_block(const float* a, const float* b, int rows, int ldb, float* out) {
  for (int dc = 0; dc < ldb; dc += kNV * kN) {
    VF acc[NC][kNV];
    for (int c = 0; c < NC; ++c)
      for (int v = 0; v < kNV; ++v) acc[c][v] = VF::zero();
    FAL_MICRO_UNROLL
    for (int r = 0; r < rows; ++r) {
      VF bv[kNV];
      for (int v = 0; v < kNV; ++v) bv[v] = VF::load(b + r * ldb + dc + v * kN);
      const float* ar = a + r * kBN;
      for (int c = 0; c < NC; ++c) {
        const VF ab = VF::set1(ar[c]);
        for (int v = 0; v < kNV; ++v) acc[c][v] = fma(ab, bv[v], acc[c][v]);
      }
    }
    for (int c = 0; c < NC; ++c)
      for (int v = 0; v < kNV; ++v) {
        float* o = out + c * ldb + dc + v * kN;
        (VF::load(o) + acc[c][v]).store(o);
      }
  }
}
// A^T B over the kBN keys: full kRM-key blocks, then the kBN % kRM tail. Compile-time block sizes
// keep the accumulators in registers: one loop with a runtime `break` at the tail ran the dK / dV
// products at half the FMA rate (backward fp32 H8 N2048 D64, 1 thread, Zen 5: 139 -> 106 ms)
inline void micro_tn(const float* a, const float* b, int rows, int ldb, float* out) {
  constexpr int kFull = kBN / kRM * kRM, kTail = kBN - kFull;
  for (int c0 = 0; c0 < kFull; c0 += kRM) micro_tn_block<kRM>(a + c0, b, rows, ldb, out + c0 * ldb);
  if constexpr (kTail > 0) micro_tn_block<kTail>(a + kFull, b, rows, ldb, out + kFull * ldb);
}

// dK / dV summed over the query rows in levels (blocked summation, as a GEMM's K loop): micro_tn
// sums a block of kQB rows from zero and adds it into `part` (the AMX backward's tiles add their
// blocks into `part` directly); every kPartSteps blocks (and before the key tile is written)
// `part` is added into `total` and cleared. The rounding error then grows
// with kQB + kPartSteps + s_q / (kQB kPartSteps) terms instead of s_q (measured, fp32 dV with
// s_k = 1: 4000 rows 2.9e-4 -> below torch's GEMM).
constexpr int kPartSteps = 16;
struct LeveledSum {
  Buf<float> total, part;
  int steps = 0;
  void resize(size_t n) {  // contents unspecified until clear()
    total.resize(n);
    part.resize(n);
  }
  void clear() {
    fill(total.begin(), total.end(), 0.f);
    fill(part.begin(), part.end(), 0.f);
    steps = 0;
  }
  float* block() { return part.data(); }
  void step() {
    if (++steps == kPartSteps) flush();
  }
  const float* flush() {
    float* t = total.data();
    float* q = part.data();
    const size_t n = total.size();
    for (size_t x = 0; x + kN <= n; x += kN) {
      (VF::load(t + x) + VF::load(q + x)).store(t + x);
      VF::zero().store(q + x);
    }
    steps = 0;
    return t;
  }
};

inline float dot(const float* a, const float* b, int n) {
  VF acc = VF::zero();
  int x = 0;
  for (; x + kN <= n; x += kN) acc = fma(VF::load(a + x), VF::load(b + x), acc);
  float s = acc.hsum();
  for (; x < n; ++x) s += a[x] * b[x];
  return s;
}
}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
