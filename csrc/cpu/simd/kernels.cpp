// kernels.cpp -- one ISA's kernel table entries (isa.h): which stage runs a call, and the peak
// and read probes. fp64 always runs the portable kernels (attn_fwd_cpu.cpp, attn_bwd_cpu.cpp).
#include "cpu/simd/common.h"
#include "cpu/simd/prefetch.h"
#include "cpu/simd/probes.h"
#include "cpu/simd/stages.h"

namespace fal::cpu::FAL_CPU_NS {

int64_t fwd_num_work_items(const FwdParams& p) {
  if (p.dtype == DType::kFloat64) return fal::cpu::fwd_num_work_items(p);
  return p.s_q <= kDecodeMaxRows ? decode_items(p) : fwd_chunk_items(p);
}

bool fwd_run(const FwdParams& p, int64_t begin, int64_t end) {
  if (p.dtype == DType::kFloat64) return fal::cpu::fwd_run(p, begin, end);
  if (p.s_q <= kDecodeMaxRows) return decode_run(p, begin, end);
  return fwd_chunks_run(p, begin, end);
}

#if defined(FAL_SIMD_AVX512) && defined(FAL_WITH_AMX)
// The amx ISA's forward: bf16, fp16 and fp32 on AMX tiles (more than kDecodeMaxRows rows:
// fwd_amx.cpp; fp32 in two bf16 parts where torch's float32 matmul precision allows it
// (p.fp32_split_bf16), else three), the bf16 decode's several-row blocks (decode_amx.cpp); the rest
// as avx512.
namespace {
bool amx_chunks(const FwdParams& p) {
  const bool tiles = p.dtype == DType::kBFloat16 || p.dtype == DType::kFloat16 || p.dtype == DType::kFloat32;
  return tiles && p.s_q > kDecodeMaxRows;
}
}  // namespace
int64_t fwd_num_work_items_amx(const FwdParams& p) {
  return amx_chunks(p) ? fwd_chunk_items_amx(p) : fwd_num_work_items(p);
}
bool fwd_run_amx(const FwdParams& p, int64_t begin, int64_t end) {
  if (amx_chunks(p)) return fwd_chunks_run_amx(p, begin, end);
  if (p.dtype != DType::kBFloat16) return fwd_run(p, begin, end);
  return decode_run_amx(p, begin, end);
}
#endif

int64_t bwd_num_work_items(const BwdParams& p) {
  return p.dtype == DType::kFloat64 ? fal::cpu::bwd_num_work_items(p) : bwd_items(p);
}

void bwd_run(const BwdParams& p, int64_t begin, int64_t end) {
  if (p.dtype == DType::kFloat64) return fal::cpu::bwd_run(p, begin, end);
  bwd_items_run(p, begin, end);
}

#if defined(FAL_SIMD_AVX512) && defined(FAL_WITH_AMX)
// The amx ISA's backward: bf16 on AMX tiles (bwd_amx.cpp), the rest as avx512.
void bwd_run_amx(const BwdParams& p, int64_t begin, int64_t end) {
  if (p.dtype == DType::kFloat64) return fal::cpu::bwd_run(p, begin, end);
  bwd_items_run_amx(p, begin, end);
}
#endif

// Peak probe: kind 0 fp32 FMA chains (probes.h), kind 1 (AVX512_BF16) vdpbf16ps chains.
float peak_loop(int kind, int64_t iters) {
#if defined(FAL_SIMD_AVX512)
  if (kind == 1) {
    VF acc[kPeakChains];
    for (int i = 0; i < kPeakChains; ++i) acc[i] = VF::set1(1e-3f * float(i));
    const __m512 one = _mm512_set1_ps(1e-3f);
    const __m512bh a = _mm512_cvtne2ps_pbh(one, one);
    for (int64_t it = 0; it < iters; ++it)
#pragma GCC unroll 24
      for (int i = 0; i < kPeakChains; ++i) acc[i].v = _mm512_dpbf16_ps(acc[i].v, a, a);
    VF s = VF::zero();
    for (int i = 0; i < kPeakChains; ++i) s = s + acc[i];
    return s.hsum();
  }
#endif
  (void)kind;  // AVX2 has one kind (fp32 FMA)
  return fma_chains(iters);
}

// Read probe: the sum of p[0, n) (n a multiple of 4 kN) with 4 vector accumulators and one
// software prefetch per step of 4 vectors, kind 0: T0 4 KB ahead, 1: T1 16 KB ahead -- the loops
// of bench/peak_fma.cpp, which it matches (Zen 4, 2026-12-02: 30-31 / 47 GB/s in the host's slow /
// fast moments; a prefetch per line read ~10 % less).
float read_sum(int kind, const float* p, int64_t n) {
  VF s[4] = {VF::zero(), VF::zero(), VF::zero(), VF::zero()};
  const char* a = reinterpret_cast<const char*>(p);
  const int64_t ahead = kind == 1 ? 16384 : 4096;
  for (int64_t i = 0; i + 4 * kN <= n; i += 4 * kN) {
    const int64_t b = int64_t(i) * int64_t(sizeof(float)) + ahead;  // this step's bytes, ahead
    if (kind == 1)
      prefetch_line<PrefetchHint::kT1>(a + b);
    else
      prefetch_line<PrefetchHint::kT0>(a + b);
    for (int v = 0; v < 4; ++v) s[v] = s[v] + VF::load(p + i + v * kN);
  }
  return ((s[0] + s[1]) + (s[2] + s[3])).hsum();
}

double peak_flops_per_iter(int kind) {
#if defined(FAL_SIMD_AVX512)
  if (kind == 1) return kPeakChains * 64.0;  // 32 bf16 products + 32 adds per vdpbf16ps
#endif
  (void)kind;
  return kPeakChains * 2.0 * kN;
}

}  // namespace fal::cpu::FAL_CPU_NS
