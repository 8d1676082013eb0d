// decode_pairs.h -- the decode of several query rows (2..16: GQA heads packed as rows, speculative
// decoding) on bf16 K/V with AVX512_BF16 (vdpbf16ps), K and V rows read in place, the walk over a
// head's keys in blocks of decode_pairs_keys(p) keys (decode_pairs_run, DecodeHead::run's
// several-row path):
//   by rows (2..8 rows; up to 16 with a score transform): S = Q K^T from Q^T rotated or in slices,
//     the softmax row by row, P rounded to bf16 pairs (the row sums keep the unrounded fp32 P, as in
//     the forward), O += P V on V pairs interleaved in registers (decode_pairs_block);
//   transposed (9..16 rows, no score transform; DecodeHead::cols): S^T one lane per row, the softmax
//     per lane, P V on V packed as pairs once per block (decode_pairs_cols_block). Against 16-key
//     blocks, in one process, B1 H8 D128 2 threads (Zen 4, 2026-12-04): 16 rows head-major 1.10x
//     streamed (32768 keys), 1.13x from L3 (2048); 12 rows 1.06x.
// AVX-512 objects only (through decode_head.h).
#pragma once
#include "cpu/cpu_kernels.h"
#include "cpu/simd/decode_bf16.h"
#include "cpu/simd/decode_rows.h"
#include "cpu/simd/prefetch.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

// Q^T rotated (decode_q_pairs_rot, decode_qk_rot8) for S = 4 and 8 with d up to kRowKeysMaxVecs
// vectors of pairs; decode_q_pairs_t's slices otherwise.
inline bool decode_q_rot(int S, int d) { return (S == 4 || S == 8) && d <= kRowKeysMaxVecs * 2 * kN; }

// Q^T rotated, for S = 4 / 8 (P = kN / S row groups): qR[(t * P + m) * kN + l] = pair 16 t + l of
// row (l / S + m) mod P (zero past the pairs and for rows >= rows), t < ceil(ceil(d / 2) / 16).
inline void decode_q_pairs_rot(const uint32_t* qp, int dp, int rows, int d, int S, uint32_t* qR) {
  const int d2 = (d + 1) / 2, P = kN / S;
  for (int t = 0; t * kN < d2; ++t)
    for (int m = 0; m < P; ++m)
      for (int l = 0; l < kN; ++l) {
        const int r = (l / S + m) % P, x2 = t * kN + l;
        qR[(t * P + m) * kN + l] = r < rows && x2 < d2 ? qp[size_t(r) * dp + x2] : 0u;
      }
}

// decode_qk_slices8<S> (S = 4, 8) without the broadcasts: each K row read as whole vectors of 16
// pairs (NT of them, the last masked) and multiplied by P rotations of Q^T (decode_q_pairs_rot),
// one accumulator per key and rotation, whose lane groups are then rotated back to row order and
// added: lane r S + s of out[g] sums row r's pairs x2 = s (mod S), as the slices do. On a Zen 4 a
// vdpbf16ps fed by a 128-bit broadcast load (vbroadcasti32x4: the slices' K pairs at S = 4) runs at
// 70-76 % of its rate, fed by a plain or a 32- / 64-bit broadcast load at 90-100 %
// (bench/micro_decode_bf16.cpp). The 4-row products of 16 keys D128 from L1 / L2 (1 thread,
// 2026-12-04): 7.0-8.3 ns per key (54-63 % of the vdpbf16ps probe) in slices, 5.0-6.1 ns (73-90 %)
// rotated; keys in pairs with NT unrolled -- 4 keys a pass ran out of registers (55 %), a runtime
// loop over d left the chains too short (45-61 %).
template <int S, int NT>
__attribute__((always_inline)) inline void decode_qk_rot8(const uint32_t* qR, const bf16_t* const* kp, int d,
                                                          __m512* out) {
  constexpr int P = kN / S, G = 2;                      // rotations; keys per pass (P G accumulators)
  const __mmask32 ml = first32(d - 2 * kN * (NT - 1));  // the last vector's values
#pragma GCC unroll 4
  for (int g0 = 0; g0 < 8; g0 += G) {
    __m512 a[G][P];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g)
#pragma GCC unroll 4
      for (int m = 0; m < P; ++m) a[g][m] = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      __m512bh kv[G];
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g)
        kv[g] = as_bh(t + 1 < NT ? _mm512_loadu_si512(kp[g0 + g] + 2 * kN * t)
                                 : _mm512_maskz_loadu_epi16(ml, kp[g0 + g] + 2 * kN * t));
#pragma GCC unroll 4
      for (int m = 0; m < P; ++m) {
        const __m512bh qv = as_bh(_mm512_loadu_si512(qR + (t * P + m) * kN));
#pragma GCC unroll 8
        for (int g = 0; g < G; ++g) a[g][m] = _mm512_dpbf16_ps(a[g][m], kv[g], qv);
      }
    }
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      if constexpr (P == 4)  // block r of rotation m holds row (r + m) mod 4: block r <- (r - m) mod 4
        out[g0 + g] = _mm512_add_ps(
            _mm512_add_ps(a[g][0], _mm512_shuffle_f32x4(a[g][1], a[g][1], 0x93)),
            _mm512_add_ps(_mm512_shuffle_f32x4(a[g][2], a[g][2], 0x4E), _mm512_shuffle_f32x4(a[g][3], a[g][3], 0x39)));
      else
        out[g0 + g] = _mm512_add_ps(a[g][0], _mm512_shuffle_f32x4(a[g][1], a[g][1], 0x4E));
    }
  }
}

// S = Q K^T of kN keys by rows (sall: row r's kN scores at r * lds; 2..16 rows), from Q^T in S slices
// (decode_qk_slices8) or rotated (kRot = NT > 0: decode_qk_rot8), the slices summed and the scores put in row order
// once per block: S = 4, 8 (2..4 rows) by one tree over the accumulators, 44 shuffles and adds per block -- per group
// of 8 keys two rounds of pairwise shuffle-adds leave, for each 4 keys, one vector whose 128-bit block b holds those
// keys' scores of row b (S = 4) or half sums of row b / 2 (S = 8); then the four vectors' blocks are transposed (S = 4)
// or their halves added and gathered (S = 8). S = 2 (5..8 rows) and 1 (9..16 rows, where a score transform keeps them
// off the transposed path): the kN accumulators transposed (transpose_store), lane pairs added (S = 2). With the
// in-place P V below, against the row-wise products (one hsum_each per group of keys, ~45 ops per 16 scores) and the
// fp32 / packed-pair P V, calls alternating in one process (Zen 4, D128): 1 thread, 1024 keys from
// L2, 2 rows 1.02x, 4 rows 1.05x, 5-8 rows 1.07-1.13x; 2 threads, 8 kv heads streamed (16384-32768
// keys) 2 rows 1.06x, 4 rows 1.0-1.05x, 6 rows 1.09x, 8 rows 1.06x.
template <int S, int kRot = 0>
inline void decode_qk_slices_rows_bf16(const uint32_t* qT, const bf16_t* const* kp, int d, float c, int rows,
                                       float* sall, int lds) {
  const __m512 cs = _mm512_set1_ps(c);
  if constexpr (S <= 2) {
    VF acc[kN];
    for (int g0 = 0; g0 < kN; g0 += 8) {
      __m512 a[8];
      decode_qk_slices8<S>(qT, kp + g0, d, a);
#pragma GCC unroll 8
      for (int g = 0; g < 8; ++g) acc[g0 + g].v = a[g];
    }
    alignas(64) float t[kN * kN];  // t[lane * kN + key]
    transpose_store(acc, t, kN);
    for (int r = 0; r < rows; ++r) {
      __m512 sr = _mm512_load_ps(t + S * r * kN);
      if constexpr (S == 2) sr = _mm512_add_ps(sr, _mm512_load_ps(t + (2 * r + 1) * kN));
      _mm512_storeu_ps(sall + r * lds, _mm512_mul_ps(sr, cs));
    }
  } else {
    __m512 u[4];  // u[q], block b: keys 4q..4q+3 of lane group b
    for (int g0 = 0; g0 < kN; g0 += 8) {
      __m512 a[8], x[4];
      if constexpr (kRot > 0)
        decode_qk_rot8<S, kRot>(qT, kp + g0, d, a);
      else
        decode_qk_slices8<S>(qT, kp + g0, d, a);
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i)  // per block: (a0 + a1, a2 + a3) of key 2i, then of key 2i + 1
        x[i] = _mm512_add_ps(_mm512_shuffle_ps(a[2 * i], a[2 * i + 1], 0x88),
                             _mm512_shuffle_ps(a[2 * i], a[2 * i + 1], 0xDD));
#pragma GCC unroll 2
      for (int i = 0; i < 2; ++i)  // the block's 4 lanes summed, its 4 keys in order
        u[g0 / 4 + i] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0x88),
                                      _mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0xDD));
    }
    if constexpr (S == 4) {  // row r = block r of u[0..3]
      const __m512 t0 = _mm512_shuffle_f32x4(u[0], u[1], 0x44), t1 = _mm512_shuffle_f32x4(u[0], u[1], 0xEE);
      const __m512 t2 = _mm512_shuffle_f32x4(u[2], u[3], 0x44), t3 = _mm512_shuffle_f32x4(u[2], u[3], 0xEE);
      const __m512 out[4] = {_mm512_shuffle_f32x4(t0, t2, 0x88), _mm512_shuffle_f32x4(t0, t2, 0xDD),
                             _mm512_shuffle_f32x4(t1, t3, 0x88), _mm512_shuffle_f32x4(t1, t3, 0xDD)};
      for (int r = 0; r < rows; ++r) _mm512_storeu_ps(sall + r * lds, _mm512_mul_ps(out[r], cs));
    } else {  // row r: blocks 2r and 2r + 1 added
      const __m512 v0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
      const __m512 v1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
      _mm512_storeu_ps(sall, _mm512_mul_ps(_mm512_shuffle_f32x4(v0, v1, 0x88), cs));
      if (rows > 1) _mm512_storeu_ps(sall + lds, _mm512_mul_ps(_mm512_shuffle_f32x4(v0, v1, 0xDD), cs));
    }
  }
}

// The slice count (decode_q_slices) -> decode_qk_slices_rows_bf16<S> (rotated Q^T where decode_q_rot).
inline void decode_qk_slices_rows_bf16(int S, const uint32_t* qT, const bf16_t* const* kp, int d, float c, int rows,
                                       float* sall, int lds) {
  if (decode_q_rot(S, d))
    return with_row_vecs((d + 2 * kN - 1) / (2 * kN), [&](auto nt) {
      if (S == 8)
        decode_qk_slices_rows_bf16<8, decltype(nt)::value>(qT, kp, d, c, rows, sall, lds);
      else
        decode_qk_slices_rows_bf16<4, decltype(nt)::value>(qT, kp, d, c, rows, sall, lds);
    });
  switch (S) {
    case 8: return decode_qk_slices_rows_bf16<8>(qT, kp, d, c, rows, sall, lds);
    case 4: return decode_qk_slices_rows_bf16<4>(qT, kp, d, c, rows, sall, lds);
    case 2: return decode_qk_slices_rows_bf16<2>(qT, kp, d, c, rows, sall, lds);
    default: return decode_qk_slices_rows_bf16<1>(qT, kp, d, c, rows, sall, lds);
  }
}

// P rows (n fp32 each, n a multiple of kN, lds apart) -> n / 2 bf16 pairs per row, ldp apart.
inline void decode_p_pairs(const float* p, int rows, int n, int lds, uint32_t* pb, int ldp) {
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < n; j += kN) {
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(p + r * lds + j));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(pb + r * ldp + j / 2), reinterpret_cast<const __m256i&>(h));
    }
}

// O += P V on bf16 pairs with the V rows read in place (2..8 rows; no packed copy): per pass over C
// vectors of O, each pair of V rows is loaded and interleaved in registers (two vpermt2w per 32
// values, as pack_row_pairs) and feeds R x C vdpbf16ps. pb: P as pairs, row r's at r * ldp
// (decode_p_pairs); an odd last key pairs with zeros. x0: the pass's first value; lanes
// of O past dv (up to dvp) take zeros. Against the fp32 P V on the rows in place (2..5 rows) and V
// packed as pairs first (6..8), alternating in one process (Zen 4, 1 thread, 1024 keys D128 from L2):
// 1.0-1.07x; streamed 1.0-1.02x.
template <int R, int C, typename F>
inline void decode_pv_pass_bf16(const uint32_t* pb, int ldp, const bf16_t* const* vp, int nk, int x0, int dv, float* o,
                                int dvp, F&& pf) {
  constexpr int H = (C + 1) / 2;  // 32-value loads per V row
  const __m512i lo = _mm512_load_si512(kPairIdx), hi = _mm512_load_si512(kPairIdx + 32);
  __mmask32 mk[H];
  for (int h = 0; h < H; ++h) mk[h] = first32(std::max(0, dv - x0 - 2 * kN * h));
  __m512 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_loadu_ps(o + size_t(r) * dvp + x0 + c * kN);
  auto step = [&](int j2, const bf16_t* a, const bf16_t* b) {
    __m512bh pv[C];
#pragma GCC unroll 2
    for (int h = 0; h < H; ++h) {
      const __m512i va = _mm512_maskz_loadu_epi16(mk[h], a + x0 + 2 * kN * h);
      const __m512i vb = b ? _mm512_maskz_loadu_epi16(mk[h], b + x0 + 2 * kN * h) : _mm512_setzero_si512();
      pv[2 * h] = as_bh(_mm512_permutex2var_epi16(va, lo, vb));
      if (2 * h + 1 < C) pv[2 * h + 1] = as_bh(_mm512_permutex2var_epi16(va, hi, vb));
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh pr = as_bh(_mm512_set1_epi32(int(pb[r * ldp + j2])));
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], pv[c], pr);
    }
  };
  for (int j2 = 0; 2 * j2 + 1 < nk; ++j2) {
    if (j2 % (kN / 2) == 0) pf();
    step(j2, vp[2 * j2], vp[2 * j2 + 1]);
  }
  if (nk & 1) step(nk / 2, vp[nk - 1], nullptr);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(o + size_t(r) * dvp + x0 + c * kN, acc[r][c]);
}

// o[r][0..dv) += sum_j P[r][j] v_j (R rows, o rows dvp apart): passes of 4 vectors of O up to 4 rows
// (16 accumulators), of 2 beyond, then 2 / 1 vectors for the rest.
template <int R, typename F>
inline void decode_pv_rows_bf16_inplace(const uint32_t* pb, int ldp, const bf16_t* const* vp, int nk, int dv, float* o,
                                        int dvp, F&& pf) {
  static_assert(R <= 8, "16 accumulators");
  constexpr int C = R <= 4 ? 4 : 2;
  int x0 = 0;
  for (; x0 + C * kN <= dvp; x0 += C * kN) decode_pv_pass_bf16<R, C>(pb, ldp, vp, nk, x0, dv, o, dvp, pf);
  if (C > 2 && x0 + 2 * kN <= dvp) {
    decode_pv_pass_bf16<R, 2>(pb, ldp, vp, nk, x0, dv, o, dvp, pf);
    x0 += 2 * kN;
  }
  if (x0 < dvp) decode_pv_pass_bf16<R, 1>(pb, ldp, vp, nk, x0, dv, o, dvp, pf);
}

// Keys per block of decode_pairs_run: 64 (four groups of kN; P V then passes over O once per 64
// keys, not per 16: its loads, stores and chain fill were a quarter of its time at 16 keys -- 4
// rows D128 from L1, 7.4 -> 5.7 ns per key), fewer where the call's K + V rows (every kv head's:
// a token-major cache) pass 2 KB: a token-major chunk (decode_items.h, one block) of ~128 KB. B1
// 32768 keys D128, calls alternating in one process (Zen 4, 2026-12-05), against ~64 KB blocks:
// GQA 32/8 (32 keys, not 16) 1.15x on 2 threads, 1.18x on 1, 1.27x from L3 (4096 keys); 4 rows H8
// 1.09x / 1.29x, 16 rows H8 1.12x / 1.09x; GQA 32/4 (64, not 32) 1.08x / 1.02x; 64 keys at 32/8
// (256 KB) 0.99x on 2 threads; unchanged blocks (2 rows H16) 1.02-1.05x, the noise.
// Decided on the call, not on a group of heads, so the blocks -- and the results, bit for bit --
// do not depend on how the heads are grouped per thread.
constexpr int kPairsKeys = 4 * kN;
inline int decode_pairs_keys(const FwdParams& p) {
  if (!decode_heads_interleaved(p)) return kPairsKeys;
  const int64_t row = int64_t(p.h_kv) * (p.d + p.d_v) * int64_t(sizeof(bf16_t));
  return int(std::clamp<int64_t>((128 * 1024) / std::max<int64_t>(1, row) / kN * kN, kN, kPairsKeys));
}

// One block (keys [jb, jb + nk), nk <= kPairsKeys) of the head h's rows: S per group of kN keys (3
// rows row-wise: decode_qk_rows_bf16<3>; else decode_qk_slices_rows_bf16), the softmax step of each
// row over the block (DecodeHead::rows_softmax), P as pairs, P V. Groups past nk are not computed
// (their scores would be masked). pf: the prefetch pieces (decode_pairs_steps per block).
template <typename H, typename F>
inline void decode_pairs_block(H& h, int jb, int nk, F&& pf) {
  const bf16_t* kp[kPairsKeys];
  const bf16_t* vp[kPairsKeys];
  const int rows = h.rows, ng = (nk + kN - 1) / kN, n = ng * kN, S = decode_q_slices(rows);
  h.block_rows(jb, nk, kp, vp, n);
  alignas(64) float sall[kDecodeMaxRows * kPairsKeys];  // row r's scores at r * kPairsKeys
  for (int g = 0; g < ng; ++g) {
    pf();
    if (rows == 3)  // row-wise (decode_bf16.h: a quarter of the slices' lanes would be empty)
      decode_qk_rows_bf16<3>(reinterpret_cast<const uint32_t*>(h.qf), h.dp, kp + g * kN, h.d, h.scale, sall + g * kN,
                             kPairsKeys);
    else
      decode_qk_slices_rows_bf16(S, reinterpret_cast<const uint32_t*>(h.qT), kp + g * kN, h.d, h.scale, rows,
                                 sall + g * kN, kPairsKeys);
  }
  pf();
  switch (ng) {  // the step's width compile-time (DecodeHead::rows_softmax)
    case 1: h.template rows_softmax<kN, kPairsKeys>(jb, nk, sall); break;
    case 2: h.template rows_softmax<2 * kN, kPairsKeys>(jb, nk, sall); break;
    case 3: h.template rows_softmax<3 * kN, kPairsKeys>(jb, nk, sall); break;
    default: h.template rows_softmax<kPairsKeys>(jb, nk, sall); break;
  }
  pf();
  alignas(64) uint32_t pb[kDecodeMaxRows * kPairsKeys / 2];
  decode_p_pairs(sall, rows, n, kPairsKeys, pb, kPairsKeys / 2);
  for_row_blocks<8>(rows, [&](int r0, auto rn) {
    decode_pv_rows_bf16_inplace<decltype(rn)::value>(pb + r0 * (kPairsKeys / 2), kPairsKeys / 2, vp, nk, h.dv,
                                                     h.of + size_t(r0) * h.dvp, h.dvp, pf);
  });
}

// One block (keys [jb, jb + nk), nk <= kPairsKeys) of the transposed path on pairs for the head h
// (h.cols: 9..16 rows, no score transform; one lane per row): S^T per group of kN keys
// (decode_qk_cols_bf16: 32-bit broadcasts of K pairs, which cost the vdpbf16ps nothing), the keys
// a row cannot see masked, the softmax step per lane over the block, the rows whose max moved
// rescaled, P^T as pairs, V packed as pairs once into h.kb (shared by the blocks of 4 rows), P V.
template <typename H, typename F>
inline void decode_pairs_cols_block(H& h, int jb, int nk, F&& pf) {
  const bf16_t* kp[kPairsKeys];
  const bf16_t* vp[kPairsKeys];
  const int ng = (nk + kN - 1) / kN, n = ng * kN;
  h.block_rows(jb, nk, kp, vp, n);
  alignas(64) float sT[kPairsKeys * kN];  // key j's lanes at j kN
  for (int g = 0; g < ng; ++g) {
    pf();
    float* sg = sT + g * kN * kN;
    const int jg = jb + g * kN;
    decode_qk_cols_bf16(reinterpret_cast<const uint32_t*>(h.qT), kp + g * kN, h.d, h.scale, sg);
    if (nk - g * kN < kN || jg < h.lo_max || jg + kN > h.hi_min)
      decode_mask_cols(h.vis_lo, h.vis_hi, jg, nk - g * kN, sg);
  }
  pf();
  VF mv = VF::load(h.m), lv = VF::load(h.l);  // lanes past the rows: never read
  alignas(64) float alpha[kN];
  softmax_cols_step(reinterpret_cast<VF*>(sT), n, mv, lv).store(alpha);
  mv.store(h.m);
  lv.store(h.l);
  h.rescale_rows(alpha);
  pf();
  alignas(64) uint32_t pt[kPairsKeys / 2 * kN];  // pair j2 of every lane at j2 kN
  for (int g = 0; g < ng; ++g) decode_p_pairs_cols(sT + g * kN * kN, pt + g * (kN / 2) * kN);
  uint32_t* vpk = reinterpret_cast<uint32_t*>(h.kb);
  decode_pack_v_pairs(vp, nk, h.dv, h.dvp, vpk);
  for_row_blocks<4>(h.rows, [&](int r0, auto rn) {
    pf();
    decode_pv_rows_bf16<decltype(rn)::value>(pt + r0, 1, kN, vpk, (nk + 1) / 2, h.dvp, h.of + size_t(r0) * h.dvp, pf);
  });
}

// About the pf() calls of a block of w keys (decode_pairs_block): one per group of kN keys before its
// S, two around the softmax, one per kN keys of every P V pass (decode_pv_rows_bf16_inplace's passes
// of 4 or 2 vectors per block of up to 8 rows; a last 2- and 1-vector pass counted as one).
inline int decode_pairs_steps(int w, int rows, int dvp) {
  const int c = (rows <= 4 ? 4 : 2) * kN, passes = ((rows + 7) / 8) * ((dvp + c - 1) / c);
  return (w / kN) * (1 + passes) + 2;
}

// The pf() calls of a block of w keys on the transposed path (decode_pairs_cols_block): one per
// group of kN keys before its S, two around the softmax, one before each block of 4 rows' P V and
// one per 16 keys of each of its 4-vector passes (decode_pv_rows_bf16). Against the pieces before
// the row blocks alone (bursts of ~50 lines), calls alternating in one process, 16 rows H8 B1 32768
// keys D128 (Zen 4, 2026-12-05): head-major 1.13x on 2 threads, 1.09x on 1; token-major 1.06x /
// 1.03x; the walk from C++ (bench/micro_decode_walk.cpp, 1 thread) 0.95x the time streamed.
inline int decode_pairs_cols_steps(int w, int rows, int dvp) {
  return w / kN + 2 + (rows + 3) / 4 * (1 + dvp / (4 * kN) * (w / (2 * kPvPiecePairs)));
}

// DecodeHead::run for several rows on bf16 pairs: blocks of decode_pairs_keys(p) keys, each block's
// lines prefetched a block ahead in pieces between its steps (KeyLines, decode_prefetch().rows), or
// the caller's feed (feed_quota lines over the range's blocks: decode_item_heads). The pieces come
// one per group's S and one per 16 keys of each P V pass (decode_pairs_steps): with a burst of one
// piece per row before each group's S and none in P V, the 64-key blocks streamed 0.96-1.0x the
// 16-key walk they replaced. Against that walk (Q^T in slices, 16-key blocks), calls alternating in
// one process in random order, B1 D128 bf16, 2 threads (Zen 4, 2026-12-04): 32768 keys streamed,
// GQA 32/8 head-major 1.23x, token-major 1.04x, 4 rows H32 1.13x / 1.10x, 8 rows H8 1.23x, 3 rows
// 1.09x, 2 rows 1.08x; 2048 keys (K / V in L3) head-major 1.27-1.40x.
template <typename H>
inline void decode_pairs_run(H& h, int j_begin, int j_end) {
  const int w = decode_pairs_keys(*h.pp);
  KeyLines own;
  own.setup(h.k, h.krows, int64_t(h.d) * 2, h.v, h.vrows, int64_t(h.dv) * 2, decode_prefetch().rows);
  const int steps = h.cols ? decode_pairs_cols_steps(w, h.rows, h.dvp) : decode_pairs_steps(w, h.rows, h.dvp);
  const int64_t nb = (j_end - j_begin + w - 1) / w;
  for (int jb = j_begin; jb < j_end; jb += w) {
    const int nk = std::min(w, j_end - jb);
    KeyLines* f = h.feed;
    int64_t per_step;
    if (f == nullptr) {
      own.finish();  // what the previous block's steps left
      own.start(std::min(jb + w, j_end), std::min(jb + 2 * w, j_end));
      f = &own;
      per_step = (own.lines + steps - 1) / steps;
    } else {
      per_step = (h.feed_quota + nb * steps - 1) / (nb * steps);
    }
    if (h.cols)
      decode_pairs_cols_block(h, jb, nk, [&] { f->issue(per_step); });
    else
      decode_pairs_block(h, jb, nk, [&] { f->issue(per_step); });
  }
}

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
