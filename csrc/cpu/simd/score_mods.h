// score_mods.h -- the score transforms (softcap, ALiBi, masks) and the dropout of attn_math.h on kN
// lanes: the same formulas and the same Philox4x32-10 bits, vectorised.
#pragma once
#include "cpu/simd/common.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

// ---- score transforms, vectorised (ScoreMod::apply in attn_math.h is the definition; these are
// the same formulas on kN lanes, with the scalar apply for the tail of a row) ---------------------
// tanh(y): for |y| >= 0.625, 1 - 2 / (1 + e^{2y}) (fp32 tanh rounds to +-1 beyond |y| = 9); below,
// where that difference cancels (absolute error ~1e-7, i.e. a relative error growing as 1 / y --
// softcap 50 over ordinary scores multiplied it into the scores), the odd series y + y^3 P(y^2)
// with the minimax coefficients of the Cephes library's tanhf (relative error ~1 ulp).
inline VF tanh_v(VF y) {
  const VF yc = vmin(vmax(y, VF::set1(-9.f)), VF::set1(9.f));
  const VF e = exp2(yc * VF::set1(2.f * kLog2e));
  const VF large = VF::set1(1.f) - VF::set1(2.f) / (VF::set1(1.f) + e);
  const VF z = y * y;
  VF p = fma(z, VF::set1(-5.70498872745e-3f), VF::set1(2.06390887954e-2f));
  p = fma(p, z, VF::set1(-5.37397155531e-2f));
  p = fma(p, z, VF::set1(1.33314422036e-1f));
  p = fma(p, z, VF::set1(-3.33332819422e-1f));
  return select_lt(vabs(y), VF::set1(0.625f), fma(p * z, y, y), large);
}

alignas(64) constexpr float kIota[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// Transformed scores of row i, keys j0 + c for the kN lanes at s; *g = the softcap derivative.
inline VF mod_vec(const ScoreMod& m, VF x, int i, int j, VF* g) {
  if (m.softcap > 0.0) {
    const VF t = tanh_v(x * VF::set1(float(m.inv_softcap)));
    x = VF::set1(float(m.softcap)) * t;
    if (g) *g = VF::set1(1.f) - t * t;
  } else if (g) {
    *g = VF::set1(1.f);
  }
  if (m.slope != 0.f) {  // -slope |i + diag - j - lane|  (distances exact in fp32 below 2^24)
    const VF dist = VF::set1(float(int64_t(i) + m.alibi_diag - j)) - VF::load(kIota);
    x = x - VF::set1(m.slope) * vabs(dist);
  }
  const int64_t off = int64_t(i) * m.mask_row + j;
  if (m.mask_f) x = x + VF::load(m.mask_f + off);
  if (m.mask_b) x = keep_where(x, m.mask_b + off);
  return x;
}

// sr[c] <- transformed score of (row i, key j0 + c) for c < cols (an fp32 or bool mask: fp64
// inputs, whose mask is fp64, never reach the SIMD kernels)
inline void apply_mods_row(const ScoreMod& m, int i, int j0, float* sr, int cols) {
  int c = 0;
  for (; c + kN <= cols; c += kN) mod_vec(m, VF::load(sr + c), i, j0 + c, nullptr).store(sr + c);
  m.apply_row(i, j0 + c, sr + c, cols - c);
}

// ---- dropout, vectorised: Philox4x32-10 on kN counters at once (Dropout in attn_math.h is the
// definition; the same bits) ------------------------------------------------------------------------
#if defined(FAL_SIMD_AVX512)
using VI = __m512i;
inline VI vi_set1(uint32_t x) { return _mm512_set1_epi32(int(x)); }
inline VI vi_xor(VI a, VI b) { return _mm512_xor_si512(a, b); }
inline void vi_mulhilo(VI a, VI m, VI& hi, VI& lo) {
  const VI even = _mm512_mul_epu32(a, m), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}
inline VI vi_iota_plus(uint32_t base) {
  return _mm512_add_epi32(vi_set1(base), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}
#elif defined(FAL_SIMD_AVX2)
using VI = __m256i;
inline VI vi_set1(uint32_t x) { return _mm256_set1_epi32(int(x)); }
inline VI vi_xor(VI a, VI b) { return _mm256_xor_si256(a, b); }
inline void vi_mulhilo(VI a, VI m, VI& hi, VI& lo) {
  const VI even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}
inline VI vi_iota_plus(uint32_t base) {
  return _mm256_add_epi32(vi_set1(base), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#else
#error "score_mods.h: no Philox lanes for this ISA"
#endif

#if defined(FAL_SIMD_AVX512)
// The 4 Philox words of kN counters -> 4 vectors of 16 consecutive keys' words (a 4x4 transpose in
// every 128-bit lane, then lane shuffles), and the multiply by keep_scale or 0.
inline void keep_scale_keys(VI x0, VI x1, VI x2, VI x3, uint32_t thr, float ks, float* p) {
  const VI a0 = _mm512_unpacklo_epi32(x0, x1), a1 = _mm512_unpackhi_epi32(x0, x1);
  const VI b0 = _mm512_unpacklo_epi32(x2, x3), b1 = _mm512_unpackhi_epi32(x2, x3);
  const VI t0 = _mm512_unpacklo_epi64(a0, b0), t1 = _mm512_unpackhi_epi64(a0, b0);
  const VI t2 = _mm512_unpacklo_epi64(a1, b1), t3 = _mm512_unpackhi_epi64(a1, b1);
  const VI a = _mm512_shuffle_i32x4(t0, t1, 0x44), b = _mm512_shuffle_i32x4(t2, t3, 0x44);
  const VI c = _mm512_shuffle_i32x4(t0, t1, 0xEE), d = _mm512_shuffle_i32x4(t2, t3, 0xEE);
  const VI keys[4] = {_mm512_shuffle_i32x4(a, b, 0x88), _mm512_shuffle_i32x4(a, b, 0xDD),
                      _mm512_shuffle_i32x4(c, d, 0x88), _mm512_shuffle_i32x4(c, d, 0xDD)};
  const VI tv = vi_set1(thr);
  const __m512 sc = _mm512_set1_ps(ks);
  for (int q = 0; q < 4; ++q) {
    const __mmask16 keep = _mm512_cmp_epu32_mask(_mm512_srli_epi32(keys[q], 8), tv, _MM_CMPINT_NLT);
    _mm512_storeu_ps(p + 16 * q, _mm512_maskz_mul_ps(keep, _mm512_loadu_ps(p + 16 * q), sc));
  }
}
#elif defined(FAL_SIMD_AVX2)
inline void keep_scale_keys(VI x0, VI x1, VI x2, VI x3, uint32_t thr, float ks, float* p) {
  const VI a0 = _mm256_unpacklo_epi32(x0, x1), a1 = _mm256_unpackhi_epi32(x0, x1);
  const VI b0 = _mm256_unpacklo_epi32(x2, x3), b1 = _mm256_unpackhi_epi32(x2, x3);
  const VI t0 = _mm256_unpacklo_epi64(a0, b0), t1 = _mm256_unpackhi_epi64(a0, b0);
  const VI t2 = _mm256_unpacklo_epi64(a1, b1), t3 = _mm256_unpackhi_epi64(a1, b1);
  const VI keys[4] = {_mm256_permute2x128_si256(t0, t1, 0x20), _mm256_permute2x128_si256(t2, t3, 0x20),
                      _mm256_permute2x128_si256(t0, t1, 0x31), _mm256_permute2x128_si256(t2, t3, 0x31)};
  const VI tv = vi_set1(thr);  // (r >> 8) < 2^24: a signed compare is exact
  const __m256 sc = _mm256_set1_ps(ks);
  for (int q = 0; q < 4; ++q) {
    const __m256 drop = _mm256_castsi256_ps(_mm256_cmpgt_epi32(tv, _mm256_srli_epi32(keys[q], 8)));
    _mm256_storeu_ps(p + 8 * q, _mm256_andnot_ps(drop, _mm256_mul_ps(_mm256_loadu_ps(p + 8 * q), sc)));
  }
}
#else
#error "score_mods.h: no keep_scale_keys for this ISA"
#endif

// p[c] *= keep(i, j0 + c) ? keep_scale : 0 for c < n, and for the padding up to a multiple of 4 kN
// (p must hold it: the kernels' kBN-wide rows). j0 a multiple of 4, else the scalar definition.
inline void dropout_row_vec(const Dropout& d, int i, int j0, float* p, int n) {
  if (j0 % 4 != 0 || kBN % (4 * kN) != 0) return d.apply_row(i, j0, p, n);
  for (int g0 = 0; g0 < n; g0 += 4 * kN) {
    VI x0 = vi_iota_plus(uint32_t((j0 + g0) / 4)), x1 = vi_set1(uint32_t(i)), x2 = vi_set1(d.bh), x3 = vi_set1(d.off);
    uint32_t k0 = d.k0, k1 = d.k1;
    const VI m0 = vi_set1(0xD2511F53u), m1 = vi_set1(0xCD9E8D57u);
    for (int round = 0; round < 10; ++round) {
      VI hi0, lo0, hi1, lo1;
      vi_mulhilo(x0, m0, hi0, lo0);
      vi_mulhilo(x2, m1, hi1, lo1);
      x0 = vi_xor(vi_xor(hi1, x1), vi_set1(k0));
      x1 = lo1;
      x2 = vi_xor(vi_xor(hi0, x3), vi_set1(k1));
      x3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    keep_scale_keys(x0, x1, x2, x3, d.threshold, float(d.keep_scale), p + g0);
  }
}
}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
