// micro_decode_bf16.cpp -- the AVX-512 several-row bf16 decode's products alone (decode_pairs.h: S =
// Q K^T of 4 rows in slices and rotated, O += P V on V pairs in place over 16 and 64 keys) against
// a vdpbf16ps probe, and the probe fed by each kind of load (plain, 32 / 64 / 128 / 256-bit
// broadcasts), in one process: how close the products come to the vdpbf16ps rate with their
// operands in L1 / L2, before the softmax, the masks, the prefetch and memory. One thread, D128.
//
// Build and run (from the repository root; not part of the package; needs AVX512_BF16):
//   g++ -O3 -std=gnu++17 -fno-math-errno -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl
//     -mavx512dq -mavx512bf16 -DFAL_SIMD_AVX512=1 -Icsrc/include -Icsrc bench/micro_decode_bf16.cpp
//     -o /tmp/micro_decode_bf16 && /tmp/micro_decode_bf16
// Prints per round: the probe (vdpbf16ps per ns), each load kind's rate as % of it, and each product
// in ns per key and % of the probe (16 vdpbf16ps per key for 4 rows). Zen 4 (2026-12-04): 128-bit
// broadcasts 70-76 %, plain / 32 / 64 / 256-bit 90-102 %; S in slices 54-61 %, rotated 73-87 %; P V
// 16 keys a call 44-50 %, 64 keys 61-75 % (bench/results/cpu-2026-12-04d-zen4.md).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu/simd/decode_pairs.h"

using namespace fal::cpu::FAL_CPU_NS;
using fal::simd_avx512::bf16_t;
namespace fal::cpu {  // the package's scratch allocator (scratch.cpp), plain here
void* alloc_scratch(size_t n) { return std::aligned_alloc(64, (n + 63) / 64 * 64); }
void free_scratch(void* p) { std::free(p); }
}  // namespace fal::cpu

namespace {
constexpr int kD = 128, kRows = 4, kBlocks = 32;  // 512 keys: K + V 256 KB (L2)
volatile int g_d = kD;                            // a runtime d, as in the package

double secs(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// 8 independent vdpbf16ps chains, one operand from memory by Mode: 0 none (registers), 1 a plain
// 512-bit load, 2 a 32-bit broadcast, 3 64-bit, 4 128-bit, 5 256-bit.
alignas(64) uint16_t g_buf[64 * 64];
template <int Mode>
__attribute__((noinline)) double probe() {
  __m512 a[8];
  for (int i = 0; i < 8; ++i) a[i] = _mm512_set1_ps(0.001f * float(i));
  const __m512bh q = as_bh(_mm512_set1_epi32(0x3c003c00));
  const long n = 1000000;
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < n; ++i) {
    const uint16_t* k = g_buf + (i & 31) * 64;
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      __m512bh b = q;
      if constexpr (Mode == 1) b = as_bh(_mm512_load_si512(k + 32 * (j & 1)));
      if constexpr (Mode == 2) b = as_bh(_mm512_set1_epi32(*reinterpret_cast<const int*>(k + 2 * j)));
      if constexpr (Mode == 3) b = as_bh(_mm512_set1_epi64(*reinterpret_cast<const long long*>(k + 4 * j)));
      if constexpr (Mode == 4)
        b = as_bh(_mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k + 8 * j))));
      if constexpr (Mode == 5)
        b = as_bh(_mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(k + 16 * (j & 3)))));
      a[j] = _mm512_dpbf16_ps(a[j], b, q);
    }
  }
  const double s = secs(t0);
  float z = 0.f;
  for (int j = 0; j < 8; ++j) z += _mm512_reduce_add_ps(a[j]);
  if (z == 12345.f) std::puts("");  // keeps the chains
  return 8.0 * double(n) / s / 1e9;
}

__attribute__((noinline)) void qk_slices(const uint32_t* qT, const bf16_t* const* kp, float* s) {
  decode_qk_slices_rows_bf16<4>(qT, kp, g_d, 0.1f, kRows, s, kN);
}
__attribute__((noinline)) void qk_rot(const uint32_t* qR, const bf16_t* const* kp, float* s) {
  with_row_vecs((g_d + 31) / 32,
                [&](auto nt) { decode_qk_slices_rows_bf16<4, decltype(nt)::value>(qR, kp, g_d, 0.1f, kRows, s, kN); });
}
__attribute__((noinline)) void pv(const uint32_t* pb, int ldp, const bf16_t* const* vp, int nk, float* o) {
  decode_pv_rows_bf16_inplace<kRows>(pb, ldp, vp, nk, g_d, o, g_d, [] {});
}
}  // namespace

int main() {
  for (size_t i = 0; i < sizeof g_buf / 2; ++i) g_buf[i] = uint16_t(0x3c00 + i % 13);
  std::vector<bf16_t> k(size_t(kBlocks) * 16 * kD), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    const uint16_t x = uint16_t(0x3c00 + i % 13);
    std::memcpy(&k[i], &x, 2);
    std::memcpy(&v[i], &x, 2);
  }
  alignas(64) uint32_t qp[kRows * kD], qT[kD * kN], qR[kD * kN], pb[kRows * 32];
  for (int i = 0; i < kRows * kD; ++i) qp[i] = 0x3c003c00u + uint32_t(i % 7);
  for (int i = 0; i < kRows * 32; ++i) pb[i] = 0x3c003c00u;
  decode_q_pairs_t(qp, kD, kRows, kD, 4, qT);
  decode_q_pairs_rot(qp, kD, kRows, kD, 4, qR);
  alignas(64) float s1[kRows * kN], s2[kRows * kN], o[kRows * kD] = {};
  std::vector<const bf16_t*> kp(size_t(kBlocks) * 16), vp(kp.size());
  for (int j = 0; j < kBlocks * 16; ++j) kp[j] = k.data() + size_t(j) * kD, vp[j] = v.data() + size_t(j) * kD;
  qk_slices(qT, kp.data(), s1);
  qk_rot(qR, kp.data(), s2);
  for (int i = 0; i < kRows * kN; ++i)
    if (std::abs(s1[i] - s2[i]) > 1e-3f * std::abs(s1[i])) std::printf("mismatch at %d: %g %g\n", i, s1[i], s2[i]);
  const int reps = 2000;
  for (int round = 0; round < 5; ++round) {
    const double pr = probe<0>();
    std::printf(
        "probe %.2f/ns; loads: plain %.0f%%, bcast32 %.0f%%, bcast64 %.0f%%, bcast128 %.0f%%, bcast256 %.0f%%\n", pr,
        100 * probe<1>() / pr, 100 * probe<2>() / pr, 100 * probe<3>() / pr, 100 * probe<4>() / pr,
        100 * probe<5>() / pr);
    double t[4];
    for (int w = 0; w < 4; ++w) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; ++r)
        for (int b = 0; b < kBlocks; b += w == 3 ? 4 : 1) {
          if (w == 0) qk_slices(qT, kp.data() + 16 * b, s1);
          if (w == 1) qk_rot(qR, kp.data() + 16 * b, s2);
          if (w == 2) pv(pb, 8, vp.data() + 16 * b, 16, o);
          if (w == 3) pv(pb, 32, vp.data() + 16 * b, 64, o);
        }
      t[w] = secs(t0) / (double(reps) * kBlocks * 16) * 1e9;
    }
    std::printf(
        "  4 rows D128: S slices %.2f ns/key (%.0f%%), rotated %.2f (%.0f%%); P V 16 keys %.2f (%.0f%%), 64 keys "
        "%.2f (%.0f%%)\n",
        t[0], 100 * 16 / t[0] / pr, t[1], 100 * 16 / t[1] / pr, t[2], 100 * 16 / t[2] / pr, t[3], 100 * 16 / t[3] / pr);
  }
  std::printf("(%g %g %g)\n", double(s1[3]), double(s2[3]), double(o[5]));
}
