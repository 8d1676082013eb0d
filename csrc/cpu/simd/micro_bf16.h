// micro_bf16.h -- the AVX512_BF16 microkernels (vdpbf16ps) and the bf16 pair packing of the bf16
// forward and backward. AVX-512 objects only.
#pragma once
#include "cpu/simd/common.h"
#include "cpu/simd/softmax_row.h"

#if !defined(FAL_SIMD_AVX512)
#error "micro_bf16.h needs AVX512_BF16 (FAL_SIMD_AVX512)"
#endif

namespace fal::cpu::FAL_CPU_NS {
namespace {

// ---- forward: both products consume bf16 pairs ---------------------------------------------------
// vdpbf16ps acc, a, b: acc[i] += a[2i] * b[2i] + a[2i+1] * b[2i+1]  (16 fp32 lanes, 32 bf16).
//   S = Q K^T:  a = K packed as pairs over d   (Kp[x2][key], uint32 = (k[key][2 x2], k[key][2 x2 + 1]))
//               b = the pair (q[r][2 x2], q[r][2 x2 + 1]) broadcast;  S scaled at the store.
//   O += P V:   a = V packed as pairs over keys (Vp[j2][x] = (v[2 j2][x], v[2 j2 + 1][x]))
//               b = the pair (P[r][2 j2], P[r][2 j2 + 1]) rounded to bf16 and broadcast.
// Half the instructions of the fp32 microkernels for the same FLOPs; the row sums use the
// unrounded fp32 P (as FA2 does on GPUs).
inline __m512bh as_bh(__m512i x) { return reinterpret_cast<__m512bh&>(x); }
// The first n of 32 lanes (0 <= n <= 32): the masked loads of a row's last partial chunk.
inline __mmask32 first32(int n) { return n >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << n) - 1u); }

// S[r][c] = scale * sum_x2 Q[r][x2] . Kp[x2][c]  (pairs), r < kRM, c < kBN
inline void micro_qk_bf16(const uint32_t* q, int d2, int ldq, const uint32_t* kp, float* s, float scale) {
  const __m512 sc = _mm512_set1_ps(scale);
  for (int kc = 0; kc < kBN; kc += kNV * kN) {
    __m512 acc[kRM][kNV];
    for (int r = 0; r < kRM; ++r)
      for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_setzero_ps();
    for (int x = 0; x < d2; ++x) {
      __m512bh kv[kNV];
      for (int v = 0; v < kNV; ++v) kv[v] = as_bh(_mm512_loadu_si512(kp + x * kBN + kc + v * kN));
      for (int r = 0; r < kRM; ++r) {
        const __m512bh qb = as_bh(_mm512_set1_epi32(int(q[r * ldq + x])));
        for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], kv[v], qb);
      }
    }
    for (int r = 0; r < kRM; ++r)
      for (int v = 0; v < kNV; ++v) _mm512_storeu_ps(s + r * kBN + kc + v * kN, _mm512_mul_ps(acc[r][v], sc));
  }
}

// micro_qk_bf16 fused with the online-softmax step, for a key tile of one pass (kBN = kNV kN keys)
// that every row of the group sees whole, with no score transform: the rows' scores stay in the
// accumulators, the step runs on them (online_softmax_tile_step: m, l, O of the kRM rows, m / l / o
// rows 1 / 1 / dvp apart) and P goes straight to bf16 pairs in pb (kRM rows of kBN / 2) -- the
// same arithmetic as micro_qk_bf16, softmax_rows_step and pack_f32_consecutive, without S's trips
// through memory. False, having changed nothing, when a row's max is -inf (the caller then runs
// micro_qk_bf16 and the step over memory, which handles such a row). The product loop is
// micro_qk_bf16's, written out: an accumulator array handed to a shared helper is the pitfall that
// kept accumulators in memory (DEVELOPERS.md).
inline bool micro_qk_softmax_bf16(const uint32_t* q, int d2, int ldq, const uint32_t* kp, float scale, float* m,
                                  float* l, float* o, int dvp, uint32_t* pb) {
  static_assert(kBN == kNV * kN, "one pass per tile");
  const __m512 sc = _mm512_set1_ps(scale);
  __m512 acc[kRM][kNV];
#pragma GCC unroll 8
  for (int r = 0; r < kRM; ++r)
    for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int x = 0; x < d2; ++x) {
    __m512bh kv[kNV];
    for (int v = 0; v < kNV; ++v) kv[v] = as_bh(_mm512_loadu_si512(kp + x * kBN + v * kN));
    for (int r = 0; r < kRM; ++r) {
      const __m512bh qb = as_bh(_mm512_set1_epi32(int(q[r * ldq + x])));
      for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], kv[v], qb);
    }
  }
  VecLaneBf16P t[kRM][kNV];
#pragma GCC unroll 8
  for (int r = 0; r < kRM; ++r)
    for (int v = 0; v < kNV; ++v) t[r][v].v.v = _mm512_mul_ps(acc[r][v], sc);
  if (!online_softmax_tile_step<VecLaneBf16P, kRM, kNV>(t, m, l, o, dvp, dvp)) return false;
#pragma GCC unroll 8
  for (int r = 0; r < kRM; ++r)
    for (int v = 0; v < kNV; v += 2) {
      const __m512bh h = _mm512_cvtne2ps_pbh(t[r][v + 1].v.v, t[r][v].v.v);
      _mm512_storeu_si512(pb + r * (kBN / 2) + v * (kN / 2), reinterpret_cast<const __m512i&>(h));
    }
  return true;
}

// O[r][x] += sum_j P[r][j] V[j][x]; pb: kRM rows of kBN / 2 bf16 pairs; vp: (kBN / 2) x dvp pairs.
inline void micro_pv_bf16(const uint32_t* pb, const uint32_t* vp, int cols2, int dvp, float* o) {
  for (int dc = 0; dc < dvp; dc += kNV * kN) {
    __m512 acc[kRM][kNV];
    for (int r = 0; r < kRM; ++r)
      for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_loadu_ps(o + r * dvp + dc + v * kN);
    for (int j = 0; j < cols2; ++j) {
      __m512bh vv[kNV];
      for (int v = 0; v < kNV; ++v) vv[v] = as_bh(_mm512_loadu_si512(vp + j * dvp + dc + v * kN));
      for (int r = 0; r < kRM; ++r) {
        const __m512bh pbv = as_bh(_mm512_set1_epi32(int(pb[r * (kBN / 2) + j])));
        for (int v = 0; v < kNV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], vv[v], pbv);
      }
    }
    for (int r = 0; r < kRM; ++r)
      for (int v = 0; v < kNV; ++v) _mm512_storeu_ps(o + r * dvp + dc + v * kN, acc[r][v]);
  }
}

// A bf16 row of n elements as (n + 1) / 2 pairs (row[2 x2], row[2 x2 + 1]), an odd n's last pair
// zero-padded; zeros for a null row
inline void copy_pairs(const bf16_t* row, int n, uint32_t* dst) {
  const int n2 = (n + 1) / 2;
  for (int x = 0; x < n2; x += kN) {
    const int e = std::min(2 * kN, n - 2 * x), w = std::min(kN, n2 - x);  // elements, pairs
    const __mmask32 me = first32(e);
    const __m512i v = row ? _mm512_maskz_loadu_epi16(me, row + 2 * x) : _mm512_setzero_si512();
    _mm512_mask_storeu_epi32(dst + x, __mmask16((1u << w) - 1u), v);
  }
}

// ---- backward ------------------------------------------------------------------------------------
// The five products of the backward, each fed bf16 pairs over its inner dimension:
//   S  = Q K^T      pairs over d    (Q rows as stored; K^T packed Kd[x2][key])
//   dP = dO V^T     pairs over dv   (dO rows as stored; V^T packed Vd[x2][key])
//   dV += P^T dO    pairs over query rows (dO packed dOr[r2][x]; P pairs broadcast)
//   dK += dS^T Q    pairs over query rows (Q packed Qr[r2][x]; dS pairs broadcast)
//   dQ += dS K      pairs over keys (K packed Kk[c2][x]; dS pairs broadcast)
// P and dS are rounded to bf16 for the products (as FA2 does on GPUs); all sums are fp32.

// kN bf16 rows (null: zeros) as pairs over d, transposed: dst[x2 * ld + c] = (row_c[2 x2],
// row_c[2 x2 + 1]) for x2 < ceil(d / 32) * 16 (zero past d), by kN x kN register transposes of the
// 32-bit pairs (transpose_store). K panels of the bf16 forward and of the multi-row decode.
inline void transpose_pairs(const bf16_t* const* rows, int d, uint32_t* dst, int ld) {
  for (int x0 = 0; x0 < d; x0 += 2 * kN) {
    const int n = std::min(2 * kN, d - x0);  // valid elements of this chunk
    const __mmask32 mk = first32(n);
    VF blk[kN];
    for (int c = 0; c < kN; ++c)
      blk[c].v = rows[c] ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(mk, rows[c] + x0)) : _mm512_setzero_ps();
    transpose_store(blk, reinterpret_cast<float*>(dst + size_t(x0 / 2) * ld), ld);
  }
}

// vpermt2w indices interleaving two rows' 32 values as 16 bf16 pairs: word i of the low result is
// a[i / 2] for even i, b[i / 2] for odd i (words 0..31 of a and b: 0..31, 32..63); the high result
// the same from element 16 on.
alignas(64) inline constexpr uint16_t kPairIdx[64] = {0,  32, 1,  33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
                                                      8,  40, 9,  41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47,
                                                      16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                      24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};

// dst[x] = (a[x], b[x]) as a bf16 pair, x < n (n a multiple of kN; zeros past `valid` or for null
// rows). 32 elements of each row per step, interleaved by two vpermt2w (word i of the low result:
// a[i / 2] for even i, b[i / 2] for odd i; the high result the same from element 16 on).
inline void pack_row_pairs(const bf16_t* a, const bf16_t* b, int valid, int n, uint32_t* dst) {
  const __m512i lo = _mm512_load_si512(kPairIdx), hi = _mm512_load_si512(kPairIdx + 32);
  for (int x = 0; x < n; x += 2 * kN) {
    const int m = std::max(0, std::min(2 * kN, valid - x));
    const __mmask32 mk = first32(m);
    const __m512i va = a && m ? _mm512_maskz_loadu_epi16(mk, a + x) : _mm512_setzero_si512();
    const __m512i vb = b && m ? _mm512_maskz_loadu_epi16(mk, b + x) : _mm512_setzero_si512();
    _mm512_storeu_si512(dst + x, _mm512_permutex2var_epi16(va, lo, vb));
    if (x + kN < n) _mm512_storeu_si512(dst + x + kN, _mm512_permutex2var_epi16(va, hi, vb));
  }
}

// The bf16 forward's key tile [j0, j0 + cols): K as pairs over d, kN keys at a time
// (transpose_pairs; kp: ceil(d / 32) * 16 rows of kBN), V as pairs over keys (pack_row_pairs; vp:
// kBN / 2 rows of dvp), zero-padded -- the layouts of vdpbf16ps's and of AMX's B operands. Against a
// scalar pair loop for K (A/B of the binaries, 2 threads, Zen 5, 2026-12-01): fwd H8 N2048 D64 15.7
// -> 14.5 ms, causal H8 N4096 D128 57.2 -> 52.5
inline void pack_tile_pairs(const bf16_t* k, const KvRows& krows, const bf16_t* v, const KvRows& vrows, int j0,
                            int cols, int d, int dv, int dvp, uint32_t* kp, uint32_t* vp) {
  for (int c0 = 0; c0 < kBN; c0 += kN) {
    const bf16_t* kr[kN];
    for (int c = 0; c < kN; ++c) kr[c] = c0 + c < cols ? k + krows.at(j0 + c0 + c) : nullptr;
    transpose_pairs(kr, d, kp + c0, kBN);
  }
  for (int j = 0; j < kBN / 2; ++j)
    pack_row_pairs(2 * j < cols ? v + vrows.at(j0 + 2 * j) : nullptr,
                   2 * j + 1 < cols ? v + vrows.at(j0 + 2 * j + 1) : nullptr, dv, dvp, vp + size_t(j) * dvp);
}

// fp32 rows a, b -> bf16 pairs (a[x], b[x]) for x < n (n a multiple of kN)
inline void pack_f32_row_pairs(const float* a, const float* b, int n, uint32_t* dst) {
  for (int x = 0; x < n; x += kN) {
    const __m256bh ha = _mm512_cvtneps_pbh(_mm512_loadu_ps(a + x));
    const __m256bh hb = _mm512_cvtneps_pbh(_mm512_loadu_ps(b + x));
    const __m512i lo = _mm512_cvtepu16_epi32(reinterpret_cast<const __m256i&>(ha));
    const __m512i hi = _mm512_cvtepu16_epi32(reinterpret_cast<const __m256i&>(hb));
    _mm512_storeu_si512(dst + x, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
}

// fp32 row -> consecutive bf16 pairs (r[2 c2], r[2 c2 + 1]) for c2 < n / 2 (n a multiple of 2 kN)
inline void pack_f32_consecutive(const float* r, int n, uint32_t* dst) {
  for (int c = 0; c < n; c += 2 * kN) {
    const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(r + c + kN), _mm512_loadu_ps(r + c));
    _mm512_storeu_si512(dst + c / 2, reinterpret_cast<const __m512i&>(h));
  }
}

// out[c][x] += sum_r2 a[r2][c] . b[r2][x]  (bf16 pairs over rows), c < NC, x < ldb; blocked
// summation as micro_tn
template <int NC>
inline void micro_tn_bf16_block(const uint32_t* a, const uint32_t* b, int rows2, int ldb, float* out) {
  for (int dc = 0; dc < ldb; dc += kNV * kN) {
    __m512 acc[NC][kNV];
    for (int c = 0; c < NC; ++c)
      for (int v = 0; v < kNV; ++v) acc[c][v] = _mm512_setzero_ps();
    for (int r = 0; r < rows2; ++r) {
      __m512bh bv[kNV];
      for (int v = 0; v < kNV; ++v) bv[v] = as_bh(_mm512_loadu_si512(b + r * ldb + dc + v * kN));
      for (int c = 0; c < NC; ++c) {
        const __m512bh ab = as_bh(_mm512_set1_epi32(int(a[r * kBN + c])));
        for (int v = 0; v < kNV; ++v) acc[c][v] = _mm512_dpbf16_ps(acc[c][v], bv[v], ab);
      }
    }
    for (int c = 0; c < NC; ++c)
      for (int v = 0; v < kNV; ++v) {
        float* o = out + c * ldb + dc + v * kN;
        _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), acc[c][v]));
      }
  }
}
// over the kBN keys: full kRM-key blocks, then the tail (compile-time sizes: see micro_tn)
inline void micro_tn_bf16(const uint32_t* a, const uint32_t* b, int rows2, int ldb, float* out) {
  constexpr int kFull = kBN / kRM * kRM, kTail = kBN - kFull;
  for (int c0 = 0; c0 < kFull; c0 += kRM) micro_tn_bf16_block<kRM>(a + c0, b, rows2, ldb, out + c0 * ldb);
  if constexpr (kTail > 0) micro_tn_bf16_block<kTail>(a + kFull, b, rows2, ldb, out + kFull * ldb);
}

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
