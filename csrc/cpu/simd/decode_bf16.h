// decode_bf16.h -- the decode products for bf16 K/V on AVX512_BF16 (vdpbf16ps), used by decode.cpp
// for every query row (S = Q K^T) and, from kPairsPvMinRows rows (GQA heads packed as rows,
// speculative decoding), for O += P V. AVX-512 objects only.
// With several rows the decode is no longer bound by memory alone: R rows cost 4 R d FLOPs per key
// against 4 d bytes of bf16 K and V. The fp32 kernels (decode_qk_rows_grouped / decode_pv_rows) convert K
// and V to fp32 and run one FMA per product; these take bf16 pairs, one vdpbf16ps per two products,
// as the bf16 forward does (micro_bf16.h):
//   S = Q K^T:  each row's pairs against the K rows in place, one reduction per key
//               (decode_qk_rows_bf16); the scale applied to the fp32 sums (q stays exact in bf16);
//   O += P V:   from kPairsPvMinRows rows: V packed as pairs over keys (vpk[j2][x]), P rounded to
//               bf16 and broadcast as pairs (the row sums keep the unrounded fp32 P, as in the
//               forward); fewer rows: the fp32 P V of decode_rows.h.
// Beyond kColsMinRows rows (and no score transform) S is computed transposed, one lane per row
// (decode_qk_cols_bf16 on Q^T pairs packed once, each K pair broadcast from the row in place), so
// the products need no reduction and the softmax none (softmax_cols_step).
#pragma once
#include <cstring>

#include "cpu/simd/micro_bf16.h"

#if !defined(FAL_SIMD_AVX512)
#error "decode_bf16.h needs AVX512_BF16 (FAL_SIMD_AVX512)"
#endif

namespace fal::cpu::FAL_CPU_NS {
namespace {

// Pairs over keys: vpk[j2][x] = (v_{2 j2}[x], v_{2 j2 + 1}[x]) for j2 < ceil(nk / 2), x < dvp.
inline void decode_pack_v_pairs(const bf16_t* const* vp, int nk, int dv, int dvp, uint32_t* vpk) {
  for (int j2 = 0; 2 * j2 < nk; ++j2)
    pack_row_pairs(vp[2 * j2], 2 * j2 + 1 < nk ? vp[2 * j2 + 1] : nullptr, dv, dvp, vpk + size_t(j2) * dvp);
}

// q row -> pairs (q[2 x2], q[2 x2 + 1]), zero past d.
inline void decode_q_pairs(const bf16_t* q, int d, uint32_t* qp) { copy_pairs(q, d, qp); }

// From this many rows, O += P V runs on bf16 pairs (decode_pack_v_pairs + decode_pv_rows_bf16); fewer
// rows run the fp32 P V on the V rows in place (decode_pv_rows: bf16 read split, one op per 16 values
// converts), where packing V cost more than it saved. A/B in one process (Zen 5, 1 thread, H8, 32768
// keys, D128): 2 rows 7.9 -> 6.7 ms, 3 rows 9.0 -> 7.7, 4 rows 9.6 vs 9.8; since the split read, calls
// alternating in one process (Zen 4, 1 thread, H2 1024 keys D128, L2): fp32 P V 1.03-1.06x pairs at
// 4-5 rows, 1.0x at 6, 0.89-0.96x at 8; streamed (2 threads, 32768 keys) GQA 32/8 1.025x, 4 rows
// H32 1.045x.
constexpr int kPairsPvMinRows = 6;

// S = Q K^T of R query rows (1..8) against the block's kN keys, K rows read in place as pairs over d
// (no packing): one vdpbf16ps per 32 products against a bf16 -> fp32 shift and an FMA per 16 (the
// fp32 path); the scale c applied to the fp32 sums. Keys in groups of G (R G <= 16 accumulators),
// so each K line is loaded once and feeds R vdpbf16ps, one reduction (hsum_each) per group for its
// R x G scores. Row by row, a token-major cache re-read every K line per query row, and there the
// block's rows of one head lie a multiple of 4 KB apart (H32 D128 bf16: 8 KB), all in one L1 set
// with more rows than it has ways: each re-read missed L1. Against K packed as transposed pairs
// (the path before, from 5 rows) the row-by-row form already measured 1.0-1.3x (Zen 5). kp: kN
// valid row pointers (the caller repeats a row past the block's end and masks those scores), so the
// accumulators stay in registers. qp: R rows of pairs dp apart (zero past d); sall: R rows kN apart.
template <int R>
inline void decode_qk_rows_bf16(const uint32_t* qp, int dp, const bf16_t* const* kp, int d, float c, float* sall) {
  constexpr int G = R <= 1 ? 16 : R == 2 ? 8 : R <= 4 ? 4 : 2;  // keys per group
  static_assert(R * G <= kN, "one reduction per group");
  for (int g0 = 0; g0 < kN; g0 += G) {
    __m512 a[kN];  // a[r * G + g]: row r, key g0 + g (the rest stay zero for the reduction)
#pragma GCC unroll 16
    for (int i = 0; i < kN; ++i) a[i] = _mm512_setzero_ps();
    for (int x0 = 0; x0 < d; x0 += 2 * kN) {
      const __mmask32 mk = first32(d - x0);
      __m512bh kv[G];
#pragma GCC unroll 16
      for (int g = 0; g < G; ++g) kv[g] = as_bh(_mm512_maskz_loadu_epi16(mk, kp[g0 + g] + x0));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512bh qv = as_bh(_mm512_loadu_si512(qp + size_t(r) * dp + x0 / 2));
#pragma GCC unroll 16
        for (int g = 0; g < G; ++g) a[r * G + g] = _mm512_dpbf16_ps(a[r * G + g], kv[g], qv);
      }
    }
    VF acc[kN];
#pragma GCC unroll 16
    for (int i = 0; i < kN; ++i) acc[i].v = a[i];
    const __m512 sums = (hsum_each(acc) * VF::set1(c)).v;  // lane r * G + g
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) store_lanes({sums}, r * G, G, sall + r * kN + g0 - r * G);
  }
}

// Q^T as pairs: qT[x2 * kN + r] = (q_r[2 x2], q_r[2 x2 + 1]) for x2 < ceil(d / 2), r < kN (zero for
// r >= rows); qp: the rows as pairs (decode_q_pairs), dp apart.
inline void decode_q_pairs_cols(const uint32_t* qp, int dp, int rows, int d, uint32_t* qT) {
  for (int x2 = 0; x2 < (d + 1) / 2; ++x2)
    for (int r = 0; r < kN; ++r) qT[x2 * kN + r] = r < rows ? qp[size_t(r) * dp + x2] : 0u;
}

// S^T of the block: sT[jj * kN + r] = c * q_r . k_jj for its kN keys and the kN rows of qT, each K
// pair broadcast from the row in place into one vdpbf16ps against a Q^T pair vector: keys in two
// groups of 8 accumulators (8 K row pointers in registers), the Q^T vector loaded once per group. An
// odd d's last pair takes k[d - 1] alone (the element past it may be outside the tensor). kp: kN
// valid row pointers (as decode_qk_rows_bf16).
inline void decode_qk_cols_bf16(const uint32_t* qT, const bf16_t* const* kp, int d, float c, float* sT) {
  constexpr int G = 8;
  const int d2 = d / 2;
  for (int g0 = 0; g0 < kN; g0 += G) {
    const bf16_t* kr[G];
    __m512 a[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      kr[g] = kp[g0 + g];
      a[g] = _mm512_setzero_ps();
    }
    for (int x2 = 0; x2 < d2; ++x2) {
      const __m512bh qv = as_bh(_mm512_loadu_si512(qT + x2 * kN));
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) {
        uint32_t w;
        std::memcpy(&w, kr[g] + 2 * x2, sizeof w);
        a[g] = _mm512_dpbf16_ps(a[g], as_bh(_mm512_set1_epi32(int(w))), qv);
      }
    }
    if (d & 1) {
      const __m512bh qv = as_bh(_mm512_loadu_si512(qT + d2 * kN));
      for (int g = 0; g < G; ++g) a[g] = _mm512_dpbf16_ps(a[g], as_bh(_mm512_set1_epi32(int(kr[g][d - 1].bits))), qv);
    }
    const __m512 cs = _mm512_set1_ps(c);
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) _mm512_storeu_ps(sT + (g0 + g) * kN, _mm512_mul_ps(a[g], cs));
  }
}

// P^T (sT: kN keys x kN rows, fp32) -> pairs over keys, still one lane per row: pt[j2 * kN + r] =
// (P[r][2 j2], P[r][2 j2 + 1]) as bf16, for j2 < kN / 2.
inline void decode_p_pairs_cols(const float* sT, uint32_t* pt) {
  auto bits = [](const float* p) {  // kN fp32 -> bf16, each in the low half of a 32-bit lane
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(p));
    return _mm512_cvtepu16_epi32(reinterpret_cast<const __m256i&>(h));
  };
  for (int j2 = 0; j2 < kN / 2; ++j2) {
    const __m512i lo = bits(sT + 2 * j2 * kN), hi = bits(sT + (2 * j2 + 1) * kN);
    _mm512_storeu_si512(pt + j2 * kN, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
}

// P rows (kN fp32 each, kN apart) -> kN / 2 bf16 pairs per row, kN / 2 apart.
inline void decode_p_pairs(const float* p, int rows, uint32_t* pb) {
  for (int r = 0; r < rows; ++r) {
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(p + r * kN));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(pb + r * (kN / 2)), reinterpret_cast<const __m256i&>(h));
  }
}

// o[r][0..dvp) += sum_{j2 < n2} pb[r * rs + j2 * js] . vpk[j2][0..dvp)  (pairs over keys; P by rows:
// rs = kN / 2, js = 1; transposed, decode_p_pairs_cols: rs = 1, js = kN); o rows dvp apart.
// Blocked R rows x 4 vectors: each V pair vector feeds R vdpbf16ps.
template <int R>
inline void decode_pv_rows_bf16(const uint32_t* pb, int rs, int js, const uint32_t* vpk, int n2, int dvp, float* o) {
  constexpr int C = 4;
  int x0 = 0;
  for (; x0 + C * kN <= dvp; x0 += C * kN) {
    __m512 acc[R][C];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_loadu_ps(o + size_t(r) * dvp + x0 + c * kN);
    for (int j2 = 0; j2 < n2; ++j2) {
      const uint32_t* vr = vpk + size_t(j2) * dvp + x0;
      __m512bh vv[C];
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) vv[c] = as_bh(_mm512_loadu_si512(vr + c * kN));
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const __m512bh pr = as_bh(_mm512_set1_epi32(int(pb[r * rs + j2 * js])));
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], vv[c], pr);
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) _mm512_storeu_ps(o + size_t(r) * dvp + x0 + c * kN, acc[r][c]);
  }
  for (; x0 < dvp; x0 += kN) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_loadu_ps(o + size_t(r) * dvp + x0);
    for (int j2 = 0; j2 < n2; ++j2) {
      const __m512bh vv = as_bh(_mm512_loadu_si512(vpk + size_t(j2) * dvp + x0));
      for (int r = 0; r < R; ++r)
        acc[r] = _mm512_dpbf16_ps(acc[r], vv, as_bh(_mm512_set1_epi32(int(pb[r * rs + j2 * js]))));
    }
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(o + size_t(r) * dvp + x0, acc[r]);
  }
}

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
