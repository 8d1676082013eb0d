// vec.h -- the one vector type the SIMD kernels are written against, per ISA:
//   FAL_SIMD_AVX512: VF = 16 x fp32 in a zmm;  FAL_SIMD_AVX2: VF = 8 x fp32 in a ymm (+FMA, F16C).
// Only included by translation units compiled with the matching -m flags.
#pragma once
#include <algorithm>
#include <limits>
// GCC 12's AVX-512 intrinsics trip -W(maybe-)uninitialized on their own `__Y` placeholders (GCC bug
// 105593, fixed in 13); the warnings point into the header, so silencing its lines silences them
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

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
// Per lane: a == b ? x : y (ordered: a NaN lane takes y).
inline VF select_eq(VF a, VF b, VF x, VF y) {
  return {_mm512_mask_mov_ps(y.v, _mm512_cmp_ps_mask(a.v, b.v, _CMP_EQ_OQ), x.v)};
}
// Per lane: a < b ? x : y (ordered: a NaN lane takes y).
inline VF select_lt(VF a, VF b, VF x, VF y) {
  return {_mm512_mask_mov_ps(y.v, _mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), x.v)};
}
// x where lo[lane] <= j < hi[lane], -inf elsewhere (N int32 bounds).
inline VF keep_in_range(VF x, const int32_t* lo, const int32_t* hi, int j) {
  const __m512i jv = _mm512_set1_epi32(j);
  const __mmask16 in =
      _mm512_cmple_epi32_mask(_mm512_loadu_si512(lo), jv) & _mm512_cmplt_epi32_mask(jv, _mm512_loadu_si512(hi));
  return {_mm512_mask_mov_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), in, x.v)};
}
// x where m[lane] != 0, -inf where m[lane] == 0 (a bool attn_mask row, N bytes)
inline VF keep_where(VF x, const uint8_t* m) {
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m)));
  const __mmask16 z = _mm512_cmpeq_epi32_mask(b, _mm512_setzero_si512());
  return {_mm512_mask_mov_ps(x.v, z, _mm512_set1_ps(-std::numeric_limits<float>::infinity()))};
}

// Lanes [lo, lo + n) of x to p[lo .. lo + n).
inline void store_lanes(VF x, int lo, int n, float* p) {
  if (n == VF::N) return x.store(p);
  _mm512_mask_storeu_ps(p, __mmask16(((1u << n) - 1u) << lo), x.v);
}

// n consecutive elements (n <= N) as fp32, zeros beyond n.
inline VF load_f32(const float* p, int n) { return {_mm512_maskz_loadu_ps(__mmask16((1u << n) - 1u), p)}; }
inline VF load_f32(const bf16_t* p, int n) {
  const __m256i h = _mm256_maskz_loadu_epi16(__mmask16((1u << n) - 1u), p);
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
}
inline VF load_f32(const fp16_t* p, int n) {
  return {_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(__mmask16((1u << n) - 1u), p))};
}
// 2 N bf16 values from p as two fp32 vectors: e = p[0], p[2], ..., o = p[1], p[3], ... -- a shift
// and a mask of the 32-bit words, where load_f32 widens each half (a shuffle and a shift per N).
inline void load_bf16_split(const bf16_t* p, VF& e, VF& o) {
  const __m512i w = _mm512_loadu_si512(p);
  e.v = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  o.v = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(int(0xFFFF0000u))));
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
inline VF select_eq(VF a, VF b, VF x, VF y) {
  return {_mm256_blendv_ps(y.v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ))};
}
inline VF select_lt(VF a, VF b, VF x, VF y) {
  return {_mm256_blendv_ps(y.v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ))};
}
inline VF keep_in_range(VF x, const int32_t* lo, const int32_t* hi, int j) {
  const __m256i jv = _mm256_set1_epi32(j);
  const __m256i lov = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo));
  const __m256i hiv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi));
  const __m256i in = _mm256_andnot_si256(_mm256_cmpgt_epi32(lov, jv), _mm256_cmpgt_epi32(hiv, jv));
  return {_mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()), x.v, _mm256_castsi256_ps(in))};
}
// Lanes [lo, lo + n) of x to p[lo .. lo + n): through a stack copy, not vmaskmovps, whose store
// form is microcoded on AMD (Zen 3 / 4: ~10x a plain store) -- it cost 4-row bf16 decode, 4 of
// them per 2 keys, ~10 % of its time (Zen 4, 2026-12-01).
inline void store_lanes(VF x, int lo, int n, float* p) {
  if (n == VF::N) return x.store(p);
  alignas(32) float t[8];
  _mm256_store_ps(t, x.v);
  for (int i = lo; i < lo + n; ++i) p[i] = t[i];
}
inline VF keep_where(VF x, const uint8_t* m) {
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(m)));
  const __m256 z = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, _mm256_setzero_si256()));
  return {_mm256_blendv_ps(x.v, _mm256_set1_ps(-std::numeric_limits<float>::infinity()), z)};
}

inline VF load_f32(const float* p, int n) {
  if (n == 8) return {_mm256_loadu_ps(p)};
  alignas(32) float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < n; ++i) t[i] = p[i];
  return {_mm256_load_ps(t)};
}
inline VF load_f32(const bf16_t* p, int n) {
  if (n == 8)
    return {_mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16))};
  alignas(16) uint16_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < n; ++i) t[i] = p[i].bits;
  const __m128i h = _mm_load_si128(reinterpret_cast<const __m128i*>(t));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))};
}
inline VF load_f32(const fp16_t* p, int n) {
  if (n == 8) return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
  alignas(16) uint16_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < n; ++i) t[i] = p[i].bits;
  return {_mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(t)))};
}
inline void load_bf16_split(const bf16_t* p, VF& e, VF& o) {
  const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  e.v = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  o.v = _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(int(0xFFFF0000u))));
}
#endif

constexpr int kN = VF::N;

// x as an opaque register value: a vector loaded once and used by several FMAs stays one load
// (GCC otherwise folds the load into each FMA as its memory operand, a load per use -- on AVX2,
// whose 16 registers make it short of them, that doubled the loads of 4-row bf16 decode's S).
inline void keep_in_register(VF& x) { asm("" : "+v"(x.v)); }

// FMAs pinned to vfmadd231ps (the accumulator's register is the destination) for the unrolled
// several-row decode products on AVX2, where GCC chose among the three FMA forms so that the
// accumulators moved through the operands' registers: a register copy (vmovaps) per 2-3 FMAs. Two
// spellings, each the one that compiled clean where it is used (GCC 12, callgrind): fma_into
// (acc an in-out operand; P V -- by value its V loads were hoisted and the accumulators rotated)
// and fma231 (by value; S = Q K^T -- in-out its accumulators stayed in memory). On AVX-512 plain
// FMAs.
#if defined(FAL_SIMD_AVX512)
inline void fma_into(VF& acc, VF a, VF b) { acc = fma(a, b, acc); }
inline VF fma231(VF a, VF b, VF c) { return fma(a, b, c); }
#else
inline void fma_into(VF& acc, VF a, VF b) { asm("vfmadd231ps %2, %1, %0" : "+x"(acc.v) : "x"(a.v), "x"(b.v)); }
inline VF fma231(VF a, VF b, VF c) {
  VF r;
  asm("vfmadd231ps %2, %1, %0" : "=x"(r.v) : "x"(a.v), "x"(b.v), "0"(c.v));
  return r;
}
#endif

// 2^f for f in [-1/2, 1/2] by Horner (FMA) with relative-minimax coefficients (fitted in fp64,
// rounded to fp32; max relative error of the fp32 evaluation over the interval, by a 400k-point scan:
// degree 6 2.2e-7, degree 5 1.8e-7 -- both dominated by fp32 rounding; the exact-coefficient error is
// 1.9e-9 and 9.3e-8). Degree 6 for tanh (softcap), whose 1 - 2 / (1 + e) cancels and amplifies e's
// error near 0; degree 5 for the softmax's P (one FMA fewer per 16 / 8 scores); degree 3 (1.0e-4)
// for a P rounded to bf16 (softmax_row.h's VecLaneBf16P).
template <int Deg>
inline VF exp2_poly(VF f) {
  static_assert(Deg == 3 || Deg == 5 || Deg == 6, "exp2_poly: degree 3, 5 or 6");
  VF p;
  if constexpr (Deg == 3) {
    p = fma(VF::set1(5.5008720606565475e-2f), f, VF::set1(2.4221046268939972e-1f));
    p = fma(p, f, VF::set1(6.932829022407532e-1f));
  } else if constexpr (Deg == 6) {
    p = fma(VF::set1(1.5403530393381606e-4f), f, VF::set1(1.3333558146428443e-3f));
    p = fma(p, f, VF::set1(9.6181291076284772e-3f));
    p = fma(p, f, VF::set1(5.5504108664821580e-2f));
    p = fma(p, f, VF::set1(2.4022650695910071e-1f));
    p = fma(p, f, VF::set1(6.9314718055994531e-1f));
  } else {
    p = fma(VF::set1(1.326458528637886e-3f), f, VF::set1(9.671464562416077e-3f));
    p = fma(p, f, VF::set1(5.550733581185341e-2f));
    p = fma(p, f, VF::set1(2.4022242426872253e-1f));
    p = fma(p, f, VF::set1(6.931470036506653e-1f));
  }
  return fma(p, f, VF::set1(1.f));
}

#if defined(FAL_SIMD_AVX512)
// 2^x for x <= 127: n = round(x), f = x - n in [-1/2, 1/2], 2^f by a polynomial (exp2_poly),
// scaled by 2^n with vscalefps. x < -126 (masked scores, -inf) gives exactly 0; NaN stays NaN (the
// mask keeps unordered lanes).
template <int Deg = 6>
inline VF exp2(VF x) {
  // no clamp of x: every lane below -126 (-inf gives f = NaN) is zeroed by the mask; on a Xeon, where
  // the vector ops share ports with the FMAs, the clamp's max cost the fp32 softmax step 6 %
  const __m512 n = _mm512_roundscale_ps(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 p = exp2_poly<Deg>(VF{_mm512_sub_ps(x.v, n)}).v;
  const __mmask16 keep = _mm512_cmp_ps_mask(x.v, _mm512_set1_ps(-126.f), _CMP_NLT_UQ);
  return {_mm512_maskz_scalef_ps(keep, p, n)};
}
#else
// 2^x for x <= 127 (larger x: unspecified): n = round(x) by the add-and-subtract of 1.5 * 2^23 + 127
// (t's low mantissa bits then hold n + 127, the exponent field of 2^n), f = x - n in [-1/2, 1/2],
// 2^f by a polynomial (exp2_poly). x < -126.5 (masked scores, -inf) gives n + 127 = 0, i.e. exactly
// 0; NaN stays NaN (vmaxps returns its second operand for a NaN).
template <int Deg = 6>
inline VF exp2(VF x) {
  const __m256 shift = _mm256_set1_ps(12583039.f);               // 1.5 * 2^23 + 127
  const __m256 xc = _mm256_max_ps(_mm256_set1_ps(-127.f), x.v);  // NaN in x propagates
  const __m256 t = _mm256_add_ps(xc, shift);                     // rounds to nearest even, as roundps
  const __m256 f = _mm256_sub_ps(xc, _mm256_sub_ps(t, shift));
  const __m256 e = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23));  // 2^n
  return {_mm256_mul_ps(exp2_poly<Deg>(VF{f}).v, e)};
}
#endif

// s[i] = sum of the lanes of a[i], for kN vectors at once: a transpose-and-add tree (45 shuffles
// and adds on AVX-512, 21 on AVX2, against ~8 per single horizontal sum). Always inlined: called
// out of line, its caller's kN accumulators had to live in memory (a store and a reload per
// product in the decode's S = Q K^T).
__attribute__((always_inline)) inline VF hsum_each(const VF* a) {
#if defined(FAL_SIMD_AVX512)
  __m512 b[8], c[4];
  for (int i = 0; i < 8; ++i)
    b[i] =
        _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i].v, a[2 * i + 1].v), _mm512_unpackhi_ps(a[2 * i].v, a[2 * i + 1].v));
  for (int i = 0; i < 4; ++i) {  // lane l of c[i]: the lane-l sums of a[4i .. 4i+3]
    const __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
    c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  const __m512 e0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x44), _mm512_shuffle_f32x4(c[0], c[1], 0xEE));
  const __m512 e1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x44), _mm512_shuffle_f32x4(c[2], c[3], 0xEE));
  return {_mm512_add_ps(_mm512_shuffle_f32x4(e0, e1, 0x88), _mm512_shuffle_f32x4(e0, e1, 0xDD))};
#else
  __m256 b[4], c[2];
  for (int i = 0; i < 4; ++i)
    b[i] =
        _mm256_add_ps(_mm256_unpacklo_ps(a[2 * i].v, a[2 * i + 1].v), _mm256_unpackhi_ps(a[2 * i].v, a[2 * i + 1].v));
  for (int i = 0; i < 2; ++i)
    c[i] =
        _mm256_add_ps(_mm256_shuffle_ps(b[2 * i], b[2 * i + 1], 0x44), _mm256_shuffle_ps(b[2 * i], b[2 * i + 1], 0xEE));
  return {_mm256_add_ps(_mm256_permute2f128_ps(c[0], c[1], 0x20), _mm256_permute2f128_ps(c[0], c[1], 0x31))};
#endif
}

// Transposes the kN x kN block held in r (r[i] = row i) and stores column c as row c at
// dst + c * ld. AVX-512: 32-bit and 64-bit unpacks within 128-bit lanes, then two rounds of
// 128-bit lane shuffles (64 shuffles); AVX2: unpacks, shuffles and 128-bit permutes (24).
inline void transpose_store(VF* r, float* dst, int ld) {
#if defined(FAL_SIMD_AVX512)
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i].v, r[2 * i + 1].v);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i].v, r[2 * i + 1].v);
  }
  for (int g = 0; g < 4; ++g) {  // u[4g + c], 128-bit lane l: column 4l + c of rows 4g..4g+3
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 2]);
    const __m512d e = _mm512_castps_pd(t[4 * g + 1]), f = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(e, f));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(e, f));
  }
  for (int c = 0; c < 4; ++c) {  // row 4l + c = lane l of u[c], u[4 + c], u[8 + c], u[12 + c]
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
    const __m512 w0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44),
                 w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
    _mm512_storeu_ps(dst + (0 + c) * ld, _mm512_shuffle_f32x4(v0, w0, 0x88));
    _mm512_storeu_ps(dst + (4 + c) * ld, _mm512_shuffle_f32x4(v0, w0, 0xDD));
    _mm512_storeu_ps(dst + (8 + c) * ld, _mm512_shuffle_f32x4(v1, w1, 0x88));
    _mm512_storeu_ps(dst + (12 + c) * ld, _mm512_shuffle_f32x4(v1, w1, 0xDD));
  }
#else
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i].v, r[2 * i + 1].v);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i].v, r[2 * i + 1].v);
  }
  for (int g = 0; g < 2; ++g) {  // u[4g + c], 128-bit lane l: column 4l + c of rows 4g..4g+3
    u[4 * g + 0] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
    u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    _mm256_storeu_ps(dst + c * ld, _mm256_permute2f128_ps(u[c], u[4 + c], 0x20));
    _mm256_storeu_ps(dst + (4 + c) * ld, _mm256_permute2f128_ps(u[c], u[4 + c], 0x31));
  }
#endif
}

// kN rows of n elements (null: zeros), converted to fp32, as a transposed panel: dst[x * ld + c] =
// row_c[x] for x < round_up(n, kN) (zero past n), by kN x kN register transposes (transpose_store).
// K panels of the fp32 forward and of the fp32 multi-row decode.
template <typename T>
inline void transpose_rows(const T* const* rows, int n, float* dst, int ld) {
  VF blk[kN];
  for (int x = 0; x < n; x += kN) {
    const int w = std::min(kN, n - x);
    if (w == kN)  // a compile-time width: the AVX2 loads of a runtime width branch per load
      for (int c = 0; c < kN; ++c) blk[c] = rows[c] ? load_f32(rows[c] + x, kN) : VF::zero();
    else
      for (int c = 0; c < kN; ++c) blk[c] = rows[c] ? load_f32(rows[c] + x, w) : VF::zero();
    transpose_store(blk, dst + size_t(x) * ld, ld);
  }
}

// The 2 kN values [a, b] as (a[0], b[0], a[1], b[1], ...) into [a, b] (interleave_pairs), and back
// (deinterleave_pairs: a = the even positions, b = the odd ones).
#if defined(FAL_SIMD_AVX512)
// a, b = lanes i0, i1 of the 32 values [a, b] (vpermt2ps)
inline void permute_pairs(VF& a, VF& b, __m512i i0, __m512i i1) {
  const __m512 x = _mm512_permutex2var_ps(a.v, i0, b.v), y = _mm512_permutex2var_ps(a.v, i1, b.v);
  a.v = x;
  b.v = y;
}
inline void interleave_pairs(VF& a, VF& b) {
  permute_pairs(a, b, _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0),
                _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8));
}
inline void deinterleave_pairs(VF& a, VF& b) {
  permute_pairs(a, b, _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0),
                _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1));
}
#else
inline void interleave_pairs(VF& a, VF& b) {
  const __m256 u = _mm256_unpacklo_ps(a.v, b.v), w = _mm256_unpackhi_ps(a.v, b.v);  // per 128-bit half
  a.v = _mm256_permute2f128_ps(u, w, 0x20);
  b.v = _mm256_permute2f128_ps(u, w, 0x31);
}
inline void deinterleave_pairs(VF& a, VF& b) {
  const __m256 e = _mm256_shuffle_ps(a.v, b.v, 0x88), o = _mm256_shuffle_ps(a.v, b.v, 0xDD);  // 64-bit chunks 0 2 1 3
  a.v = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8));
  b.v = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8));
}
#endif

// p[0, kN) = x as T: fp32 as is; fp16 and bf16 rounded to nearest even, the bits of the scalar
// StoreFrom<T>::cvt (numeric.h) except a NaN's payload in fp16 (vcvtps2ph). bf16 by integer
// rounding, not vcvtneps2bf16, which flushes subnormals to zero.
inline void store_vec(VF x, float* p) { x.store(p); }
#if defined(FAL_SIMD_AVX512)
inline void store_vec(VF x, fp16_t* p) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline void store_vec(VF x, bf16_t* p) {
  const __m512i u = _mm512_castps_si512(x.v), hi = _mm512_srli_epi32(u, 16);
  const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(hi, _mm512_set1_epi32(1)));
  const __mmask16 nan = _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q);  // quiet NaN: the high half | 0x40
  const __m512i r =
      _mm512_mask_or_epi32(_mm512_srli_epi32(_mm512_add_epi32(u, bias), 16), nan, hi, _mm512_set1_epi32(0x40));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}
#else
inline void store_vec(VF x, fp16_t* p) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT));
}
inline void store_vec(VF x, bf16_t* p) {
  const __m256i u = _mm256_castps_si256(x.v), hi = _mm256_srli_epi32(u, 16);
  const __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(hi, _mm256_set1_epi32(1)));
  const __m256 nan = _mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q);  // quiet NaN: the high half | 0x40
  const __m256i r = _mm256_blendv_epi8(_mm256_srli_epi32(_mm256_add_epi32(u, bias), 16),
                                       _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), _mm256_castps_si256(nan));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));  // <= 0xffff: exact
}
#endif

// dst[0, n) = src[0, n) * mul as T (store_vec, a scalar tail; any n). Returns the sum of y - y over
// the stored values y: NaN when one of them is NaN or infinite.
template <typename T>
inline float store_row(const float* src, int n, float mul, T* dst) {
  const VF m = VF::set1(mul);
  VF chk = VF::zero();
  int x = 0;
  for (; x + kN <= n; x += kN) {
    const VF y = VF::load(src + x) * m;
    store_vec(y, dst + x);
    chk = chk + (y - y);
  }
  float c = chk.hsum();
  for (; x < n; ++x) {
    const float y = src[x] * mul;
    dst[x] = StoreFrom<T>::cvt(y);
    c += y - y;
  }
  return c;
}

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
