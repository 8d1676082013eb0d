// probes.h -- the peak probe's fp32 FMA chains: kernels.cpp's peak_loop (the package's
// _cpu_peak_gflops) and the kernel microbenchmarks (bench/micro_*.cpp) time the same loop. Compiled
// once per ISA (common.h's rules).
#pragma once
#include <cstdint>

#include "cpu/simd/common.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

// Independent accumulators, more than FMA latency x FMA ports (4 x 2) and within the register file
// (zmm: 24 of 32; ymm: 12 of 16 -- 24 would spill and under-report the AVX2 peak).
constexpr int kPeakChains = kN == 16 ? 24 : 12;

// kPeakChains fp32 FMA chains of iters steps each (kPeakChains * iters FMAs of kN lanes); returns
// their sum, which keeps them.
inline float fma_chains(int64_t iters) {
  VF acc[kPeakChains];
  for (int i = 0; i < kPeakChains; ++i) acc[i] = VF::set1(1e-3f * float(i));
  const VF a = VF::set1(0.999999f), b = VF::set1(1e-7f);
  for (int64_t it = 0; it < iters; ++it)
#pragma GCC unroll 24
    for (int i = 0; i < kPeakChains; ++i) acc[i] = fma(acc[i], a, b);
  VF s = VF::zero();
  for (int i = 0; i < kPeakChains; ++i) s = s + acc[i];
  return s.hsum();
}

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
