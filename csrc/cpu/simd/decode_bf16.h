// decode_bf16.h -- the decode products for bf16 K/V on AVX512_BF16 (vdpbf16ps), used by decode.cpp
// for S = Q K^T of every query row and for O += P V beyond 8 rows (several rows: GQA heads packed
// as rows, speculative decoding; 2..8 of them through decode_pairs.h). AVX-512 objects only.
// With several rows the decode is no longer bound by memory alone: R rows cost 4 R d FLOPs per key
// against 4 d bytes of bf16 K and V. The fp32 kernels (decode_qk_rows_grouped / decode_pv_rows) convert K
// and V to fp32 and run one FMA per product; these take bf16 pairs, one vdpbf16ps per two products,
// as the bf16 forward does (micro_bf16.h), the scale applied to the fp32 sums (q stays exact in bf16):
//   1 row:       the row's pairs against the K rows in place, one reduction per 16 keys
//                (decode_qk_rows_bf16<1>, or key by key: decode_qk_row_keys_bf16); P V in fp32 on
//                the V rows (decode_head.h);
//   2..8 rows:   Q^T in slices (decode_q_pairs_t: each row owns S = kN / (rows rounded up to a
//                power of 2) adjacent lanes, one per slice of its d sum), S K pairs broadcast from
//                the row in place into one vdpbf16ps whose every lane does work (decode_qk_slices8;
//                S = 4 and 8 rotate Q^T instead, decode_pairs.h), 3 rows as 1 row
//                (decode_qk_rows_bf16<3>); the rest of these rows' walk -- the scores in row order,
//                P as bf16 pairs, P V on V pairs in registers, blocks of 64 keys -- is
//                decode_pairs.h's;
//   9..16 rows:  (no score transform) S transposed, one lane per row (decode_qk_cols_bf16: Q^T with
//                S = 1), the softmax per lane (softmax_cols_step), P V on V packed as pairs once per
//                block (decode_pack_v_pairs + decode_pv_rows_bf16), shared by the row blocks; with a
//                score transform the row-wise path of 2..8 rows (Q^T with S = 1).
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

// S = Q K^T of R query rows (1 or 3) against the block's kN keys, K rows read in place as pairs over
// d (no packing): one vdpbf16ps per 32 products against a bf16 -> fp32 shift and an FMA per 16 (the
// fp32 path); the scale c applied to the fp32 sums. Keys in groups of G (R G <= 16 accumulators),
// so each K line is loaded once and feeds R vdpbf16ps, one reduction (hsum_each) per group for its
// R x G scores. 3 rows: Q^T slices (below) would leave a quarter of the lanes empty -- 0.93-0.94x
// this (Zen 4, 1024 keys from L2 and 32768 streamed). kp: kN valid row pointers (the caller repeats
// a row past the block's end and masks those scores), so the accumulators stay in registers. qp: R
// rows of pairs dp apart (zero past d); sall: R rows lds apart.
template <int R>
inline void decode_qk_rows_bf16(const uint32_t* qp, int dp, const bf16_t* const* kp, int d, float c, float* sall,
                                int lds = kN) {
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
    for (int r = 0; r < R; ++r) store_lanes({sums}, r * G, G, sall + r * lds + g0 - r * G);
  }
}

// decode_qk_rows_bf16<1> key by key (decode_rows.h's decode_qk_row_keys): q's pairs (NV2 vectors
// of kN pairs, d <= 2 kN NV2) in registers, each K row read front to back into its own accumulator.
template <int NV2>
inline void decode_qk_row_keys_bf16(const uint32_t* qp, const bf16_t* const* kp, int d, float c, float* sc) {
  const __mmask32 ml = first32(d - (NV2 - 1) * 2 * kN);  // the last vector's elements
  __m512bh qv[NV2];
#pragma GCC unroll 8
  for (int x = 0; x < NV2; ++x) qv[x] = as_bh(_mm512_loadu_si512(qp + x * kN));
  VF a[kN];
#pragma GCC unroll 16
  for (int g = 0; g < kN; ++g) {
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};  // two chains per key
#pragma GCC unroll 8
    for (int x = 0; x + 1 < NV2; ++x)
      acc[x % 2] = _mm512_dpbf16_ps(acc[x % 2], as_bh(_mm512_loadu_si512(kp[g] + x * 2 * kN)), qv[x]);
    acc[(NV2 - 1) % 2] = _mm512_dpbf16_ps(acc[(NV2 - 1) % 2],
                                          as_bh(_mm512_maskz_loadu_epi16(ml, kp[g] + (NV2 - 1) * 2 * kN)), qv[NV2 - 1]);
    a[g].v = _mm512_add_ps(acc[0], acc[1]);
  }
  (hsum_each(a) * VF::set1(c)).store(sc);
}

// Q^T slices for `rows` rows: S = kN / (rows rounded up to a power of 2); 1 from 9 rows.
inline int decode_q_slices(int rows) {
  int p = 1;
  while (p < rows) p *= 2;
  return p >= kN ? 1 : kN / p;
}

// Q^T as pairs in S slices: qT[t * kN + r * S + s] = (q_r[2 x2], q_r[2 x2 + 1]) for x2 = t S + s <
// ceil(d / 2), zero past the pairs and for r >= rows; t < ceil(ceil(d / 2) / S). qp: the rows as
// pairs (decode_q_pairs), dp apart.
inline void decode_q_pairs_t(const uint32_t* qp, int dp, int rows, int d, int S, uint32_t* qT) {
  const int d2 = (d + 1) / 2;
  for (int t = 0; t * S < d2; ++t)
    for (int r = 0; r < kN / S; ++r)
      for (int s = 0; s < S; ++s) {
        const int x2 = t * S + s;
        qT[t * kN + r * S + s] = r < rows && x2 < d2 ? qp[size_t(r) * dp + x2] : 0u;
      }
}

// S consecutive K pairs from k (2 S bf16) repeated over the vector: lane r S + s gets pair s. The
// tail form reads n < 2 S values (a masked load: nothing past them), zeros after.
template <int S>
inline __m512bh bcast_pairs(const bf16_t* k) {
  if constexpr (S == 1) {
    uint32_t w;
    std::memcpy(&w, k, sizeof w);
    return as_bh(_mm512_set1_epi32(int(w)));
  } else if constexpr (S == 2) {
    uint64_t w;
    std::memcpy(&w, k, sizeof w);
    return as_bh(_mm512_set1_epi64(int64_t(w)));
  } else if constexpr (S == 4) {
    return as_bh(_mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k))));
  } else {
    static_assert(S == 8, "slices: 1, 2, 4, 8");
    return as_bh(_mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(k))));
  }
}
template <int S>
inline __m512bh bcast_pairs_tail(const bf16_t* k, int n) {
  const __m512i v = _mm512_maskz_loadu_epi16(first32(n), k);
  if constexpr (S == 1) return as_bh(_mm512_broadcastd_epi32(_mm512_castsi512_si128(v)));
  if constexpr (S == 2) return as_bh(_mm512_broadcastq_epi64(_mm512_castsi512_si128(v)));
  if constexpr (S == 4) return as_bh(_mm512_broadcast_i32x4(_mm512_castsi512_si128(v)));
  return as_bh(_mm512_broadcast_i64x4(_mm512_castsi512_si256(v)));
}

// out[g] = the products of 8 keys (K rows kp[g] in place) against Q^T in S slices (decode_q_pairs_t):
// lane r S + s of out[g] sums slice s of row r's d. Keys in two halves of 4, each key on two
// accumulators (even and odd steps): 8 independent vdpbf16ps chains from 4 row pointers, which stay
// in registers (8 pointers spilled 3 of them to vector registers: 3 moves per step).
template <int S>
__attribute__((always_inline)) inline void decode_qk_slices8(const uint32_t* qT, const bf16_t* const* kp, int d,
                                                             __m512* out) {
  const int full = d / (2 * S), tail = d - full * 2 * S;  // whole steps; bf16 values left
  for (int g0 = 0; g0 < 8; g0 += 4) {
    const bf16_t* kr[4];  // local copies and accumulators: an accumulator behind the out pointer
    __m512 a[4][2];       // was stored after every product
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) {
      kr[g] = kp[g0 + g];
      a[g][0] = a[g][1] = _mm512_setzero_ps();
    }
    int t = 0;
    for (; t + 1 < full; t += 2) {
      const __m512bh q0 = as_bh(_mm512_loadu_si512(qT + t * kN)), q1 = as_bh(_mm512_loadu_si512(qT + (t + 1) * kN));
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) {
        a[g][0] = _mm512_dpbf16_ps(a[g][0], bcast_pairs<S>(kr[g] + 2 * S * t), q0);
        a[g][1] = _mm512_dpbf16_ps(a[g][1], bcast_pairs<S>(kr[g] + 2 * S * (t + 1)), q1);
      }
    }
    if (t < full) {
      const __m512bh qv = as_bh(_mm512_loadu_si512(qT + t * kN));
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) a[g][0] = _mm512_dpbf16_ps(a[g][0], bcast_pairs<S>(kr[g] + 2 * S * t), qv);
    }
    if (tail) {
      const __m512bh qv = as_bh(_mm512_loadu_si512(qT + full * kN));
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g)
        a[g][1] = _mm512_dpbf16_ps(a[g][1], bcast_pairs_tail<S>(kr[g] + 2 * S * full, tail), qv);
    }
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) out[g0 + g] = _mm512_add_ps(a[g][0], a[g][1]);
  }
}

// S^T of the block for 9..16 rows: sT[jj * kN + r] = c * q_r . k_jj (Q^T with S = 1: one lane per
// row), each K pair broadcast from the row in place; keys in two groups of 8 (decode_qk_slices8).
inline void decode_qk_cols_bf16(const uint32_t* qT, const bf16_t* const* kp, int d, float c, float* sT) {
  const __m512 cs = _mm512_set1_ps(c);
  for (int g0 = 0; g0 < kN; g0 += 8) {
    __m512 a[8];
    decode_qk_slices8<1>(qT, kp + g0, d, a);
#pragma GCC unroll 8
    for (int g = 0; g < 8; ++g) _mm512_storeu_ps(sT + (g0 + g) * kN, _mm512_mul_ps(a[g], cs));
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

// o[r][0..dvp) += sum_{j2 < n2} pb[r * rs + j2 * js] . vpk[j2][0..dvp)  (pairs over keys; P
// transposed, decode_p_pairs_cols: rs = 1, js = kN); o rows dvp apart.
// Blocked R rows x 4 vectors: each V pair vector feeds R vdpbf16ps. pf: the caller's prefetch
// pieces, one per kPvPiecePairs pairs (16 keys) of each 4-vector pass (decode_pairs_cols_steps).
constexpr int kPvPiecePairs = 8;
template <int R, typename F>
inline void decode_pv_rows_bf16(const uint32_t* pb, int rs, int js, const uint32_t* vpk, int n2, int dvp, float* o,
                                F&& pf) {
  constexpr int C = 4;
  int x0 = 0;
  for (; x0 + C * kN <= dvp; x0 += C * kN) {
    __m512 acc[R][C];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_loadu_ps(o + size_t(r) * dvp + x0 + c * kN);
    for (int j2 = 0; j2 < n2; ++j2) {
      if (j2 % kPvPiecePairs == kPvPiecePairs - 1) pf();
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
