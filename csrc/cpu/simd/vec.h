// vec.h -- the one vector type the SIMD kernels are written against, per ISA:
//   FAL_SIMD_AVX512: VF = 16 x fp32 in a zmm;  FAL_SIMD_AVX2: VF = 8 x fp32 in a ymm (+FMA, F16C).
// Only included by translation units compiled with the matching -m flags.
#pragma once
#include <limits>
#include <immintrin.h>

#include <cstdint>

#include "flashattn_lite/numeric.h"

#if defined(FAL_SIMD_AVX512)
#define FAL_CPU_NS avx512
#elif defined(FAL_SIMD_AVX2)
#define FAL_CPU_NS avx2
#else
#error "vec.h needs FAL_SIMD_AVX512 or FAL_SIMD_AVX2"
#endif

namespace fal::cpu::FAL_CPU_NS {

#if defined(FAL_SIMD_AVX512)
struct VF {
  __m512 v;
  static constexpr int N = 16;
  static VF load(const float* p) { return {_mm512_loadu_ps(p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  static VF set1(float x) { return {_mm512_set1_ps(x)}; }
  static VF zero() { return {_mm512_setzero_ps()}; }
  float hmax() const { return _mm512_reduce_max_ps(v); }
  float hsum() const { return _mm512_reduce_add_ps(v); }
};
inline VF fma(VF a, VF b, VF c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline VF operator+(VF a, VF b) { return {_mm512_add_ps(a.v, b.v)}; }
inline VF operator-(VF a, VF b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline VF operator*(VF a, VF b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline VF vmax(VF a, VF b) { return {_mm512_max_ps(a.v, b.v)}; }
inline VF vmin(VF a, VF b) { return {_mm512_min_ps(a.v, b.v)}; }
inline VF operator/(VF a, VF b) { return {_mm512_div_ps(a.v, b.v)}; }
inline VF vabs(VF a) { return {_mm512_abs_ps(a.v)}; }
// x where m[lane] != 0, -inf where m[lane] == 0 (a bool attn_mask row, N bytes)
inline VF keep_where(VF x, const uint8_t* m) {
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m)));
  const __mmask16 z = _mm512_cmpeq_epi32_mask(b, _mm512_setzero_si512());
  return {_mm512_mask_mov_ps(x.v, z, _mm512_set1_ps(-std::numeric_limits<float>::infinity()))};
}

// 2^x: n = round(x), f = x - n in [-1/2, 1/2], 2^f by a degree-6 polynomial, scaled by 2^n with
// vscalefps. x < -126 (masked scores, -inf) gives exactly 0; NaN stays NaN.
inline VF exp2(VF x) {
  const __m512 xc = _mm512_max_ps(_mm512_set1_ps(-127.f), x.v);  // NaN in x propagates (second operand)
  const __m512 n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(xc, n);
  __m512 p = _mm512_set1_ps(1.5403530393381606e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  const __mmask16 keep = _mm512_cmp_ps_mask(x.v, _mm512_set1_ps(-126.f), _CMP_NLT_UQ);
  return {_mm512_maskz_scalef_ps(keep, p, n)};
}

// n consecutive elements (n <= N) as fp32, zeros beyond n.
inline VF load_f32(const float* p, int n) {
  return {_mm512_maskz_loadu_ps(__mmask16((1u << n) - 1u), p)};
}
inline VF load_f32(const bf16_t* p, int n) {
  const __m256i h = _mm256_maskz_loadu_epi16(__mmask16((1u << n) - 1u), p);
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
}
inline VF load_f32(const fp16_t* p, int n) {
  return {_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(__mmask16((1u << n) - 1u), p))};
}
#else
struct VF {
  __m256 v;
  static constexpr int N = 8;
  static VF load(const float* p) { return {_mm256_loadu_ps(p)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  static VF set1(float x) { return {_mm256_set1_ps(x)}; }
  static VF zero() { return {_mm256_setzero_ps()}; }
  float hmax() const {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  float hsum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};
inline VF fma(VF a, VF b, VF c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline VF operator+(VF a, VF b) { return {_mm256_add_ps(a.v, b.v)}; }
inline VF operator-(VF a, VF b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline VF operator*(VF a, VF b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline VF vmax(VF a, VF b) { return {_mm256_max_ps(a.v, b.v)}; }
inline VF vmin(VF a, VF b) { return {_mm256_min_ps(a.v, b.v)}; }
inline VF operator/(VF a, VF b) { return {_mm256_div_ps(a.v, b.v)}; }
inline VF vabs(VF a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.f), a.v)}; }
inline VF keep_where(VF x, const uint8_t* m) {
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(m)));
  const __m256 z = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, _mm256_setzero_si256()));
  return {_mm256_blendv_ps(x.v, _mm256_set1_ps(-std::numeric_limits<float>::infinity()), z)};
}

inline VF exp2(VF x) {
  const __m256 xc = _mm256_max_ps(_mm256_set1_ps(-127.f), x.v);
  const __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(xc, n);
  __m256 p = _mm256_set1_ps(1.5403530393381606e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558146428443e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291076284772e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504108664821580e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022650695910071e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718055994531e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
  // 2^n for n in [-127, 128] through the exponent field (n = -127 lands in the masked range)
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 r = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  const __m256 keep = _mm256_cmp_ps(x.v, _mm256_set1_ps(-126.f), _CMP_NLT_UQ);
  return {_mm256_and_ps(r, keep)};
}

inline VF load_f32(const float* p, int n) {
  if (n == 8) return {_mm256_loadu_ps(p)};
  alignas(32) float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < n; ++i) t[i] = p[i];
  return {_mm256_load_ps(t)};
}
inline VF load_f32(const bf16_t* p, int n) {
  alignas(16) uint16_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < n; ++i) t[i] = p[i].bits;
  const __m128i h = _mm_load_si128(reinterpret_cast<const __m128i*>(t));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))};
}
inline VF load_f32(const fp16_t* p, int n) {
  alignas(16) uint16_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < n; ++i) t[i] = p[i].bits;
  return {_mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(t)))};
}
#endif

constexpr int kN = VF::N;

// dst[0..n) = src[0..n) * mul as fp32 (any n), vectorised.
template <typename T>
inline void convert_row(const T* src, int n, float mul, float* dst) {
  const VF m = VF::set1(mul);
  int x = 0;
  for (; x + kN <= n; x += kN) (load_f32(src + x, kN) * m).store(dst + x);
  if (x < n) {
    alignas(64) float t[kN];
    (load_f32(src + x, n - x) * m).store(t);
    for (int i = 0; x + i < n; ++i) dst[x + i] = t[i];
  }
}

}  // namespace fal::cpu::FAL_CPU_NS
