// split_bf16.h -- fp16 (and, where torch's float32 matmul precision allows it, fp32) operands for
// bf16 products: a value as the sum of two bf16 values, hi + lo, so that AMX's tdpbf16ps (bf16
// inputs only on this hardware) runs the fp16 / fp32 forward (fwd_amx.cpp) and backward
// (bwd_amx.cpp). AVX-512 objects only.
//   hi = x with its low 16 bits cleared (x truncated to bf16: exact as a bf16)
//   lo = x - hi (exact in fp32), rounded to bf16 where it is stored
// An fp16 value has an 11-bit significand: hi holds its first 8 bits and lo the other 3, so
// hi + lo == x exactly (bf16 has fp32's exponent range: no fp16 value, subnormals included, falls
// below it). An fp32 value (P, the backward's dS; fp32 inputs) keeps 16-17 bits (relative error
// <= 2^-17, against fp16's 2^-11) -- torch's "each float32 number as the sum of two bfloat16
// numbers" of set_float32_matmul_precision("high").
// The products a b = ah bh + ah bl + al bh (+ al bl, <= 2^-18 |a b|, dropped) are each exact in
// fp32 and summed in fp32 by the tile unit. An infinite x gives hi = x, lo = 0 (x - hi would be
// NaN); a NaN gives a NaN hi and lo. An infinite operand still meets the other operand's lo part (0
// where that value is exact in bf16): 0 x inf = NaN where fp32 products give inf -- the forward's
// NaN pass redoes such tiles (cpu_kernels.h); a backward with infinite inputs gives NaN there.
#pragma once
#include "cpu/simd/micro_bf16.h"

#if !defined(FAL_SIMD_AVX512)
#error "split_bf16.h belongs to the AVX-512 objects"
#endif

namespace fal::cpu::FAL_CPU_NS {
namespace {

// hi and lo (above) of 16 fp32 values
inline void split_hi_lo(__m512 x, __m512& hi, __m512& lo) {
  hi = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(int(0xFFFF0000u))));
  const __mmask16 inf = _mm512_fpclass_ps_mask(x, 0x18);  // +inf, -inf
  lo = _mm512_maskz_sub_ps(__mmask16(~inf), x, hi);
}
// The first n (0 < n <= 32) values at p as fp32: elements 0-15 in f0, 16-31 in f1, zeros past n
inline void load32(const fp16_t* p, int n, __m512& f0, __m512& f1) {
  const __m512i x = _mm512_maskz_loadu_epi16(first32(n), p);
  f0 = _mm512_cvtph_ps(_mm512_castsi512_si256(x));
  f1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(x, 1));
}
inline void load32(const float* p, int n, __m512& f0, __m512& f1) {
  auto first = [](int k) { return __mmask16(k >= 16 ? 0xFFFFu : (1u << std::max(k, 0)) - 1u); };
  f0 = _mm512_maskz_loadu_ps(first(n), p);
  f1 = n > 16 ? _mm512_maskz_loadu_ps(first(n - 16), p + 16) : _mm512_setzero_ps();
}
// The first n (<= 32) values at p split: their hi and lo as 32 bf16 values in element order, zeros
// beyond n or for a null p
template <typename T>
inline void split32(const T* p, int n, __m512i& hi, __m512i& lo) {
  if (!p || n <= 0) {
    hi = lo = _mm512_setzero_si512();
    return;
  }
  __m512 f0, f1, h0, l0, h1, l1;
  load32(p, n, f0, f1);
  split_hi_lo(f0, h0, l0);
  split_hi_lo(f1, h1, l1);
  const __m512bh bh = _mm512_cvtne2ps_pbh(h1, h0), bl = _mm512_cvtne2ps_pbh(l1, l0);
  hi = reinterpret_cast<const __m512i&>(bh);
  lo = reinterpret_cast<const __m512i&>(bl);
}
template <bool kLo, typename T>
inline __m512i load_split(const T* p, int n) {
  __m512i hi, lo;
  split32(p, n, hi, lo);
  return kLo ? lo : hi;
}

// copy_pairs of an fp16 / fp32 row: its hi and lo as pairs into dst_hi / dst_lo ((n + 1) / 2 pairs
// each)
template <typename T>
inline void split_pairs(const T* row, int n, uint32_t* dst_hi, uint32_t* dst_lo) {
  const int n2 = (n + 1) / 2;
  for (int x = 0; x < n2; x += kN) {
    const int e = std::min(2 * kN, n - 2 * x), w = std::min(kN, n2 - x);  // elements, pairs
    const __mmask16 mw = __mmask16((1u << w) - 1u);
    __m512i hi, lo;
    split32(row + 2 * x, e, hi, lo);
    _mm512_mask_storeu_epi32(dst_hi + x, mw, hi);
    _mm512_mask_storeu_epi32(dst_lo + x, mw, lo);
  }
}

// transpose_pairs of kN fp16 / fp32 rows' hi (kLo false) or lo parts
template <bool kLo, typename T>
inline void transpose_split(const T* const* rows, int d, uint32_t* dst, int ld) {
  for (int x0 = 0; x0 < d; x0 += 2 * kN) {
    const int n = std::min(2 * kN, d - x0);
    VF blk[kN];
    for (int c = 0; c < kN; ++c) blk[c].v = _mm512_castsi512_ps(load_split<kLo>(rows[c] ? rows[c] + x0 : nullptr, n));
    transpose_store(blk, reinterpret_cast<float*>(dst + size_t(x0 / 2) * ld), ld);
  }
}

// pack_row_pairs of two fp16 / fp32 rows, hi parts to dst_hi and lo parts to dst_lo
template <typename T>
inline void split_row_pairs(const T* a, const T* b, int valid, int n, uint32_t* dst_hi, uint32_t* dst_lo) {
  const __m512i ilo = _mm512_load_si512(kPairIdx), ihi = _mm512_load_si512(kPairIdx + 32);
  for (int x = 0; x < n; x += 2 * kN) {
    const int m = std::max(0, std::min(2 * kN, valid - x));
    __m512i ah, al, bh, bl;
    split32(a && m > 0 ? a + x : nullptr, m, ah, al);  // (no pointer past the row)
    split32(b && m > 0 ? b + x : nullptr, m, bh, bl);
    _mm512_storeu_si512(dst_hi + x, _mm512_permutex2var_epi16(ah, ilo, bh));
    _mm512_storeu_si512(dst_lo + x, _mm512_permutex2var_epi16(al, ilo, bl));
    if (x + kN < n) {
      _mm512_storeu_si512(dst_hi + x + kN, _mm512_permutex2var_epi16(ah, ihi, bh));
      _mm512_storeu_si512(dst_lo + x + kN, _mm512_permutex2var_epi16(al, ihi, bl));
    }
  }
}

// pack_tile_pairs of fp16 / fp32 K / V: the hi parts to kp / vp, the lo parts to kpl / vpl (same
// layouts)
template <typename T>
inline void split_tile_pairs(const T* k, const KvRows& krows, const T* v, const KvRows& vrows, int j0, int cols, int d,
                             int dv, int dvp, uint32_t* kp, uint32_t* kpl, uint32_t* vp, uint32_t* vpl) {
  for (int c0 = 0; c0 < kBN; c0 += kN) {
    const T* kr[kN];
    for (int c = 0; c < kN; ++c) kr[c] = c0 + c < cols ? k + krows.at(j0 + c0 + c) : nullptr;
    transpose_split<false>(kr, d, kp + c0, kBN);
    transpose_split<true>(kr, d, kpl + c0, kBN);
  }
  for (int j = 0; j < kBN / 2; ++j)
    split_row_pairs(2 * j < cols ? v + vrows.at(j0 + 2 * j) : nullptr,
                    2 * j + 1 < cols ? v + vrows.at(j0 + 2 * j + 1) : nullptr, dv, dvp, vp + size_t(j) * dvp,
                    vpl + size_t(j) * dvp);
}

// 32 fp32 P values (two vectors) -> consecutive bf16 pairs of their hi and lo
inline void split_p32(__m512 p0, __m512 p1, uint32_t* dst_hi, uint32_t* dst_lo) {
  __m512 h0, l0, h1, l1;
  split_hi_lo(p0, h0, l0);
  split_hi_lo(p1, h1, l1);
  const __m512bh bh = _mm512_cvtne2ps_pbh(h1, h0), bl = _mm512_cvtne2ps_pbh(l1, l0);
  _mm512_storeu_si512(dst_hi, reinterpret_cast<const __m512i&>(bh));
  _mm512_storeu_si512(dst_lo, reinterpret_cast<const __m512i&>(bl));
}
// pack_f32_consecutive, split: row r (n fp32, n a multiple of 2 kN) -> hi / lo pairs
inline void split_f32_consecutive(const float* r, int n, uint32_t* dst_hi, uint32_t* dst_lo) {
  for (int c = 0; c < n; c += 2 * kN)
    split_p32(_mm512_loadu_ps(r + c), _mm512_loadu_ps(r + c + kN), dst_hi + c / 2, dst_lo + c / 2);
}

// pack_f32_row_pairs, split: fp32 rows a, b -> the pairs (a[x], b[x]) of their hi and lo parts, x < n
// (n a multiple of kN) -- the backward's P and dS as pairs over rows
inline void split_f32_row_pairs(const float* a, const float* b, int n, uint32_t* dst_hi, uint32_t* dst_lo) {
  auto words = [](__m512 x) {  // 16 fp32 -> 16 bf16 in the low halves of 32-bit lanes
    const __m256bh h = _mm512_cvtneps_pbh(x);
    return _mm512_cvtepu16_epi32(reinterpret_cast<const __m256i&>(h));
  };
  for (int x = 0; x < n; x += kN) {
    __m512 ah, al, bh, bl;
    split_hi_lo(_mm512_loadu_ps(a + x), ah, al);
    split_hi_lo(_mm512_loadu_ps(b + x), bh, bl);
    _mm512_storeu_si512(dst_hi + x, _mm512_or_si512(words(ah), _mm512_slli_epi32(words(bh), 16)));
    _mm512_storeu_si512(dst_lo + x, _mm512_or_si512(words(al), _mm512_slli_epi32(words(bl), 16)));
  }
}

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
