// micro_f32.cpp -- the forward's fp32 microkernels alone (micro_f32.h: S = Q K^T and O += P V, kRM
// rows x kNV vectors) against the package's FMA-chain probe, in one process: how close the products come to
// the FMA peak before the softmax, the packing and the loops around them. One thread, operands in
// L1 / L2 as in a forward work item (a 64-key K^T / V tile, 43 row groups of Q / O, D64).
//
// Build and run (from the repository root; not part of the package):
//   AVX2:    g++ -O3 -std=gnu++17 -fno-math-errno -mavx2 -mfma -mf16c -DFAL_SIMD_AVX2=1
//              -Icsrc/include -Icsrc bench/micro_f32.cpp -o /tmp/micro_f32 && /tmp/micro_f32
//   AVX-512: the same with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -DFAL_SIMD_AVX512=1
//   '-DFAL_MICRO_UNROLL=_Pragma("GCC unroll 2")' (or an empty -DFAL_MICRO_UNROLL=) overrides the
//   product loops' unroll of micro_f32.h, to compare both in binaries run alternately.
// Prints the median (15 rounds, kernels and probe alternating) of each in GFLOP/s and as % of the
// probe. Zen 3, AVX2, a quiet moment (2026-12-03): qk 91-92, pv 90-92, both 90-92 GFLOP/s against a
// probe of 98 = 92-94 % (the whole forward: 72-77 %, bench/results/cpu-2026-12-03f-zen3.md).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cpu/simd/micro_f32.h"
#include "cpu/simd/probes.h"

using namespace fal::cpu::FAL_CPU_NS;
namespace fal::cpu {  // the package's scratch allocator (scratch.cpp), plain here
void* alloc_scratch(size_t n) { return std::aligned_alloc(64, (n + 63) / 64 * 64); }
void free_scratch(void* p) { std::free(p); }
}  // namespace fal::cpu

namespace {
constexpr int kD = 64, kGroups = 43, kTiles = 400;

__attribute__((noinline)) void qk(const float* q, const float* kt, float* s) { micro_qk(q, kD, kt, s, kD); }
__attribute__((noinline)) void pv(const float* s, const float* v, float* o) { micro_pv(s, v, kBN, kD, o); }

// The core's FMA peak: the package's peak probe loop (probes.h)
__attribute__((noinline)) double probe() {
  const long n = 2000000;
  const auto t0 = std::chrono::steady_clock::now();
  const float z = fma_chains(n);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (z == 12345.f) std::puts("");  // keeps the chains
  return 2.0 * kN * kPeakChains * n / s / 1e9;
}
}  // namespace

int main() {
  std::vector<float> q(size_t(kGroups) * kRM * kD), o(q.size(), 0.f), kt(size_t(kD) * kBN), v(kt.size()),
      s(size_t(kRM) * kBN);
  for (size_t i = 0; i < q.size(); ++i) q[i] = 0.001f * float(i % 7);
  for (size_t i = 0; i < kt.size(); ++i) kt[i] = 0.001f * float(i % 5), v[i] = 0.01f * float(i % 3);
  for (size_t i = 0; i < s.size(); ++i) s[i] = 0.01f * float(i % 11);
  const char* names[] = {"qk", "pv", "qk+pv", "probe"};
  std::vector<double> r[4];
  for (int round = 0; round < 15; ++round)
    for (int w = 0; w < 4; ++w) {
      if (w == 3) {
        r[w].push_back(probe());
        continue;
      }
      const auto t0 = std::chrono::steady_clock::now();
      for (int t = 0; t < kTiles; ++t)
        for (int g = 0; g < kGroups; ++g) {
          const size_t off = size_t(g) * kRM * kD;
          if (w != 1) qk(q.data() + off, kt.data(), s.data());
          if (w != 0) pv(s.data(), v.data(), o.data() + off);
        }
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      r[w].push_back(2.0 * kTiles * kGroups * kRM * kBN * kD * (w == 2 ? 2 : 1) / sec / 1e9);
    }
  for (auto& x : r) std::sort(x.begin(), x.end());
  const double peak = r[3][7];
  for (int w = 0; w < 4; ++w)
    std::printf("%-6s %7.1f GFLOP/s  %5.1f %% of the probe\n", names[w], r[w][7], 100 * r[w][7] / peak);
  std::printf("check %g\n", double(o[5] + s[3]));
}
