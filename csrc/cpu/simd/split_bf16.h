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
// Three parts (fp32 at torch's default "highest" precision, fwd_amx.cpp): hi as above, mid = (x -
// hi) with its low 16 bits cleared, lo = x - hi - mid -- 8 + 8 + 8 significant bits, so hi + mid +
// lo == x exactly (bf16 subnormals aside: the tile unit reads them as 0). The products kept are
// those down to 2^-16 |a b|: ah bh + ah bm, and am bh + am bm + ah bl + al bh summed apart from them
// (fwd_amx.cpp), the dropped ones <= 3 2^-24 |a b|.
// The functions below take kParts (2 or 3) destinations, parts[0] the hi part; the two-part names
// (split_hi_lo, split_pairs, ...) are kParts = 2.
#pragma once
#include "cpu/simd/micro_bf16.h"

#if !defined(FAL_SIMD_AVX512)
#error "split_bf16.h belongs to the AVX-512 objects"
#endif

namespace fal::cpu::FAL_CPU_NS {
namespace {

// The kParts parts (above) of 16 fp32 values: parts[0] hi, then mid, lo (the last part not yet
// rounded to bf16; exact for kParts 3). An infinite x: hi = x, the other parts 0.
template <int kParts>
inline void split_parts(__m512 x, __m512 (&parts)[kParts]) {
  static_assert(kParts == 2 || kParts == 3, "two or three bf16 parts");
  const __m512i top = _mm512_set1_epi32(int(0xFFFF0000u));
  const __mmask16 fin = __mmask16(~_mm512_fpclass_ps_mask(x, 0x18));  // not +inf, -inf
  __m512 r = x;
  for (int i = 0; i + 1 < kParts; ++i) {
    parts[i] = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(r), top));
    r = _mm512_maskz_sub_ps(fin, r, parts[i]);
  }
  parts[kParts - 1] = r;
}
inline void split_hi_lo(__m512 x, __m512& hi, __m512& lo) {
  __m512 parts[2];
  split_parts<2>(x, parts);
  hi = parts[0];
  lo = parts[1];
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
// The first n (<= 32) values at p split: each part as 32 bf16 values in element order, zeros
// beyond n or for a null p
template <int kParts, typename T>
inline void split32_parts(const T* p, int n, __m512i (&out)[kParts]) {
  if (!p || n <= 0) {
    for (__m512i& o : out) o = _mm512_setzero_si512();
    return;
  }
  __m512 f0, f1, a[kParts], b[kParts];
  load32(p, n, f0, f1);
  split_parts<kParts>(f0, a);
  split_parts<kParts>(f1, b);
  for (int i = 0; i < kParts; ++i) {
    const __m512bh h = _mm512_cvtne2ps_pbh(b[i], a[i]);
    out[i] = reinterpret_cast<const __m512i&>(h);
  }
}
template <typename T>
inline void split32(const T* p, int n, __m512i& hi, __m512i& lo) {
  __m512i out[2];
  split32_parts<2>(p, n, out);
  hi = out[0];
  lo = out[1];
}
// part kPart of kParts (0: hi)
template <int kPart, int kParts, typename T>
inline __m512i load_split_part(const T* p, int n) {
  __m512i out[kParts];
  split32_parts<kParts>(p, n, out);
  return out[kPart];
}
template <bool kLo, typename T>
inline __m512i load_split(const T* p, int n) {
  return load_split_part<kLo ? 1 : 0, 2>(p, n);
}

// copy_pairs of an fp16 / fp32 row: its parts as pairs into dst[0..kParts) ((n + 1) / 2 pairs each)
template <int kParts, typename T>
inline void split_pairs_parts(const T* row, int n, uint32_t* const (&dst)[kParts]) {
  const int n2 = (n + 1) / 2;
  for (int x = 0; x < n2; x += kN) {
    const int e = std::min(2 * kN, n - 2 * x), w = std::min(kN, n2 - x);  // elements, pairs
    const __mmask16 mw = __mmask16((1u << w) - 1u);
    __m512i parts[kParts];
    split32_parts<kParts>(row + 2 * x, e, parts);
    for (int i = 0; i < kParts; ++i) _mm512_mask_storeu_epi32(dst[i] + x, mw, parts[i]);
  }
}
template <typename T>
inline void split_pairs(const T* row, int n, uint32_t* dst_hi, uint32_t* dst_lo) {
  split_pairs_parts<2>(row, n, {dst_hi, dst_lo});
}

// transpose_pairs of kN fp16 / fp32 rows' part kPart of kParts
template <int kPart, int kParts, typename T>
inline void transpose_split_part(const T* const* rows, int d, uint32_t* dst, int ld) {
  for (int x0 = 0; x0 < d; x0 += 2 * kN) {
    const int n = std::min(2 * kN, d - x0);
    VF blk[kN];
    for (int c = 0; c < kN; ++c)
      blk[c].v = _mm512_castsi512_ps(load_split_part<kPart, kParts>(rows[c] ? rows[c] + x0 : nullptr, n));
    transpose_store(blk, reinterpret_cast<float*>(dst + size_t(x0 / 2) * ld), ld);
  }
}
// ... of the hi (kLo false) or lo parts of two
template <bool kLo, typename T>
inline void transpose_split(const T* const* rows, int d, uint32_t* dst, int ld) {
  transpose_split_part<kLo ? 1 : 0, 2>(rows, d, dst, ld);
}

// pack_row_pairs of two fp16 / fp32 rows, part i to dst[i]
template <int kParts, typename T>
inline void split_row_pairs_parts(const T* a, const T* b, int valid, int n, uint32_t* const (&dst)[kParts]) {
  const __m512i ilo = _mm512_load_si512(kPairIdx), ihi = _mm512_load_si512(kPairIdx + 32);
  for (int x = 0; x < n; x += 2 * kN) {
    const int m = std::max(0, std::min(2 * kN, valid - x));
    __m512i ap[kParts], bp[kParts];
    split32_parts<kParts>(a && m > 0 ? a + x : nullptr, m, ap);  // (no pointer past the row)
    split32_parts<kParts>(b && m > 0 ? b + x : nullptr, m, bp);
    for (int i = 0; i < kParts; ++i) {
      _mm512_storeu_si512(dst[i] + x, _mm512_permutex2var_epi16(ap[i], ilo, bp[i]));
      if (x + kN < n) _mm512_storeu_si512(dst[i] + x + kN, _mm512_permutex2var_epi16(ap[i], ihi, bp[i]));
    }
  }
}
template <typename T>
inline void split_row_pairs(const T* a, const T* b, int valid, int n, uint32_t* dst_hi, uint32_t* dst_lo) {
  split_row_pairs_parts<2>(a, b, valid, n, {dst_hi, dst_lo});
}

// pack_tile_pairs of fp16 / fp32 K / V: part i of K to kp[i], of V to vp[i] (pack_tile_pairs'
// layouts)
template <int kParts, typename T>
inline void split_tile_pairs_parts(const T* k, const KvRows& krows, const T* v, const KvRows& vrows, int j0, int cols,
                                   int d, int dv, int dvp, uint32_t* const (&kp)[kParts],
                                   uint32_t* const (&vp)[kParts]) {
  for (int c0 = 0; c0 < kBN; c0 += kN) {
    const T* kr[kN];
    for (int c = 0; c < kN; ++c) kr[c] = c0 + c < cols ? k + krows.at(j0 + c0 + c) : nullptr;
    transpose_split_part<0, kParts>(kr, d, kp[0] + c0, kBN);
    transpose_split_part<1, kParts>(kr, d, kp[1] + c0, kBN);
    if constexpr (kParts == 3) transpose_split_part<2, kParts>(kr, d, kp[2] + c0, kBN);
  }
  for (int j = 0; j < kBN / 2; ++j) {
    uint32_t* rows[kParts];
    for (int i = 0; i < kParts; ++i) rows[i] = vp[i] + size_t(j) * dvp;
    split_row_pairs_parts<kParts>(2 * j < cols ? v + vrows.at(j0 + 2 * j) : nullptr,
                                  2 * j + 1 < cols ? v + vrows.at(j0 + 2 * j + 1) : nullptr, dv, dvp, rows);
  }
}
template <typename T>
inline void split_tile_pairs(const T* k, const KvRows& krows, const T* v, const KvRows& vrows, int j0, int cols, int d,
                             int dv, int dvp, uint32_t* kp, uint32_t* kpl, uint32_t* vp, uint32_t* vpl) {
  split_tile_pairs_parts<2>(k, krows, v, vrows, j0, cols, d, dv, dvp, {kp, kpl}, {vp, vpl});
}

// 32 fp32 P values (two vectors) -> consecutive bf16 pairs of each part, part i at dst[i]
template <int kParts>
inline void split_p32_parts(__m512 p0, __m512 p1, uint32_t* const (&dst)[kParts]) {
  __m512 a[kParts], b[kParts];
  split_parts<kParts>(p0, a);
  split_parts<kParts>(p1, b);
  for (int i = 0; i < kParts; ++i) {
    const __m512bh h = _mm512_cvtne2ps_pbh(b[i], a[i]);
    _mm512_storeu_si512(dst[i], reinterpret_cast<const __m512i&>(h));
  }
}
inline void split_p32(__m512 p0, __m512 p1, uint32_t* dst_hi, uint32_t* dst_lo) {
  split_p32_parts<2>(p0, p1, {dst_hi, dst_lo});
}
// pack_f32_consecutive, split: row r (n fp32, n a multiple of 2 kN) -> each part's pairs at dst[i]
template <int kParts>
inline void split_f32_consecutive_parts(const float* r, int n, uint32_t* const (&dst)[kParts]) {
  for (int c = 0; c < n; c += 2 * kN) {
    uint32_t* at[kParts];
    for (int i = 0; i < kParts; ++i) at[i] = dst[i] + c / 2;
    split_p32_parts<kParts>(_mm512_loadu_ps(r + c), _mm512_loadu_ps(r + c + kN), at);
  }
}
inline void split_f32_consecutive(const float* r, int n, uint32_t* dst_hi, uint32_t* dst_lo) {
  split_f32_consecutive_parts<2>(r, n, {dst_hi, dst_lo});
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
