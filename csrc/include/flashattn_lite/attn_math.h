// attn_math.h -- attention semantics as __host__ __device__ code: which keys a query row sees
// (Visibility: causal / sliding window, both alignments, tile ranges), the score transforms
// (ScoreMod), dropout (Dropout), variable-length sequences and paged K/V (SeqInfo, KvRows). Every
// CPU kernel uses all of it; the CUDA kernels use Visibility and Dropout (dropout_keep.cu) and
// refuse the other features (cuda_ops.cpp) until their kernels use them. The CPU tests cover it.
#pragma once
#include "flashattn_lite/isa_ns.h"
#include <cstdint>
#include <climits>
#include <cmath>
#include "flashattn_lite/numeric.h"
#include "flashattn_lite/params.h"

namespace fal {
FAL_ISA_NS_BEGIN

// Key interval [lo, hi) seen by a query row.
struct KeyRange {
  int lo;
  int hi;
};

// Static description of the visibility rule for one (batch) sequence pair.
struct Visibility {
  int64_t diag;   // query i is aligned with key i + diag
  int64_t left;   // keys before the diagonal allowed (-1 = unbounded)
  int64_t right;  // keys after the diagonal allowed (-1 = unbounded)
  int s_k;

  // Unclipped bounds for row i: keys j with raw_lo(i) <= j < raw_hi(i); both are
  // non-decreasing in i, which the tile helpers below rely on.
  FAL_HD int64_t raw_lo(int i) const { return left >= 0 ? int64_t(i) + diag - left : INT64_MIN / 4; }
  FAL_HD int64_t raw_hi(int i) const { return right >= 0 ? int64_t(i) + diag + right + 1 : INT64_MAX / 4; }

  // query i sees key j  <=>  i + diag - left <= j <= i + diag + right, and 0 <= j < s_k
  FAL_HD KeyRange keys_of_row(int i) const { return clip(raw_lo(i), raw_hi(i)); }

  // Keys that any of the rows [i0, i1) may see (a superset when some rows are empty;
  // elements outside a row's own range are masked by the kernels).
  FAL_HD KeyRange keys_of_rows(int i0, int i1) const { return clip(raw_lo(i0), raw_hi(i1 - 1)); }

  // True when every row in [i0, i1) sees every key in [j0, j1): no element mask needed.
  FAL_HD bool tile_fully_visible(int i0, int i1, int j0, int j1) const {
    return raw_lo(i1 - 1) <= j0 && raw_hi(i0) >= j1;
  }

  // Query rows that see key j: raw_row_lo(j) <= i < raw_row_hi(j) (inverse of the rule above;
  // both non-decreasing in j).
  FAL_HD int64_t raw_row_lo(int j) const { return right >= 0 ? int64_t(j) - diag - right : INT64_MIN / 4; }
  FAL_HD int64_t raw_row_hi(int j) const { return left >= 0 ? int64_t(j) - diag + left + 1 : INT64_MAX / 4; }
  FAL_HD KeyRange rows_of_key(int j, int s_q) const { return clip_to(raw_row_lo(j), raw_row_hi(j), s_q); }
  // Rows that any key in [j0, j1) may be seen by (a superset when some keys are unseen).
  FAL_HD KeyRange rows_of_keys(int j0, int j1, int s_q) const {
    return clip_to(raw_row_lo(j0), raw_row_hi(j1 - 1), s_q);
  }

  FAL_HD static KeyRange clip_to(int64_t lo, int64_t hi, int n) {
    if (lo < 0) lo = 0;
    if (hi > n) hi = n;
    if (hi <= lo) return KeyRange{0, 0};
    return KeyRange{int(lo), int(hi)};
  }

  FAL_HD KeyRange clip(int64_t lo, int64_t hi) const { return clip_to(lo, hi, s_k); }
};

FAL_HD Visibility make_visibility(const FwdParams& p, int s_q, int s_k) {
  Visibility v;
  v.diag = p.bottom_right ? int64_t(s_k) - int64_t(s_q) : 0;
  v.left = p.window_left < 0 ? -1 : p.window_left;
  v.right = p.causal ? 0 : (p.window_right < 0 ? -1 : p.window_right);
  v.s_k = s_k;
  return v;
}

// A query row's final state: l (the softmax denominator) is > 0 when the row saw a key, 0 when it
// saw none (output 0, LSE -inf), and NaN when a NaN reached its scores (output and LSE NaN).
template <typename Acc>
FAL_HD bool row_has_mass(Acc l) {
  return !(l <= Acc(0));
}

// ---- Variable-length batches (varlen, KV cache) ------------------------------------------------
// Sequence bi of a packed batch: its query rows start at row q_row0 of q/out (and of its LSE row),
// its keys at row k_row0 of k/v; s_q / s_k are its lengths (max lengths bound them).
// kv_batch: the batch of k/v it reads (cache_batch_idx); with leftpad_k its keys start at row
// leftpad_k[bi] and end at seqused_k[bi].
struct SeqInfo {
  int s_q, s_k;
  int64_t q_row0, k_row0;
  int kv_batch;
};

FAL_HD SeqInfo seq_info(const FwdParams& p, int bi) {
  SeqInfo s{p.s_q, p.s_k, 0, 0, bi};
  if (p.kv_batch_idx) s.kv_batch = p.kv_batch_idx[bi];
  if (p.cu_seqlens_q) {
    s.q_row0 = p.cu_seqlens_q[bi];
    s.s_q = p.cu_seqlens_q[bi + 1] - p.cu_seqlens_q[bi];
  }
  if (p.cu_seqlens_k) {  // with a paged K/V the keys start in the sequence's first page
    s.k_row0 = p.block_table ? 0 : p.cu_seqlens_k[bi];
    s.s_k = p.cu_seqlens_k[bi + 1] - p.cu_seqlens_k[bi];
  }
  if (p.seqused_k) s.s_k = p.seqused_k[bi];
  if (p.leftpad_k) {
    s.k_row0 = p.leftpad_k[bi];
    s.s_k -= p.leftpad_k[bi];
  }
  return s;
}

// Element offsets of the K (or V) rows of one sequence: key j (0 <= j < s_k) at at(j) from the
// head's base pointer; contiguous rows, or the pages of a paged cache.
struct KvRows {
  int64_t row0 = 0, row_stride = 0;
  const int32_t* pages = nullptr;  // nullptr = contiguous
  int page_size = 1;
  int64_t page_stride = 0;
  FAL_HD int64_t at(int j) const {
    const int64_t r = row0 + j;
    if (pages == nullptr) return r * row_stride;
    return int64_t(pages[r / page_size]) * page_stride + (r % page_size) * row_stride;
  }
};

// K / V of sequence sq, kv head hk: the head's base pointer and its rows.
template <typename T>
FAL_HD const T* kv_head_ptr(const void* base, int64_t batch_stride, int64_t head_stride, const FwdParams& p,
                            const SeqInfo& sq, int hk) {
  return static_cast<const T*>(base) + (p.block_table ? 0 : sq.kv_batch * batch_stride) + hk * head_stride;
}
FAL_HD KvRows kv_rows(const FwdParams& p, const SeqInfo& sq, int bi, int64_t row_stride, int64_t batch_stride) {
  KvRows r;
  r.row0 = sq.k_row0;
  r.row_stride = row_stride;
  if (p.block_table) {
    r.pages = p.block_table + bi * p.block_table_batch_stride;
    r.page_size = p.page_size;
    r.page_stride = batch_stride;
  }
  return r;
}

// ---- Dropout: a counter-based RNG, replayable by the backward and identical on every device ----
// Philox4x32-10 (Salmon et al., SC'11): 10 rounds of two 32x32->64 multiplies on a 128-bit
// counter under a 64-bit key. Keep bit of element (batch b, query head h, row i, key j):
//   r = Philox(counter = (j / 4, i, b * heads + h, uint32(offset)),
//              key = (uint32(seed), uint32(seed >> 32) ^ uint32(offset >> 32)))[j % 4]
//   keep  <=>  (r >> 8) >= threshold,  threshold = round(dropout_p * 2^24)
// (24-bit uniform, so keep probability = 1 - threshold / 2^24). Kept probabilities are scaled by
// 1 / (1 - dropout_p); the LSE is that of the undropped softmax (as in flash-attn).
struct U32x4 {
  uint32_t x[4];
};

FAL_HD U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * c.x[0];
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c.x[2];
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0);
    const uint32_t hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    c = U32x4{{hi1 ^ c.x[1] ^ k0, lo1, hi0 ^ c.x[3] ^ k1, lo0}};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

struct Dropout {
  bool on = false;
  uint32_t k0 = 0, k1 = 0, off = 0;  // key and counter word 3, from (seed, offset)
  uint32_t threshold = 0;            // drop iff (r >> 8) < threshold
  double keep_scale = 1.0;           // 1 / (1 - p), rounded to the kernel's type
  uint32_t bh = 0;                   // b * heads + h of the current (batch, head)

  // Four keep bits (bit t for key 4 * j4 + t) of row i.
  FAL_HD uint32_t keep4(int i, int j4) const {
    const U32x4 r = philox4x32_10(U32x4{{uint32_t(j4), uint32_t(i), bh, off}}, k0, k1);
    uint32_t bits = 0;
    for (int t = 0; t < 4; ++t) bits |= uint32_t((r.x[t] >> 8) >= threshold) << t;
    return bits;
  }
  FAL_HD bool keep(int i, int j) const { return (keep4(i, j >> 2) >> (j & 3)) & 1u; }

  // p[c] *= keep(i, j0 + c) ? keep_scale : 0   for c < n
  template <typename A>
  FAL_HD void apply_row(int i, int j0, A* p, int n) const {
    uint32_t bits = 0;
    for (int c = 0; c < n; ++c) {
      const int j = j0 + c;
      if (c == 0 || (j & 3) == 0) bits = keep4(i, j >> 2);
      p[c] = ((bits >> (j & 3)) & 1u) ? p[c] * A(keep_scale) : A(0);
    }
  }
};

FAL_HD Dropout make_dropout(const FwdParams& p) {
  Dropout d;
  d.on = p.dropout_p > 0.f;
  if (!d.on) return d;
  d.k0 = uint32_t(p.seed);
  d.k1 = uint32_t(p.seed >> 32) ^ uint32_t(p.offset >> 32);
  d.off = uint32_t(p.offset);
  d.threshold = p.dropout_threshold;
  d.keep_scale = p.dropout_keep_scale;
  return d;
}

// tanh in float. On the GPU, nvcc's --use_fast_math turns tanhf into tanh.approx.f32 (MUFU.TANH,
// relative error ~2^-11: an H200 run put fp32 softcap outputs 1.7x over the numerical rule), so
// device code uses tanh|x| = -t / (t + 2) with t = expm1f(-2|x|) in (-1, 0] (expm1f keeps its
// accurate form under fast math; no overflow, no cancellation), the sign copied back. Host: tanhf.
FAL_HD float fal_tanh(float x) {
#ifdef __CUDA_ARCH__
  const float t = expm1f(-2.f * fabsf(x));
  return copysignf(-t / (t + 2.f), x);
#else
  return tanhf(x);
#endif
}
FAL_HD double fal_tanh(double x) { return ::tanh(x); }
// tanh of the 16-bit tensor-core kernels (ScoreModLite): on the GPU the MUFU.TANH approximation,
// whose ~2^-11 relative error stays below the rounding of fp16 / bf16 scores and probabilities
// (flash-attn's softcap uses it too) and costs one instruction and no registers: tanhf, which the
// CUDA build's --use_fast_math (CMakeLists.txt) compiles to tanh.approx.f32; host: tanhf.
FAL_HD float fal_tanh_approx(float x) { return tanhf(x); }

// ---- Score transforms, in natural units (s = scale * q.k), in flash-attn's order ------------
//   s <- softcap * tanh(s / softcap)                       (softcap > 0)
//   s <- s - slope * |i + s_k - s_q - j|                   (ALiBi, bottom-right aligned)
//   s <- mask[i, j] ? s : -inf   or   s + mask[i, j]       (bool / additive attn_mask)
// then the visibility rule (causal / window) sets -inf.  One ScoreMod per (batch, head).
// softcap then ALiBi on one score (natural units); dist = i + s_k - s_q - j; *dcap = the softcap
// derivative. The one formula of both transforms: ScoreMod (CPU, every dtype) and ScoreModLite
// (the GPU kernels' float copy of the constants) call it.
// kApproxTanh: fal_tanh_approx (the 16-bit tensor-core kernels), else fal_tanh.
template <typename A, bool kApproxTanh = false>
FAL_HD A softcap_alibi(A x, A softcap, A inv_softcap, A slope, int64_t dist, A* dcap) {
  A g = A(1);
  if (softcap > A(0)) {
    A t;
    if constexpr (kApproxTanh)
      t = fal_tanh_approx(x * inv_softcap);
    else
      t = fal_tanh(x * inv_softcap);
    x = softcap * t;
    g = A(1) - t * t;
  }
  if (slope != A(0)) x -= slope * A(dist < 0 ? -dist : dist);
  if (dcap) *dcap = g;
  return x;
}

struct ScoreMod {
  bool any = false;                         // some transform is active (else kernels skip the call)
  double softcap = 0.0, inv_softcap = 0.0;  // kernels round them to their type
  float slope = 0.f;
  int64_t alibi_diag = 0;  // s_k - s_q
  const uint8_t* mask_b = nullptr;
  const float* mask_f = nullptr;
  const double* mask_d = nullptr;  // additive mask of fp64 inputs
  int64_t mask_row = 0;            // row stride of the mask (the last dim is contiguous)
  Dropout drop;

  // Transformed score of (row i, key j); *dcap = d(result)/ds (the softcap derivative).
  template <typename A>
  FAL_HD A apply(A s, int i, int j, A* dcap) const {
    A g = A(1);
    A x = softcap_alibi(s, A(softcap), A(inv_softcap), A(slope), int64_t(i) + alibi_diag - j, &g);
    if (mask_b != nullptr && mask_b[int64_t(i) * mask_row + j] == 0) x = -A(INFINITY);
    if (mask_f != nullptr) x += A(mask_f[int64_t(i) * mask_row + j]);
    if (mask_d != nullptr) x += A(mask_d[int64_t(i) * mask_row + j]);
    if (dcap) *dcap = g;
    return x;
  }

  // s[c] <- apply(s[c], i, j0 + c)  for c < n
  template <typename A>
  FAL_HD void apply_row(int i, int j0, A* s, int n) const {
    for (int c = 0; c < n; ++c) s[c] = apply(s[c], i, j0 + c, static_cast<A*>(nullptr));
  }
};

// softcap and ALiBi alone, constants in float: what the GPU kernels keep in registers.
struct ScoreModLite {
  float softcap = 0.f, inv_softcap = 0.f, slope = 0.f;
  int alibi_diag = 0;  // s_k - s_q
  FAL_HD float apply(float s, int i, int j, float* dcap) const {
    return softcap_alibi<float, true>(s, softcap, inv_softcap, slope, int64_t(i) + alibi_diag - j, dcap);
  }
};

// s_q / s_k: the lengths of this batch's sequences (varlen); bi, hi: batch and query head.
FAL_HD ScoreModLite make_score_mod_lite(const FwdParams& p, int bi, int hi, int s_q, int s_k) {
  ScoreModLite m;
  m.softcap = float(p.softcap);
  m.inv_softcap = p.softcap > 0.0 ? float(1.0 / p.softcap) : 0.f;
  if (p.alibi_slopes) m.slope = p.alibi_slopes[bi * p.alibi_batch_stride + hi];
  m.alibi_diag = s_k - s_q;
  return m;
}

// s_q / s_k: the lengths of this batch's sequences (varlen); bi, hi: batch and query head.
FAL_HD ScoreMod make_score_mod(const FwdParams& p, int bi, int hi, int s_q, int s_k) {
  ScoreMod m;
  m.softcap = p.softcap;
  m.inv_softcap = p.softcap > 0.0 ? 1.0 / p.softcap : 0.0;
  if (p.alibi_slopes) m.slope = p.alibi_slopes[bi * p.alibi_batch_stride + hi];
  m.alibi_diag = int64_t(s_k) - int64_t(s_q);
  if (p.mask) {
    const int64_t off = bi * p.mask_batch_stride + hi * p.mask_head_stride;
    if (p.mask_kind == MaskKind::kBool)
      m.mask_b = static_cast<const uint8_t*>(p.mask) + off;
    else if (p.dtype == DType::kFloat64)
      m.mask_d = static_cast<const double*>(p.mask) + off;
    else
      m.mask_f = static_cast<const float*>(p.mask) + off;
    m.mask_row = p.mask_row_stride;
  }
  m.any = m.softcap > 0.0 || p.alibi_slopes != nullptr || p.mask != nullptr;
  m.drop = make_dropout(p);
  m.drop.bh = uint32_t(int64_t(bi) * p.h + hi);
  return m;
}

// Number of query tiles of `rows` rows.
FAL_HD int num_tiles(int n, int tile) { return (n + tile - 1) / tile; }

FAL_ISA_NS_END
}  // namespace fal
