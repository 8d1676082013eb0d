// attn_simd.cpp -- SIMD attention kernels (forward; the backward delegates to the portable
// kernel for now), compiled once per ISA (AVX-512, AVX2) with that ISA's flags; see vec.h.
//
// Forward, one work item = (batch, head, chunk of kQC query rows):
//   Q chunk -> fp32, pre-multiplied by the softmax scale (scores in natural units; the exponent
//   exp2((s - m) * log2 e) is formed from the difference, so large scores lose no precision);
//   for each key tile of kBN keys: K^T and V packed once into fp32 panels (Kt: d x kBN,
//   V: kBN x dvp) that every row group of the chunk reuses from L1; then per group of kRM rows:
//     S = Q K^T             microkernel kRM x (kNV vectors of keys), register-blocked
//     online softmax        m_new = max(m, rowmax S); O *= exp2(m - m_new) only if m moved;
//                           P = exp2(S - m_new); l = l * exp2(m - m_new) + rowsum P
//     O += P V              microkernel kRM x (kNV vectors of head dims)
// Register budget (AVX-512, 32 zmm): 6 rows x 4 vectors = 24 accumulators + 4 panel loads +
// 1 broadcast = 29. AVX2 (16 ymm): 6 x 2 = 12 + 2 + 1 = 15.
// Chunk size: with kQC = 256 the K/V packing (scalar transpose) costs ~6 % of the chunk's FLOPs
// at d = 64; the packed tile (2 * 64 * d * 4 B = 32 KB at d = 64) stays in L1/L2 while the
// chunk's 43 row groups pass over it.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <memory>

#include "cpu/cpu_kernels.h"
#include "cpu/simd/vec.h"
#include "cpu/tile_io.h"
#include "flashattn_lite/attn_math.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

// This file is compiled once per ISA with that ISA's -m flags. Any inline function or template
// instantiation it shares with other translation units (Buf<float>'s members, say) is a
// weak symbol the linker may take from *this* object for everyone, which would put AVX-512 code
// on the scalar path of a CPU without it. So everything here lives in the per-ISA namespace:
// no std containers or algorithms, only this Buf and fill.
template <typename T>
class Buf {
 public:
  Buf() = default;
  explicit Buf(size_t n, T v = T()) { assign(n, v); }
  void resize(size_t n) {  // contents unspecified
    if (n > cap_) {
      data_.reset(new T[n]);
      cap_ = n;
    }
    n_ = n;
  }
  void assign(size_t n, T v) {
    resize(n);
    for (size_t i = 0; i < n; ++i) data_[i] = v;
  }
  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  T* begin() { return data_.get(); }
  T* end() { return data_.get() + n_; }
  size_t size() const { return n_; }
  T& operator[](size_t i) { return data_[i]; }

 private:
  std::unique_ptr<T[]> data_;
  size_t n_ = 0, cap_ = 0;
};

template <typename T>
inline void fill(T* b, T* e, T v) {
  for (; b < e; ++b) *b = v;
}

inline bool has_nan(const float* x, int n) {
  for (int i = 0; i < n; ++i)
    if (x[i] != x[i]) return true;
  return false;
}

constexpr int kRM = 6;                    // rows per microkernel
constexpr int kNV = kN == 16 ? 4 : 2;     // vectors per row in a microkernel
constexpr int kBN = 64;                   // keys per tile (a multiple of kNV * kN)
constexpr int kQC = 256;                  // query rows per work item
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kBN % (kNV * kN) == 0, "key tile must be a whole number of microkernel passes");

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// S[r][c] = sum_x Q[r][x] * Kt[x][c]  for r < kRM, c < kBN (Q rows ldq apart)
inline void micro_qk(const float* q, int d, const float* kt, float* s, int ldq) {
  for (int kc = 0; kc < kBN; kc += kNV * kN) {
    VF acc[kRM][kNV];
    for (int r = 0; r < kRM; ++r)
      for (int v = 0; v < kNV; ++v) acc[r][v] = VF::zero();
    for (int x = 0; x < d; ++x) {
      VF kv[kNV];
      for (int v = 0; v < kNV; ++v) kv[v] = VF::load(kt + x * kBN + kc + v * kN);
      for (int r = 0; r < kRM; ++r) {
        const VF qb = VF::set1(q[r * ldq + x]);
        for (int v = 0; v < kNV; ++v) acc[r][v] = fma(qb, kv[v], acc[r][v]);
      }
    }
    for (int r = 0; r < kRM; ++r)
      for (int v = 0; v < kNV; ++v) acc[r][v].store(s + r * kBN + kc + v * kN);
  }
}

// O[r][x] += sum_{c < cols} P[r][c] * V[c][x]  for r < kRM, x < dvp (dvp multiple of kNV * kN;
// P rows kBN apart, V and O rows dvp apart)
inline void micro_pv(const float* pr, const float* vp, int cols, int dvp, float* o) {
  for (int dc = 0; dc < dvp; dc += kNV * kN) {
    VF acc[kRM][kNV];
    for (int r = 0; r < kRM; ++r)
      for (int v = 0; v < kNV; ++v) acc[r][v] = VF::load(o + r * dvp + dc + v * kN);
    for (int c = 0; c < cols; ++c) {
      VF vv[kNV];
      for (int v = 0; v < kNV; ++v) vv[v] = VF::load(vp + c * dvp + dc + v * kN);
      for (int r = 0; r < kRM; ++r) {
        const VF pb = VF::set1(pr[r * kBN + c]);
        for (int v = 0; v < kNV; ++v) acc[r][v] = fma(pb, vv[v], acc[r][v]);
      }
    }
    for (int r = 0; r < kRM; ++r)
      for (int v = 0; v < kNV; ++v) acc[r][v].store(o + r * dvp + dc + v * kN);
  }
}

// ---- score transforms, vectorised (ScoreMod::apply in attn_math.h is the definition; these are
// the same formulas on kN lanes, with the scalar apply for the tail of a row) ---------------------
// tanh(y) = 1 - 2 / (1 + e^{2y}): absolute error ~1e-7 (fp32 tanh rounds to +-1 beyond |y| = 9).
inline VF tanh_v(VF y) {
  const VF yc = vmin(vmax(y, VF::set1(-9.f)), VF::set1(9.f));
  const VF e = exp2(yc * VF::set1(2.f * kLog2e));
  return VF::set1(1.f) - VF::set1(2.f) / (VF::set1(1.f) + e);
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

// sr[c] <- transformed score of (row i, key j0 + c) for c < cols
inline void apply_mods_row(const ScoreMod& m, int i, int j0, float* sr, int cols) {
  int c = 0;
  if (!m.mask_d)
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
#else
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
#else
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

struct FwdScratch {
  Buf<float> q, kt, v, s, o, m, l;
  void resize(int rows_pad, int d, int dvp) {
    q.assign(size_t(rows_pad) * d, 0.f);
    kt.resize(size_t(d) * kBN);
    v.resize(size_t(kBN) * dvp);
    s.resize(size_t(kRM) * kBN);
    o.resize(size_t(rows_pad) * dvp);
    m.resize(rows_pad);
    l.resize(rows_pad);
  }
};

template <typename T>
void fwd_chunk(const FwdParams& p, int bi, int hi, int qc, FwdScratch& w) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int d = p.d, dv = p.d_v, dvp = round_up(dv, kNV * kN);
  const int hk = hi / (p.h / p.h_kv);
  const SeqInfo sq = seq_info(p, bi);
  const int i0 = qc * kQC, i1 = std::min(i0 + kQC, sq.s_q), rows = i1 - i0;
  if (rows <= 0) return;  // a chunk past this (varlen) sequence's end
  const int rows_pad = round_up(rows, kRM);
  const ScoreMod mod = make_score_mod(p, bi, hi, sq.s_q, sq.s_k);
  w.resize(rows_pad, d, dvp);

  const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + sq.q_row0 * p.q_row_stride + hi * p.q_head_stride;
  const T* k = kv_head_ptr<T>(p.k, p.k_batch_stride, p.k_head_stride, p, sq, hk);
  const T* v = kv_head_ptr<T>(p.v, p.v_batch_stride, p.v_head_stride, p, sq, hk);
  const KvRows krows = kv_rows(p, sq, bi, p.k_row_stride, p.k_batch_stride);
  const KvRows vrows = kv_rows(p, sq, bi, p.v_row_stride, p.v_batch_stride);
  // Scores stay in natural units (Q scaled by `scale` only: exact for power-of-two scales); the
  // exp2 argument is (s - m) * log2 e, so no rounding of a large score by log2 e reaches it.
  const float qmul = float(p.scale);
  const VF l2e = VF::set1(kLog2e);
  for (int r = 0; r < rows; ++r) convert_row(q + (i0 + r) * p.q_row_stride, d, qmul, w.q.data() + size_t(r) * d);
  fill(w.o.begin(), w.o.end(), 0.f);
  fill(w.m.begin(), w.m.end(), neg_inf);
  fill(w.l.begin(), w.l.end(), 0.f);

  const Visibility vis = make_visibility(p, sq.s_q, sq.s_k);
  const KeyRange kr = vis.keys_of_rows(i0, i1);
  float* S = w.s.data();
  for (int j0 = kr.lo; j0 < kr.hi; j0 += kBN) {
    const int cols = std::min(kBN, kr.hi - j0);
    // pack K^T (d x kBN) and V (kBN x dvp), zero-padded
    float* kt = w.kt.data();
    for (int c = 0; c < cols; ++c) {
      const T* kr_ = k + krows.at(j0 + c);
      for (int x = 0; x < d; ++x) kt[x * kBN + c] = load_as_float(kr_ + x);
    }
    if (cols < kBN)
      for (int x = 0; x < d; ++x) fill(kt + x * kBN + cols, kt + (x + 1) * kBN, 0.f);
    float* vp = w.v.data();
    for (int c = 0; c < cols; ++c) {
      convert_row(v + vrows.at(j0 + c), dv, 1.f, vp + size_t(c) * dvp);
      fill(vp + size_t(c) * dvp + dv, vp + size_t(c + 1) * dvp, 0.f);
    }

    for (int r0 = 0; r0 < rows; r0 += kRM) {
      const int g0 = i0 + r0, g1 = std::min(g0 + kRM, i1);
      const KeyRange gr = vis.keys_of_rows(g0, g1);
      if (gr.hi <= j0 || gr.lo >= j0 + cols) continue;  // no row of the group sees this tile
      micro_qk(w.q.data() + size_t(r0) * d, d, kt, S, d);
      const bool full = cols == kBN && vis.tile_fully_visible(g0, g1, j0, j0 + cols);
      for (int r = 0; r < kRM; ++r) {
        float* sr = S + r * kBN;
        const int ri = r0 + r;
        if (g0 + r >= g1) {  // padding row
          fill(sr, sr + kBN, 0.f);
          continue;
        }
        if (mod.any) apply_mods_row(mod, g0 + r, j0, sr, cols);
        if (!full) {
          const KeyRange rk = vis.keys_of_row(g0 + r);
          const int lo = std::max(0, rk.lo - j0), hi_ = std::min(cols, rk.hi - j0);
          for (int c = 0; c < kBN; ++c)
            if (c < lo || c >= hi_) sr[c] = neg_inf;
        }
        VF mv = VF::set1(w.m[ri]);
        for (int c = 0; c < kBN; c += kN) mv = vmax(mv, VF::load(sr + c));
        const float mx = mv.hmax();
        if (mx == neg_inf) {  // the row sees nothing yet: P = 0 -- unless its scores are NaN
          if (has_nan(sr, kBN)) w.m[ri] = w.l[ri] = std::numeric_limits<float>::quiet_NaN();
          fill(sr, sr + kBN, 0.f);
          continue;
        }
        const VF mb = VF::set1(mx);
        VF sum = VF::zero();
        for (int c = 0; c < kBN; c += kN) {
          const VF pv = exp2((VF::load(sr + c) - mb) * l2e);
          pv.store(sr + c);
          sum = sum + pv;
        }
        if (mx != w.m[ri]) {  // acc *= exp2(m_old - m_new), l likewise
          const float alpha = std::exp2((w.m[ri] - mx) * kLog2e);
          const VF ab = VF::set1(alpha);
          float* orow = w.o.data() + size_t(ri) * dvp;
          for (int x = 0; x < dvp; x += kN) (VF::load(orow + x) * ab).store(orow + x);
          w.l[ri] *= alpha;
          w.m[ri] = mx;
        }
        w.l[ri] += sum.hsum();
        if (mod.drop.on) dropout_row_vec(mod.drop, g0 + r, j0, sr, cols);  // P V with the dropped P; l without
      }
      micro_pv(S, vp, cols, dvp, w.o.data() + size_t(r0) * dvp);
    }
  }

  T* o = static_cast<T*>(p.o) + bi * p.o_batch_stride + sq.q_row0 * p.o_row_stride + hi * p.o_head_stride;
  float* lse = static_cast<float*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0;
  for (int r = 0; r < rows; ++r) {
    const float l = w.l[r];
    const float inv = row_has_mass(l) ? 1.f / l : 0.f;  // a row that saw no key outputs 0
    T* orow = o + (i0 + r) * p.o_row_stride;
    const float* src = w.o.data() + size_t(r) * dvp;
    for (int x = 0; x < dv; ++x) orow[x] = store_as<T, float>(src[x] * inv);
    lse[i0 + r] = row_has_mass(l) ? w.m[r] + std::log(l) : neg_inf;
  }
}

#if defined(FAL_SIMD_AVX512)
// ---- bf16 forward with vdpbf16ps (AVX512_BF16): both products consume bf16 pairs -------------
// vdpbf16ps acc, a, b: acc[i] += a[2i] * b[2i] + a[2i+1] * b[2i+1]  (16 fp32 lanes, 32 bf16).
//   S = Q K^T:  a = K packed as pairs over d   (Kp[x2][key], uint32 = (k[key][2 x2], k[key][2 x2 + 1]))
//               b = the pair (q[r][2 x2], q[r][2 x2 + 1]) broadcast;  S is then scaled by c.
//   O += P V:   a = V packed as pairs over keys (Vp[j2][x] = (v[2 j2][x], v[2 j2 + 1][x]))
//               b = the pair (P[r][2 j2], P[r][2 j2 + 1]) rounded to bf16 and broadcast.
// Half the instructions of the fp32 microkernels for the same FLOPs; the row sums use the
// unrounded fp32 P (as FA2 does on GPUs).
inline __m512bh as_bh(__m512i x) { return reinterpret_cast<__m512bh&>(x); }

inline void micro_qk_bf16(const uint32_t* q, int d2, int ldq, const uint32_t* kp, float* s) {
  __m512 acc[kRM][kNV];
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
  for (int r = 0; r < kRM; ++r)
    for (int v = 0; v < kNV; ++v) _mm512_storeu_ps(s + r * kBN + v * kN, acc[r][v]);
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

inline uint32_t pair_at(const bf16_t* row, int x2, int d) {  // (row[2 x2], row[2 x2 + 1]), 0-padded
  const uint32_t lo = row[2 * x2].bits;
  const uint32_t hi = 2 * x2 + 1 < d ? row[2 * x2 + 1].bits : 0u;
  return lo | (hi << 16);
}

struct FwdScratchBf16 {
  Buf<uint32_t> q, kp, vp, pb;
  Buf<float> s, o, m, l;
};

void fwd_chunk_bf16(const FwdParams& p, int bi, int hi, int qc, FwdScratchBf16& w) {
  using T = bf16_t;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int d = p.d, d2 = (d + 1) / 2, dv = p.d_v, dvp = round_up(dv, kNV * kN);
  const int hk = hi / (p.h / p.h_kv);
  const SeqInfo sq = seq_info(p, bi);
  const int i0 = qc * kQC, i1 = std::min(i0 + kQC, sq.s_q), rows = i1 - i0;
  if (rows <= 0) return;  // a chunk past this (varlen) sequence's end
  const int rows_pad = round_up(rows, kRM);
  const ScoreMod mod = make_score_mod(p, bi, hi, sq.s_q, sq.s_k);
  w.q.assign(size_t(rows_pad) * d2, 0u);
  w.kp.resize(size_t(d2) * kBN);
  w.vp.resize(size_t(kBN / 2) * dvp);
  w.pb.resize(size_t(kRM) * (kBN / 2));
  w.s.resize(size_t(kRM) * kBN);
  w.o.assign(size_t(rows_pad) * dvp, 0.f);
  w.m.assign(rows_pad, neg_inf);
  w.l.assign(rows_pad, 0.f);

  const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + sq.q_row0 * p.q_row_stride + hi * p.q_head_stride;
  const T* k = kv_head_ptr<T>(p.k, p.k_batch_stride, p.k_head_stride, p, sq, hk);
  const T* v = kv_head_ptr<T>(p.v, p.v_batch_stride, p.v_head_stride, p, sq, hk);
  const KvRows krows = kv_rows(p, sq, bi, p.k_row_stride, p.k_batch_stride);
  const KvRows vrows = kv_rows(p, sq, bi, p.v_row_stride, p.v_batch_stride);
  for (int r = 0; r < rows; ++r)
    for (int x = 0; x < d2; ++x) w.q[size_t(r) * d2 + x] = pair_at(q + (i0 + r) * p.q_row_stride, x, d);
  const __m512 cb = _mm512_set1_ps(float(p.scale));  // scores in natural units, as in fwd_chunk
  const VF l2e = VF::set1(kLog2e);

  const Visibility vis = make_visibility(p, sq.s_q, sq.s_k);
  const KeyRange kr = vis.keys_of_rows(i0, i1);
  float* S = w.s.data();
  for (int j0 = kr.lo; j0 < kr.hi; j0 += kBN) {
    const int cols = std::min(kBN, kr.hi - j0), cols2 = (cols + 1) / 2;
    uint32_t* kp = w.kp.data();
    for (int cc = 0; cc < kBN; ++cc) {
      if (cc < cols) {
        const T* krow = k + krows.at(j0 + cc);
        for (int x = 0; x < d2; ++x) kp[x * kBN + cc] = pair_at(krow, x, d);
      } else {
        for (int x = 0; x < d2; ++x) kp[x * kBN + cc] = 0u;
      }
    }
    uint32_t* vp = w.vp.data();
    for (int j = 0; j < kBN / 2; ++j) {
      const T* r0p = 2 * j < cols ? v + vrows.at(j0 + 2 * j) : nullptr;
      const T* r1p = 2 * j + 1 < cols ? v + vrows.at(j0 + 2 * j + 1) : nullptr;
      uint32_t* dst = vp + size_t(j) * dvp;
      int x = 0;
      const __mmask16 all = 0xffff;
      for (; x < dvp; x += kN) {
        const int n = std::max(0, std::min(kN, dv - x));
        const __mmask16 mk = n == kN ? all : __mmask16((1u << n) - 1u);
        const __m512i a = r0p && n ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, r0p + x)) : _mm512_setzero_si512();
        const __m512i b = r1p && n ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, r1p + x)) : _mm512_setzero_si512();
        _mm512_storeu_si512(dst + x, _mm512_or_si512(a, _mm512_slli_epi32(b, 16)));
      }
    }

    for (int r0 = 0; r0 < rows; r0 += kRM) {
      const int g0 = i0 + r0, g1 = std::min(g0 + kRM, i1);
      const KeyRange gr = vis.keys_of_rows(g0, g1);
      if (gr.hi <= j0 || gr.lo >= j0 + cols) continue;
      micro_qk_bf16(w.q.data() + size_t(r0) * d2, d2, d2, kp, S);
      const bool full = cols == kBN && vis.tile_fully_visible(g0, g1, j0, j0 + cols);
      for (int r = 0; r < kRM; ++r) {
        float* sr = S + r * kBN;
        uint32_t* pbr = w.pb.data() + r * (kBN / 2);
        const int ri = r0 + r;
        bool zero = g0 + r >= g1;
        if (!zero) {
          for (int cc = 0; cc < kBN; cc += kN) _mm512_storeu_ps(sr + cc, _mm512_mul_ps(_mm512_loadu_ps(sr + cc), cb));
          if (mod.any) apply_mods_row(mod, g0 + r, j0, sr, cols);
          if (!full) {
            const KeyRange rk = vis.keys_of_row(g0 + r);
            const int lo = std::max(0, rk.lo - j0), hi_ = std::min(cols, rk.hi - j0);
            for (int cc = 0; cc < kBN; ++cc)
              if (cc < lo || cc >= hi_) sr[cc] = neg_inf;
          }
          __m512 mv = _mm512_set1_ps(w.m[ri]);
          for (int cc = 0; cc < kBN; cc += kN) mv = _mm512_max_ps(mv, _mm512_loadu_ps(sr + cc));
          const float mx = _mm512_reduce_max_ps(mv);
          if (mx == neg_inf) {
            if (has_nan(sr, kBN)) w.m[ri] = w.l[ri] = std::numeric_limits<float>::quiet_NaN();
            zero = true;
          } else {
            const VF mb = VF::set1(mx);
            VF sum = VF::zero();
            for (int cc = 0; cc < kBN; cc += 2 * kN) {
              const VF pa = exp2((VF::load(sr + cc) - mb) * l2e), pc = exp2((VF::load(sr + cc + kN) - mb) * l2e);
              sum = sum + pa + pc;
              if (mod.drop.on) {  // keep fp32 P for the dropout pass below
                pa.store(sr + cc);
                pc.store(sr + cc + kN);
              } else {
                _mm512_storeu_si512(pbr + cc / 2, reinterpret_cast<const __m512i&>(static_cast<const __m512bh&>(_mm512_cvtne2ps_pbh(pc.v, pa.v))));
              }
            }
            if (mx != w.m[ri]) {
              const float alpha = std::exp2((w.m[ri] - mx) * kLog2e);
              const VF ab = VF::set1(alpha);
              float* orow = w.o.data() + size_t(ri) * dvp;
              for (int x = 0; x < dvp; x += kN) (VF::load(orow + x) * ab).store(orow + x);
              w.l[ri] *= alpha;
              w.m[ri] = mx;
            }
            w.l[ri] += sum.hsum();
            if (mod.drop.on) {
              dropout_row_vec(mod.drop, g0 + r, j0, sr, cols);
              for (int cc = 0; cc < kBN; cc += 2 * kN) {
                const __m512bh h2 = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(sr + cc + kN), _mm512_loadu_ps(sr + cc));
                _mm512_storeu_si512(pbr + cc / 2, reinterpret_cast<const __m512i&>(h2));
              }
            }
          }
        }
        if (zero) fill(pbr, pbr + kBN / 2, 0u);
      }
      micro_pv_bf16(w.pb.data(), vp, cols2, dvp, w.o.data() + size_t(r0) * dvp);
    }
  }

  T* o = static_cast<T*>(p.o) + bi * p.o_batch_stride + sq.q_row0 * p.o_row_stride + hi * p.o_head_stride;
  float* lse = static_cast<float*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0;
  for (int r = 0; r < rows; ++r) {
    const float l = w.l[r];
    const float inv = row_has_mass(l) ? 1.f / l : 0.f;
    T* orow = o + (i0 + r) * p.o_row_stride;
    const float* src = w.o.data() + size_t(r) * dvp;
    for (int x = 0; x < dv; ++x) orow[x] = store_as<T, float>(src[x] * inv);
    lse[i0 + r] = row_has_mass(l) ? w.m[r] + std::log(l) : neg_inf;
  }
}
#endif  // FAL_SIMD_AVX512

// ---- decode: few query rows against a long KV range, K and V streamed once ------------------
// Several query rows (GQA heads packed as rows, speculative decoding) share each block of kN
// keys: K is staged transposed (dp x kN, one vector = kN keys of one dim), so a row's kN scores
// are one vector built by d broadcast-FMAs -- no horizontal sums -- and R rows share each K load;
// P V is blocked R rows x 4 vectors of O, so each V load feeds R FMAs.
// Registers (zmm / ymm): QK 2R accumulators (two dims in flight) + 2 K vectors: R = 8 -> 18 of
// 32 on AVX-512, R = 4 -> 10 of 16 on AVX2; PV R x 4 accumulators + 4 V vectors + 1 broadcast:
// R = 4 -> 21 of 32, R = 2 -> 13 of 16.
constexpr int kQkRows = kN == 16 ? 8 : 4;
constexpr int kPvRows = kN == 16 ? 4 : 2;

// sc[r][0..kN) = q_r . k_j for the block's keys; q rows dp apart (zero past d), kT = dp x kN.
template <int R>
inline void decode_qk_rows(const float* qf, int dp, const float* kT, int d, float* sc) {
  VF a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = VF::zero();
  int x = 0;
  for (; x + 1 < d; x += 2) {
    const VF k0 = VF::load(kT + size_t(x) * kN), k1 = VF::load(kT + size_t(x + 1) * kN);
    for (int r = 0; r < R; ++r) {
      a0[r] = fma(VF::set1(qf[size_t(r) * dp + x]), k0, a0[r]);
      a1[r] = fma(VF::set1(qf[size_t(r) * dp + x + 1]), k1, a1[r]);
    }
  }
  if (x < d) {
    const VF k0 = VF::load(kT + size_t(x) * kN);
    for (int r = 0; r < R; ++r) a0[r] = fma(VF::set1(qf[size_t(r) * dp + x]), k0, a0[r]);
  }
  for (int r = 0; r < R; ++r) (a0[r] + a1[r]).store(sc + r * kN);
}

// o[r][0..dv) += sum_{jj < nk} p[r][jj] v_jj[0..dv), the V rows read in place (converted to fp32
// on the fly: each load feeds R FMAs); o rows dvp apart, p rows kN apart.
template <int R, typename T>
inline void decode_pv_rows(const float* p, const T* const* vp, int dv, int nk, float* o, int dvp) {
  int x0 = 0;
  for (; x0 + 4 * kN <= dv; x0 += 4 * kN) {
    VF acc[R][4];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 4; ++c) acc[r][c] = VF::load(o + size_t(r) * dvp + x0 + c * kN);
    for (int jj = 0; jj < nk; ++jj) {
      const T* vr = vp[jj] + x0;
      const VF v0 = load_f32(vr, kN), v1 = load_f32(vr + kN, kN), v2 = load_f32(vr + 2 * kN, kN),
               v3 = load_f32(vr + 3 * kN, kN);
      for (int r = 0; r < R; ++r) {
        const VF pr = VF::set1(p[r * kN + jj]);
        acc[r][0] = fma(pr, v0, acc[r][0]);
        acc[r][1] = fma(pr, v1, acc[r][1]);
        acc[r][2] = fma(pr, v2, acc[r][2]);
        acc[r][3] = fma(pr, v3, acc[r][3]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 4; ++c) acc[r][c].store(o + size_t(r) * dvp + x0 + c * kN);
  }
  for (; x0 < dv; x0 += kN) {
    const int w = std::min(kN, dv - x0);
    VF acc[R];
    for (int r = 0; r < R; ++r) acc[r] = VF::load(o + size_t(r) * dvp + x0);
    for (int jj = 0; jj < nk; ++jj) {
      const VF vv = load_f32(vp[jj] + x0, w);
      for (int r = 0; r < R; ++r) acc[r] = fma(VF::set1(p[r * kN + jj]), vv, acc[r]);
    }
    for (int r = 0; r < R; ++r) acc[r].store(o + size_t(r) * dvp + x0);
  }
}

// Runtime row count -> the templates above (rows 1..R_max in blocks of R_max).
template <int RMax, typename F>
inline void for_row_blocks(int rows, F&& f) {
  for (int r0 = 0; r0 < rows; r0 += RMax) {
    const int n = std::min(RMax, rows - r0);
    switch (n) {
      case 1: f(r0, std::integral_constant<int, 1>{}); break;
      case 2: f(r0, std::integral_constant<int, 2>{}); break;
      case 3: if constexpr (RMax >= 3) f(r0, std::integral_constant<int, 3>{}); break;
      case 4: if constexpr (RMax >= 4) f(r0, std::integral_constant<int, 4>{}); break;
      case 5: if constexpr (RMax >= 5) f(r0, std::integral_constant<int, 5>{}); break;
      case 6: if constexpr (RMax >= 6) f(r0, std::integral_constant<int, 6>{}); break;
      case 7: if constexpr (RMax >= 7) f(r0, std::integral_constant<int, 7>{}); break;
      default: if constexpr (RMax >= 8) f(r0, std::integral_constant<int, 8>{}); break;
    }
  }
}

// One work item = (batch, head, split of the keys). Keys go in blocks of kN: the block's K and V
// rows are converted to fp32 once (L1), the kN scores of a row are kN independent FMA chains,
// reduced to one vector; max / exp2 / sum run on that vector; O += P V walks the block with the
// O row chunks as accumulators. Memory-bound: nothing is packed across blocks.
// One (batch, query head)'s decode state over a key range: run() may be called on consecutive key
// ranges (the all-heads items below interleave the heads chunk by chunk), finish() writes the
// output (or the split's partial output and LSE).
template <typename T>
struct DecodeHead {
  const FwdParams* pp = nullptr;
  int bi = 0, hi = 0, rows = 0, d = 0, dv = 0, dp = 0, dvp = 0;
  bool prefetch = true;  // software prefetch of the rows 4 blocks ahead (per-head streams)
  SeqInfo sq{};
  ScoreMod mod;
  float *qf = nullptr, *of = nullptr, *m = nullptr, *l = nullptr, *pb = nullptr, *kb = nullptr;
  const T *k = nullptr, *v = nullptr;
  KvRows krows, vrows;
  KeyRange rr[kDecodeMaxRows];
  KeyRange kr{0, 0};

  // per-head state (Q, O, m, l, P of a block) and the block staging scratch (K, V rows as fp32),
  // which heads processed one after the other can share
  static size_t floats(const FwdParams& p) {
    return size_t(p.s_q) * (round_up(p.d, kN) + round_up(p.d_v, kN) + 2 + kN);
  }
  static size_t scratch_floats(const FwdParams& p) { return size_t(kN) * round_up(p.d, kN); }

  // Points the state at mem (its layout: floats(p)) without touching it; false when the sequence
  // has no query row.
  bool attach(const FwdParams& p, int bi_, int hi_, float* mem, float* scratch) {
    pp = &p;
    bi = bi_;
    hi = hi_;
    sq = seq_info(p, bi);
    d = p.d, dv = p.d_v, dp = round_up(d, kN), dvp = round_up(dv, kN), rows = sq.s_q;
    if (rows <= 0) return false;
    const int hk = hi / (p.h / p.h_kv);
    mod = make_score_mod(p, bi, hi, sq.s_q, sq.s_k);
    qf = mem;                          // rows x dp (scaled by c)
    of = qf + size_t(rows) * dp;       // rows x dvp
    m = of + size_t(rows) * dvp;       // rows
    l = m + rows;                      // rows
    pb = l + rows;                     // rows x kN probabilities of the block
    kb = scratch;                      // K of a block, transposed: dp x kN
    k = kv_head_ptr<T>(p.k, p.k_batch_stride, p.k_head_stride, p, sq, hk);
    v = kv_head_ptr<T>(p.v, p.v_batch_stride, p.v_head_stride, p, sq, hk);
    krows = kv_rows(p, sq, bi, p.k_row_stride, p.k_batch_stride);
    vrows = kv_rows(p, sq, bi, p.v_row_stride, p.v_batch_stride);
    const Visibility vis = make_visibility(p, sq.s_q, sq.s_k);
    kr = vis.keys_of_rows(0, rows);
    for (int r = 0; r < rows; ++r) rr[r] = vis.keys_of_row(r);
    return true;
  }

  // attach + a fresh state: Q converted (times the scale), O = 0, m = -inf, l = 0.
  bool init(const FwdParams& p, int bi_, int hi_, float* mem, float* scratch) {
    if (!attach(p, bi_, hi_, mem, scratch)) return false;
    fill(mem, mem + floats(p), 0.f);
    const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + sq.q_row0 * p.q_row_stride + hi * p.q_head_stride;
    const float c = float(p.scale);  // natural-unit scores; exp2 of (s - m) * log2 e
    for (int r = 0; r < rows; ++r) {
      convert_row(q + r * p.q_row_stride, d, c, qf + size_t(r) * dp);
      m[r] = -std::numeric_limits<float>::infinity();
    }
    return true;
  }

  // Keys [j_begin, j_end) of split `split` of the visible range.
  void split_range(int split, int& j_begin, int& j_end) const {
    const int n = kr.hi - kr.lo, per = (n + pp->num_splits - 1) / pp->num_splits;
    j_begin = kr.lo + std::min(n, split * per);
    j_end = kr.lo + std::min(n, (split + 1) * per);
  }

  void run(int j_begin, int j_end) {
    const float neg_inf = -std::numeric_limits<float>::infinity();
    const VF l2e = VF::set1(kLog2e);
    alignas(64) float sc[kN];
    const int krow_bytes = d * int(sizeof(T)), vrow_bytes = dv * int(sizeof(T));
    for (int jb = j_begin; jb < j_end; jb += kN) {
      const int nk = std::min(kN, j_end - jb);
      // software prefetch of the block after next: the two interleaved streams (K, V) with a row
      // stride of heads * d elements defeat the hardware prefetcher's distance (measured: 6-9 GB/s
      // per core without, against ~40 GB/s for a plain read)
      for (int jj = 0; prefetch && jj < kN && jb + 4 * kN + jj < j_end; ++jj) {
        const char* kn = reinterpret_cast<const char*>(k + krows.at(jb + 4 * kN + jj));
        const char* vn = reinterpret_cast<const char*>(v + vrows.at(jb + 4 * kN + jj));
        for (int off = 0; off < krow_bytes; off += 64) _mm_prefetch(kn + off, _MM_HINT_T0);
        for (int off = 0; off < vrow_bytes; off += 64) _mm_prefetch(vn + off, _MM_HINT_T0);
      }
      if (rows == 1) {  // single query row: read K and V rows in place, no staging copies
        const KeyRange& rk = rr[0];
        if (rk.hi <= jb || rk.lo >= jb + nk) continue;
        const T* kp[kN];
        const T* vp[kN];
        for (int jj = 0; jj < nk; ++jj) {
          kp[jj] = k + krows.at(jb + jj);
          vp[jj] = v + vrows.at(jb + jj);
        }
        VF acc[kN];
        for (int jj = 0; jj < kN; ++jj) acc[jj] = VF::zero();
        for (int x = 0; x < d; x += kN) {
          const int w = std::min(kN, d - x);
          const VF qv = VF::load(qf + x);
          for (int jj = 0; jj < nk; ++jj) acc[jj] = fma(qv, load_f32(kp[jj] + x, w), acc[jj]);
        }
        hsum_each(acc).store(sc);  // (keys past nk: zero accumulators, masked below)
        if (mod.any || nk < kN || jb < rk.lo || jb + kN > rk.hi)  // else: every key of the block visible as is
          for (int jj = 0; jj < kN; ++jj) {
            const int j = jb + jj;
            if (!(jj < nk && j >= rk.lo && j < rk.hi)) sc[jj] = neg_inf;
            else if (mod.any) sc[jj] = mod.apply(sc[jj], 0, j, static_cast<float*>(nullptr));
          }
        const VF sv = VF::load(sc);
        const float mx = std::max(m[0], sv.hmax());
        if (mx == neg_inf) {  // every score so far masked (attn_mask): P = 0 -- unless one is NaN
          if (has_nan(sc, kN)) m[0] = l[0] = std::numeric_limits<float>::quiet_NaN();
          continue;
        }
        const VF pv = exp2((sv - VF::set1(mx)) * l2e);
        pv.store(pb);
        if (mx != m[0]) {
          const float alpha = std::exp2((m[0] - mx) * kLog2e);
          const VF ab = VF::set1(alpha);
          for (int x = 0; x < dvp; x += kN) (VF::load(of + x) * ab).store(of + x);
          l[0] *= alpha;
          m[0] = mx;
        }
        l[0] += pv.hsum();
        if (mod.drop.on) mod.drop.apply_row(0, jb, pb, nk);
        for (int x = 0; x < dv; x += kN) {
          const int w = std::min(kN, dv - x);
          VF o = VF::load(of + x);
          for (int jj = 0; jj < nk; ++jj) o = fma(VF::set1(pb[jj]), load_f32(vp[jj] + x, w), o);
          o.store(of + x);
        }
        continue;
      }
      // K transposed (kT = kb: dp x kN, keys past nk zero); V read in place by the P V below
      const T* vp[kN];
      {
        const T* kp[kN];
        for (int jj = 0; jj < nk; ++jj) {
          kp[jj] = k + krows.at(jb + jj);
          vp[jj] = v + vrows.at(jb + jj);
        }
        float* const kT = kb;
        const int dd = d;
        VF blk[kN];
        for (int x = 0; x < dp; x += kN) {
          const int w = std::max(0, std::min(kN, dd - x));
          for (int jj = 0; jj < kN; ++jj) blk[jj] = jj < nk ? load_f32(kp[jj] + x, w) : VF::zero();
          transpose_store(blk, kT + size_t(x) * kN, kN);
        }
      }
      alignas(64) float sall[kDecodeMaxRows * kN];
      for_row_blocks<kQkRows>(rows, [&](int r0, auto rn) {
        decode_qk_rows<decltype(rn)::value>(qf + size_t(r0) * dp, dp, kb, d, sall + r0 * kN);
      });
      for (int r = 0; r < rows; ++r) {
        float* pr = pb + r * kN;
        float* srow = sall + r * kN;
        const KeyRange& rk = rr[r];
        if (rk.hi <= jb || rk.lo >= jb + nk) {  // the row sees nothing in this block
          fill(pr, pr + kN, 0.f);
          continue;
        }
        if (mod.any || nk < kN || jb < rk.lo || jb + kN > rk.hi)  // else: every key of the block visible as is
          for (int jj = 0; jj < kN; ++jj) {
            const int j = jb + jj;
            if (!(jj < nk && j >= rk.lo && j < rk.hi)) srow[jj] = neg_inf;
            else if (mod.any) srow[jj] = mod.apply(srow[jj], r, j, static_cast<float*>(nullptr));
          }
        const VF sv = VF::load(srow);
        const float mx = std::max(m[r], sv.hmax());
        if (mx == neg_inf) {
          if (has_nan(srow, kN)) m[r] = l[r] = std::numeric_limits<float>::quiet_NaN();
          fill(pr, pr + kN, 0.f);
          continue;
        }
        const VF pv = exp2((sv - VF::set1(mx)) * l2e);
        pv.store(pr);
        float* orow = of + size_t(r) * dvp;
        if (mx != m[r]) {  // acc *= exp2(m_old - m_new)
          const float alpha = std::exp2((m[r] - mx) * kLog2e);
          const VF ab = VF::set1(alpha);
          for (int x = 0; x < dvp; x += kN) (VF::load(orow + x) * ab).store(orow + x);
          l[r] *= alpha;
          m[r] = mx;
        }
        l[r] += pv.hsum();
        if (mod.drop.on) mod.drop.apply_row(r, jb, pr, nk);
      }
      for_row_blocks<kPvRows>(rows, [&](int r0, auto rn) {
        decode_pv_rows<decltype(rn)::value>(pb + r0 * kN, vp, dv, nk, of + size_t(r0) * dvp, dvp);
      });
    }
  }

  void finish(int split) {
    const FwdParams& p = *pp;
    const float neg_inf = -std::numeric_limits<float>::infinity();
    const bool partial = p.num_splits > 1;
    const int64_t row0 = (int64_t(bi) * p.h + hi) * p.s_q;
    for (int r = 0; r < rows; ++r) {
      const float inv = row_has_mass(l[r]) ? 1.f / l[r] : 0.f;
      const float lse = row_has_mass(l[r]) ? m[r] + std::log(l[r]) : neg_inf;
      const float* src = of + size_t(r) * dvp;
      if (partial) {
        const int64_t w = int64_t(split) * p.b * p.h * p.s_q + row0 + r;
        for (int x = 0; x < dv; ++x) p.o_accum[w * dv + x] = src[x] * inv;
        p.lse_accum[w] = lse;
      } else {
        T* orow = static_cast<T*>(p.o) + bi * p.o_batch_stride + hi * p.o_head_stride + (sq.q_row0 + r) * p.o_row_stride;
        for (int x = 0; x < dv; ++x) orow[x] = store_as<T, float>(src[x] * inv);
        static_cast<float*>(p.lse)[bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0 + r] = lse;
      }
    }
  }
};

template <typename T>
void decode_item(const FwdParams& p, int bi, int hi, int split, Buf<float>& buf) {
  buf.resize(DecodeHead<T>::floats(p) + DecodeHead<T>::scratch_floats(p));
  DecodeHead<T> h;
  if (!h.init(p, bi, hi, buf.data(), buf.data() + DecodeHead<T>::floats(p))) return;
  int j0, j1;
  h.split_range(split, j0, j1);
  h.run(j0, j1);
  h.finish(split);
}

// Prefetch of the next decode chunk: into L2 only for fp32 (its 16-key chunk of H32 D128 is 512 KB,
// which L1 cannot hold: 37 -> 40 GB/s), into L1 for bf16 (half the bytes per key, and the
// conversion makes the compute heavier: 30 -> 36 GB/s). Measured interleaved in one process,
// 12 alternating calls per hint, B1 H32 1 x 32768 D128, 2 threads.
template <typename T>
inline void prefetch_chunk(const char* a) {
  if constexpr (sizeof(T) == 4) _mm_prefetch(a, _MM_HINT_T1);
  else _mm_prefetch(a, _MM_HINT_T0);
}

// Decode over K/V whose heads are interleaved in a row ((batch, seqlen, heads, dim), the flash-attn
// and KV-cache layout): one work item = (batch, split of the keys) for *every* head, walking the
// keys in chunks that fit in L2 and, per chunk, every head over it. Each K/V row is then read
// from memory once, as a contiguous h_kv * d span (prefetched a chunk ahead), instead of as h_kv
// strided streams, one per head item (measured: 12.5 GB/s that way at H32 D128 bf16).
template <typename T>
void decode_item_heads(const FwdParams& p, int bi, int h0, int h1, int split, Buf<float>& buf) {
  const size_t per_head = DecodeHead<T>::floats(p);
  buf.resize(per_head * (h1 - h0) + DecodeHead<T>::scratch_floats(p));
  float* scratch = buf.data() + per_head * (h1 - h0);
  DecodeHead<T> first;  // every head's state lives in buf; the structs are re-attached per use
  if (!first.init(p, bi, h0, buf.data(), scratch)) return;
  int j_begin, j_end;
  first.split_range(split, j_begin, j_end);
  for (int hi = h0 + 1; hi < h1; ++hi) {
    DecodeHead<T> h;
    h.init(p, bi, hi, buf.data() + per_head * (hi - h0), scratch);
  }
  // chunks of ~64 KB of K + V (L2-resident while the group's heads pass over them); the next
  // chunk is prefetched a slice per head, interleaved with the compute
  const int g = p.h / p.h_kv, hk0 = h0 / g, hk1 = (h1 - 1) / g + 1;
  const int64_t span_k = (int64_t(hk1 - hk0 - 1) * p.k_head_stride + p.d) * int64_t(sizeof(T));
  const int64_t span_v = (int64_t(hk1 - hk0 - 1) * p.v_head_stride + p.d_v) * int64_t(sizeof(T));
  const int chunk = std::max(kN, int((64 * 1024) / (span_k + span_v)) / kN * kN);
  const T* k0 = kv_head_ptr<T>(p.k, p.k_batch_stride, p.k_head_stride, p, first.sq, hk0);
  const T* v0 = kv_head_ptr<T>(p.v, p.v_batch_stride, p.v_head_stride, p, first.sq, hk0);
  const int nh = h1 - h0;
  for (int jc = j_begin; jc < j_end; jc += chunk) {
    const int jn = std::min(jc + chunk, j_end), next_n = std::min(jn + chunk, j_end) - jn;
    for (int hi = h0; hi < h1; ++hi) {
      const int s0 = int(int64_t(next_n) * (hi - h0) / nh), s1 = int(int64_t(next_n) * (hi - h0 + 1) / nh);
      for (int j = jn + s0; j < jn + s1; ++j) {
        const char* kr_ = reinterpret_cast<const char*>(k0 + first.krows.at(j));
        const char* vr_ = reinterpret_cast<const char*>(v0 + first.vrows.at(j));
        for (int64_t off = 0; off < span_k; off += 64) prefetch_chunk<T>(kr_ + off);
        for (int64_t off = 0; off < span_v; off += 64) prefetch_chunk<T>(vr_ + off);
      }
      DecodeHead<T> h;
      h.attach(p, bi, hi, buf.data() + per_head * (hi - h0), scratch);
      h.prefetch = false;
      h.run(jc, jn);
    }
  }
  for (int hi = h0; hi < h1; ++hi) {
    DecodeHead<T> h;
    h.attach(p, bi, hi, buf.data() + per_head * (hi - h0), scratch);
    h.finish(split);
  }
}

inline bool use_decode(const FwdParams& p) { return p.s_q <= kDecodeMaxRows; }

// out[c][x] += sum_{r < rows} A[r][c] * B[r][x]   (A^T B; A rows kBN apart, B and out rows ldb
// apart; c < kBN, x < ldb with ldb a multiple of kNV * kN). Blocks of kRM keys x kNV vectors.
// The block's sum starts from zero and is added to out once (blocked summation: dK/dV sum s_q
// rows, and a running sum would grow their rounding error with s_q instead of s_q / rows).
inline void micro_tn(const float* a, const float* b, int rows, int ldb, float* out) {
  for (int c0 = 0; c0 < kBN; c0 += kRM) {
    const int nc = std::min(kRM, kBN - c0);
    for (int dc = 0; dc < ldb; dc += kNV * kN) {
      VF acc[kRM][kNV];
      for (int c = 0; c < kRM; ++c)
        for (int v = 0; v < kNV; ++v) acc[c][v] = VF::zero();
      for (int r = 0; r < rows; ++r) {
        VF bv[kNV];
        for (int v = 0; v < kNV; ++v) bv[v] = VF::load(b + r * ldb + dc + v * kN);
        const float* ar = a + r * kBN + c0;
        for (int c = 0; c < kRM; ++c) {
          if (c >= nc) break;
          const VF ab = VF::set1(ar[c]);
          for (int v = 0; v < kNV; ++v) acc[c][v] = fma(ab, bv[v], acc[c][v]);
        }
      }
      for (int c = 0; c < nc; ++c)
        for (int v = 0; v < kNV; ++v) {
          float* o = out + (c0 + c) * ldb + dc + v * kN;
          (VF::load(o) + acc[c][v]).store(o);
        }
    }
  }
}

// dK / dV summed over the query rows in levels (blocked summation, as a GEMM's K loop): micro_tn
// sums a block of kQB rows from zero and adds it into `part`; every kPartSteps blocks (and before
// the key tile is written) `part` is added into `total` and cleared. The rounding error then grows
// with kQB + kPartSteps + s_q / (kQB kPartSteps) terms instead of s_q (measured, fp32 dV with
// s_k = 1: 4000 rows 2.9e-4 -> below torch's GEMM).
constexpr int kPartSteps = 16;
struct LeveledSum {
  Buf<float> total, part;
  int steps = 0;
  explicit LeveledSum(size_t n) : total(n), part(n) {}
  void clear() {
    fill(total.begin(), total.end(), 0.f);
    fill(part.begin(), part.end(), 0.f);
    steps = 0;
  }
  float* block() { return part.data(); }
  void step() {
    if (++steps == kPartSteps) flush();
  }
  const float* flush() {
    float* t = total.data();
    float* q = part.data();
    const size_t n = total.size();
    for (size_t x = 0; x + kN <= n; x += kN) {
      (VF::load(t + x) + VF::load(q + x)).store(t + x);
      VF::zero().store(q + x);
    }
    steps = 0;
    return t;
  }
};

inline float dot(const float* a, const float* b, int n) {
  VF acc = VF::zero();
  int x = 0;
  for (; x + kN <= n; x += kN) acc = fma(VF::load(a + x), VF::load(b + x), acc);
  float s = acc.hsum();
  for (; x < n; ++x) s += a[x] * b[x];
  return s;
}

// One kRM-row group of the backward, in place: on entry pr = unscaled-or-scaled scores S (times
// `mul` gives scale * q.k) and dsr = dP; on exit pr = P = exp(mul S - lse) and dsr = dS =
// P o (dP - D), both 0 where a row does not see a key, for padding rows and for rows with no key.
// With score transforms / dropout (mod) the elements go one by one: s' = mod(mul S), P = exp(s' - lse),
// dS' = P o (dP o Z - D) (Z: dropout factor), the mask gradient dmask = dS' (when dmask is given: rows
// from row0, dm_stride apart, columns from key 0), dS = dS' * softcap'(S), and pr = P o Z for dV.
inline void p_ds_rows_mod(float* Pr, float* dSr, float mul, int row0, int nrows, int j0, int cols, const Visibility& vis,
                          const float* lse, const float* D, const ScoreMod& mod, float* dmask, int64_t dm_stride) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  float z[kBN];
  for (int r = 0; r < kRM; ++r) {
    float* pr = Pr + r * kBN;
    float* dsr = dSr + r * kBN;
    if (r >= nrows || lse[r] == neg_inf) {
      fill(pr, pr + kBN, 0.f);
      fill(dsr, dsr + kBN, 0.f);
      continue;
    }
    const int i = row0 + r;
    const KeyRange rk = vis.keys_of_row(i);
    const int lo = std::max(0, rk.lo - j0), hi = std::min(cols, rk.hi - j0);
    fill(z, z + kBN, 1.f);
    if (mod.drop.on) dropout_row_vec(mod.drop, i, j0, z, cols);
    float* dmrow = dmask ? dmask + int64_t(i) * dm_stride + j0 : nullptr;
    for (int cc = 0; cc < lo; ++cc) pr[cc] = dsr[cc] = 0.f;
    for (int cc = std::max(hi, 0); cc < kBN; ++cc) pr[cc] = dsr[cc] = 0.f;
    int c0 = lo;
    if (!mod.mask_d) {
      const VF mb = VF::set1(mul), lb = VF::set1(lse[r]), Db = VF::set1(D[r]), l2e = VF::set1(kLog2e);
      for (; c0 + kN <= hi; c0 += kN) {
        VF g;
        const VF sv = mod_vec(mod, VF::load(pr + c0) * mb, i, j0 + c0, &g);
        const VF pv = exp2((sv - lb) * l2e);
        const VF zv = VF::load(z + c0);
        const VF ds = pv * (VF::load(dsr + c0) * zv - Db);
        if (dmrow) ds.store(dmrow + c0);
        (ds * g).store(dsr + c0);
        (pv * zv).store(pr + c0);
      }
    }
    for (int cc = c0; cc < hi; ++cc) {
      float g = 1.f;
      float sv = pr[cc] * mul;
      if (mod.any) sv = mod.apply(sv, i, j0 + cc, &g);
      const float pv = std::exp(sv - lse[r]);
      const float ds = pv * (dsr[cc] * z[cc] - D[r]);
      if (dmrow) dmrow[cc] = ds;
      dsr[cc] = ds * g;
      pr[cc] = pv * z[cc];
    }
  }
}

inline void p_ds_rows(float* Pr, float* dSr, float mul, int row0, int nrows, int j0, int cols, const Visibility& vis,
                      const float* lse, const float* D, const ScoreMod& mod, float* dmask, int64_t dm_stride) {
  if (mod.any || mod.drop.on || dmask)
    return p_ds_rows_mod(Pr, dSr, mul, row0, nrows, j0, cols, vis, lse, D, mod, dmask, dm_stride);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int r = 0; r < kRM; ++r) {
    float* pr = Pr + r * kBN;
    float* dsr = dSr + r * kBN;
    if (r >= nrows || lse[r] == neg_inf) {
      fill(pr, pr + kBN, 0.f);
      fill(dsr, dsr + kBN, 0.f);
      continue;
    }
    const KeyRange rk = vis.keys_of_row(row0 + r);
    const int lo = std::max(0, rk.lo - j0), hi = std::min(cols, rk.hi - j0);
    const VF mb = VF::set1(mul), lb = VF::set1(lse[r]), Db = VF::set1(D[r]), l2e = VF::set1(kLog2e);
    for (int cc = 0; cc < kBN; cc += kN) {
      const VF pv = exp2(fma(VF::load(pr + cc), mb, VF::zero() - lb) * l2e);  // exp(scale q.k - lse)
      pv.store(pr + cc);
      (pv * (VF::load(dsr + cc) - Db)).store(dsr + cc);
    }
    if (lo > 0 || hi < kBN)
      for (int cc = 0; cc < kBN; ++cc)
        if (cc < lo || cc >= hi) pr[cc] = dsr[cc] = 0.f;
  }
}

// D = rowsum(dO o O) - dlse and the LSE for every query row of the heads sharing kv head hk
// (g x s_q each).
template <typename T>
void row_stats(const BwdParams& p, int bi, int hk, float* dsum, float* lse2) {
  const int g = p.h / p.h_kv, dv = p.d_v;
  const SeqInfo sq = seq_info(p, bi);
  Buf<float> row_a(round_up(dv, kN)), row_b(round_up(dv, kN));
  for (int gi = 0; gi < g; ++gi) {
    const int hi = hk * g + gi;
    const T* o = static_cast<const T*>(p.o) + bi * p.o_batch_stride + sq.q_row0 * p.o_row_stride + hi * p.o_head_stride;
    const T* dout = static_cast<const T*>(p.dout) + bi * p.do_batch_stride + sq.q_row0 * p.do_row_stride + hi * p.do_head_stride;
    const float* lse = static_cast<const float*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0;
    const float* dlse = p.dlse ? static_cast<const float*>(p.dlse) + bi * p.dlse_batch_stride + hi * p.dlse_head_stride + sq.q_row0
                               : nullptr;
    for (int i = 0; i < sq.s_q; ++i) {
      convert_row(o + i * p.o_row_stride, dv, 1.f, row_a.data());
      convert_row(dout + i * p.do_row_stride, dv, 1.f, row_b.data());
      dsum[size_t(gi) * sq.s_q + i] = dot(row_a.data(), row_b.data(), dv) - (dlse ? dlse[i] : 0.f);
      lse2[size_t(gi) * sq.s_q + i] = lse[i];
    }
  }
}

// dQ = scale * dQacc (g x s_q x dp fp32), rounded once into the output.
template <typename T>
void write_dq(const BwdParams& p, int bi, int hk, const float* dq_acc, int dp) {
  const int g = p.h / p.h_kv;
  const float sc = float(p.scale);
  const SeqInfo sq = seq_info(p, bi);
  for (int gi = 0; gi < g; ++gi) {
    const int hi = hk * g + gi;
    T* dq = static_cast<T*>(p.dq) + bi * p.dq_batch_stride + sq.q_row0 * p.dq_row_stride + hi * p.dq_head_stride;
    for (int i = 0; i < sq.s_q; ++i) {
      const float* src = dq_acc + (size_t(gi) * sq.s_q + i) * dp;
      T* dqr = dq + i * p.dq_row_stride;
      for (int x = 0; x < p.d; ++x) dqr[x] = store_as<T, float>(src[x] * sc);
    }
  }
}

// Backward, one work item = (batch, kv head), as in the portable kernel (no atomics: the item owns
// dK/dV of its kv head and dQ of the query heads that share it):
//   for each key tile (kBN): pack K (kBN x dp), K^T (d x kBN), V^T (dv x kBN);
//     for each query head of the group, for each block of kQB query rows that see the tile:
//       S = (scale Q) K^T, P = exp2((S - lse) log2 e)                     micro_qk
//       dP = dO V^T, dS = P o (dP - D)                                    micro_qk
//       dV += P^T dO,  dK += dS^T (scale Q)                               micro_tn (inner dim kQB)
//       dQacc += dS K                                                     micro_pv
//   dQ = scale dQacc, rounded once.
// Extra memory per item: dQacc (g x s_q x dp fp32) + D (g x s_q) + O(tile) panels.
constexpr int kQB = 4 * kRM;  // query rows per step (inner dim of micro_tn)

template <typename T>
void bwd_head(const BwdParams& p, int bi, int hk) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int d = p.d, dv = p.d_v, g = p.h / p.h_kv;
  const int dp = round_up(d, kNV * kN), dvp = round_up(dv, kNV * kN);
  const float c = float(p.scale);  // Q scaled by `scale`: natural-unit scores
  const SeqInfo sq = seq_info(p, bi);
  const int s_q = sq.s_q, s_k = sq.s_k;
  const Visibility vis = make_visibility(p, sq.s_q, sq.s_k);

  Buf<float> dq_acc(size_t(g) * s_q * dp, 0.f), dsum(size_t(g) * s_q), lse2(size_t(g) * s_q);
  Buf<float> Kp(size_t(kBN) * dp), Kt(size_t(d) * kBN), Vt(size_t(dv) * kBN);
  LeveledSum dK(size_t(kBN) * dp), dV(size_t(kBN) * dvp);
  Buf<float> Qb(size_t(kQB) * dp), dOb(size_t(kQB) * dvp), P(size_t(kQB) * kBN), dS(size_t(kQB) * kBN);

  auto q_ptr = [&](int hi) {
    return static_cast<const T*>(p.q) + bi * p.q_batch_stride + sq.q_row0 * p.q_row_stride + hi * p.q_head_stride;
  };
  auto do_ptr = [&](int hi) {
    return static_cast<const T*>(p.dout) + bi * p.do_batch_stride + sq.q_row0 * p.do_row_stride + hi * p.do_head_stride;
  };

  row_stats<T>(p, bi, hk, dsum.data(), lse2.data());

  const T* k = static_cast<const T*>(p.k) + bi * p.k_batch_stride + sq.k_row0 * p.k_row_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + bi * p.v_batch_stride + sq.k_row0 * p.v_row_stride + hk * p.v_head_stride;
  T* dkp = static_cast<T*>(p.dk) + bi * p.dk_batch_stride + sq.k_row0 * p.dk_row_stride + hk * p.dk_head_stride;
  T* dvp_out = static_cast<T*>(p.dv) + bi * p.dv_batch_stride + sq.k_row0 * p.dv_row_stride + hk * p.dv_head_stride;

  for (int j0 = 0; j0 < s_k; j0 += kBN) {
    const int cols = std::min(kBN, s_k - j0);
    fill(Kp.begin(), Kp.end(), 0.f);
    fill(Kt.begin(), Kt.end(), 0.f);
    fill(Vt.begin(), Vt.end(), 0.f);
    for (int cc = 0; cc < cols; ++cc) {
      const T* kr_ = k + (j0 + cc) * p.k_row_stride;
      const T* vr_ = v + (j0 + cc) * p.v_row_stride;
      convert_row(kr_, d, 1.f, Kp.data() + size_t(cc) * dp);
      for (int x = 0; x < d; ++x) Kt[x * kBN + cc] = Kp[size_t(cc) * dp + x];
      for (int x = 0; x < dv; ++x) Vt[x * kBN + cc] = load_as_float(vr_ + x);
    }
    dK.clear();
    dV.clear();
    const KeyRange qr = vis.rows_of_keys(j0, j0 + cols, s_q);

    for (int gi = 0; gi < g; ++gi) {
      const int hi = hk * g + gi;
      const T* q = q_ptr(hi);
      const T* dout = do_ptr(hi);
      const float* Dg = dsum.data() + size_t(gi) * s_q;
      const float* L2 = lse2.data() + size_t(gi) * s_q;
      float* dqg = dq_acc.data() + size_t(gi) * s_q * dp;
      const ScoreMod mod = make_score_mod(p, bi, hi, s_q, s_k);
      float* dmask = p.dmask ? static_cast<float*>(p.dmask) + bi * p.dmask_batch_stride + hi * p.dmask_head_stride : nullptr;
      for (int i0 = qr.lo; i0 < qr.hi; i0 += kQB) {
        const int nr = std::min(kQB, qr.hi - i0);
        fill(Qb.begin(), Qb.end(), 0.f);
        fill(dOb.begin(), dOb.end(), 0.f);
        for (int r = 0; r < nr; ++r) {
          convert_row(q + (i0 + r) * p.q_row_stride, d, c, Qb.data() + size_t(r) * dp);
          convert_row(dout + (i0 + r) * p.do_row_stride, dv, 1.f, dOb.data() + size_t(r) * dvp);
        }
        for (int r0 = 0; r0 < kQB; r0 += kRM) {
          float* Pr = P.data() + size_t(r0) * kBN;
          float* dSr = dS.data() + size_t(r0) * kBN;
          if (r0 >= nr) {
            fill(Pr, Pr + kRM * kBN, 0.f);
            fill(dSr, dSr + kRM * kBN, 0.f);
            continue;
          }
          micro_qk(Qb.data() + size_t(r0) * dp, d, Kt.data(), Pr, dp);
          micro_qk(dOb.data() + size_t(r0) * dvp, dv, Vt.data(), dSr, dvp);
          p_ds_rows(Pr, dSr, 1.f, i0 + r0, nr - r0, j0, cols, vis, L2 + i0 + r0, Dg + i0 + r0, mod, dmask, p.dmask_row_stride);
        }
        micro_tn(P.data(), dOb.data(), nr, dvp, dV.block());
        micro_tn(dS.data(), Qb.data(), nr, dp, dK.block());
        dV.step();
        dK.step();
        for (int r0 = 0; r0 < nr; r0 += kRM) {
          if (r0 + kRM <= nr) {
            micro_pv(dS.data() + size_t(r0) * kBN, Kp.data(), cols, dp, dqg + size_t(i0 + r0) * dp);
          } else {  // last partial group: accumulate into a padded scratch block
            Buf<float> tmp(size_t(kRM) * dp, 0.f);
            micro_pv(dS.data() + size_t(r0) * kBN, Kp.data(), cols, dp, tmp.data());
            for (int r = 0; r < nr - r0; ++r)
              for (int x = 0; x < dp; ++x) dqg[size_t(i0 + r0 + r) * dp + x] += tmp[size_t(r) * dp + x];
          }
        }
      }
    }
    const float* dKs = dK.flush();  // dK = scale dS^T Q = dS^T (scale Q)
    const float* dVs = dV.flush();
    for (int cc = 0; cc < cols; ++cc) {
      T* dkr = dkp + (j0 + cc) * p.dk_row_stride;
      T* dvr = dvp_out + (j0 + cc) * p.dv_row_stride;
      for (int x = 0; x < d; ++x) dkr[x] = store_as<T, float>(dKs[size_t(cc) * dp + x]);
      for (int x = 0; x < dv; ++x) dvr[x] = store_as<T, float>(dVs[size_t(cc) * dvp + x]);
    }
  }
  write_dq<T>(p, bi, hk, dq_acc.data(), dp);
}

#if defined(FAL_SIMD_AVX512)
// ---- bf16 backward with vdpbf16ps ----------------------------------------------------------------
// The five products of the backward, each fed bf16 pairs over its inner dimension:
//   S  = Q K^T      pairs over d    (Q rows as stored; K^T packed Kd[x2][key])
//   dP = dO V^T     pairs over dv   (dO rows as stored; V^T packed Vd[x2][key])
//   dV += P^T dO    pairs over query rows (dO packed dOr[r2][x]; P pairs broadcast)
//   dK += dS^T Q    pairs over query rows (Q packed Qr[r2][x]; dS pairs broadcast)
//   dQ += dS K      pairs over keys (K packed Kk[c2][x]; dS pairs broadcast)
// P and dS are rounded to bf16 for the products (as FA2 does on GPUs); all sums are fp32.

// dst[x] = (a[x], b[x]) as a bf16 pair, x < n (n a multiple of kN; zeros past `valid` or for null rows)
inline void pack_row_pairs(const bf16_t* a, const bf16_t* b, int valid, int n, uint32_t* dst) {
  for (int x = 0; x < n; x += kN) {
    const int m = std::max(0, std::min(kN, valid - x));
    const __mmask16 mk = m == kN ? __mmask16(0xffff) : __mmask16((1u << m) - 1u);
    const __m512i lo = a && m ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, a + x)) : _mm512_setzero_si512();
    const __m512i hi = b && m ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, b + x)) : _mm512_setzero_si512();
    _mm512_storeu_si512(dst + x, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
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

// out[c][x] += sum_r2 a[r2][c] . b[r2][x]  (bf16 pairs over rows), c < kBN, x < ldb; blocked
// summation as micro_tn
inline void micro_tn_bf16(const uint32_t* a, const uint32_t* b, int rows2, int ldb, float* out) {
  for (int c0 = 0; c0 < kBN; c0 += kRM) {
    const int nc = std::min(kRM, kBN - c0);
    for (int dc = 0; dc < ldb; dc += kNV * kN) {
      __m512 acc[kRM][kNV];
      for (int c = 0; c < kRM; ++c)
        for (int v = 0; v < kNV; ++v) acc[c][v] = _mm512_setzero_ps();
      for (int r = 0; r < rows2; ++r) {
        __m512bh bv[kNV];
        for (int v = 0; v < kNV; ++v) bv[v] = as_bh(_mm512_loadu_si512(b + r * ldb + dc + v * kN));
        for (int c = 0; c < kRM; ++c) {
          if (c >= nc) break;
          const __m512bh ab = as_bh(_mm512_set1_epi32(int(a[r * kBN + c0 + c])));
          for (int v = 0; v < kNV; ++v) acc[c][v] = _mm512_dpbf16_ps(acc[c][v], bv[v], ab);
        }
      }
      for (int c = 0; c < nc; ++c)
        for (int v = 0; v < kNV; ++v) {
          float* o = out + (c0 + c) * ldb + dc + v * kN;
          _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), acc[c][v]));
        }
    }
  }
}

void bwd_head_bf16(const BwdParams& p, int bi, int hk) {
  using T = bf16_t;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int d = p.d, dv = p.d_v, g = p.h / p.h_kv;
  const int d2 = (d + 1) / 2, dv2 = (dv + 1) / 2;
  const int dp = round_up(d, kNV * kN), dvp = round_up(dv, kNV * kN);
  const float c = float(p.scale);
  const SeqInfo sq = seq_info(p, bi);
  const int s_q = sq.s_q, s_k = sq.s_k;
  const Visibility vis = make_visibility(p, sq.s_q, sq.s_k);

  Buf<float> dq_acc(size_t(g) * s_q * dp, 0.f), dsum(size_t(g) * s_q), lse2(size_t(g) * s_q);
  Buf<uint32_t> Kd(size_t(d2) * kBN), Vd(size_t(dv2) * kBN), Kk(size_t(kBN / 2) * dp);
  LeveledSum dK(size_t(kBN) * dp), dV(size_t(kBN) * dvp);
  Buf<uint32_t> Qs(size_t(kQB) * d2), dOs(size_t(kQB) * dv2), Qr(size_t(kQB / 2) * dp), dOr(size_t(kQB / 2) * dvp);
  Buf<float> P(size_t(kQB) * kBN), dS(size_t(kQB) * kBN);
  Buf<uint32_t> Pp(size_t(kQB / 2) * kBN), dSp(size_t(kQB / 2) * kBN), dSk(size_t(kQB) * (kBN / 2));

  row_stats<T>(p, bi, hk, dsum.data(), lse2.data());

  const T* k = static_cast<const T*>(p.k) + bi * p.k_batch_stride + sq.k_row0 * p.k_row_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + bi * p.v_batch_stride + sq.k_row0 * p.v_row_stride + hk * p.v_head_stride;
  T* dkp = static_cast<T*>(p.dk) + bi * p.dk_batch_stride + sq.k_row0 * p.dk_row_stride + hk * p.dk_head_stride;
  T* dvp_out = static_cast<T*>(p.dv) + bi * p.dv_batch_stride + sq.k_row0 * p.dv_row_stride + hk * p.dv_head_stride;

  for (int j0 = 0; j0 < s_k; j0 += kBN) {
    const int cols = std::min(kBN, s_k - j0), cols2 = (cols + 1) / 2;
    for (int cc = 0; cc < kBN; ++cc) {
      const T* kr_ = cc < cols ? k + (j0 + cc) * p.k_row_stride : nullptr;
      const T* vr_ = cc < cols ? v + (j0 + cc) * p.v_row_stride : nullptr;
      for (int x = 0; x < d2; ++x) Kd[x * kBN + cc] = kr_ ? pair_at(kr_, x, d) : 0u;
      for (int x = 0; x < dv2; ++x) Vd[x * kBN + cc] = vr_ ? pair_at(vr_, x, dv) : 0u;
    }
    for (int c2 = 0; c2 < kBN / 2; ++c2) {
      const T* a = 2 * c2 < cols ? k + (j0 + 2 * c2) * p.k_row_stride : nullptr;
      const T* b = 2 * c2 + 1 < cols ? k + (j0 + 2 * c2 + 1) * p.k_row_stride : nullptr;
      pack_row_pairs(a, b, d, dp, Kk.data() + size_t(c2) * dp);
    }
    dK.clear();
    dV.clear();
    const KeyRange qr = vis.rows_of_keys(j0, j0 + cols, s_q);

    for (int gi = 0; gi < g; ++gi) {
      const int hi = hk * g + gi;
      const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + sq.q_row0 * p.q_row_stride + hi * p.q_head_stride;
      const T* dout = static_cast<const T*>(p.dout) + bi * p.do_batch_stride + sq.q_row0 * p.do_row_stride + hi * p.do_head_stride;
      const float* Dg = dsum.data() + size_t(gi) * s_q;
      const float* L2 = lse2.data() + size_t(gi) * s_q;
      float* dqg = dq_acc.data() + size_t(gi) * s_q * dp;
      const ScoreMod mod = make_score_mod(p, bi, hi, s_q, s_k);
      float* dmask = p.dmask ? static_cast<float*>(p.dmask) + bi * p.dmask_batch_stride + hi * p.dmask_head_stride : nullptr;
      for (int i0 = qr.lo; i0 < qr.hi; i0 += kQB) {
        const int nr = std::min(kQB, qr.hi - i0);
        for (int r = 0; r < kQB; ++r) {
          const T* qrow = r < nr ? q + (i0 + r) * p.q_row_stride : nullptr;
          const T* drow = r < nr ? dout + (i0 + r) * p.do_row_stride : nullptr;
          for (int x = 0; x < d2; ++x) Qs[size_t(r) * d2 + x] = qrow ? pair_at(qrow, x, d) : 0u;
          for (int x = 0; x < dv2; ++x) dOs[size_t(r) * dv2 + x] = drow ? pair_at(drow, x, dv) : 0u;
        }
        for (int r2 = 0; r2 < kQB / 2; ++r2) {
          const int ra = 2 * r2, rb = 2 * r2 + 1;
          pack_row_pairs(ra < nr ? q + (i0 + ra) * p.q_row_stride : nullptr, rb < nr ? q + (i0 + rb) * p.q_row_stride : nullptr,
                         d, dp, Qr.data() + size_t(r2) * dp);
          pack_row_pairs(ra < nr ? dout + (i0 + ra) * p.do_row_stride : nullptr,
                         rb < nr ? dout + (i0 + rb) * p.do_row_stride : nullptr, dv, dvp, dOr.data() + size_t(r2) * dvp);
        }
        for (int r0 = 0; r0 < kQB; r0 += kRM) {
          float* Pr = P.data() + size_t(r0) * kBN;
          float* dSr = dS.data() + size_t(r0) * kBN;
          if (r0 >= nr) {
            fill(Pr, Pr + kRM * kBN, 0.f);
            fill(dSr, dSr + kRM * kBN, 0.f);
            continue;
          }
          micro_qk_bf16(Qs.data() + size_t(r0) * d2, d2, d2, Kd.data(), Pr);
          micro_qk_bf16(dOs.data() + size_t(r0) * dv2, dv2, dv2, Vd.data(), dSr);
          p_ds_rows(Pr, dSr, c, i0 + r0, nr - r0, j0, cols, vis, L2 + i0 + r0, Dg + i0 + r0, mod, dmask, p.dmask_row_stride);
        }
        for (int r2 = 0; r2 < kQB / 2; ++r2) {
          pack_f32_row_pairs(P.data() + size_t(2 * r2) * kBN, P.data() + size_t(2 * r2 + 1) * kBN, kBN, Pp.data() + size_t(r2) * kBN);
          pack_f32_row_pairs(dS.data() + size_t(2 * r2) * kBN, dS.data() + size_t(2 * r2 + 1) * kBN, kBN, dSp.data() + size_t(r2) * kBN);
        }
        for (int r = 0; r < kQB; ++r) pack_f32_consecutive(dS.data() + size_t(r) * kBN, kBN, dSk.data() + size_t(r) * (kBN / 2));
        const int nr2 = (nr + 1) / 2;
        micro_tn_bf16(Pp.data(), dOr.data(), nr2, dvp, dV.block());
        micro_tn_bf16(dSp.data(), Qr.data(), nr2, dp, dK.block());
        dV.step();
        dK.step();
        for (int r0 = 0; r0 < nr; r0 += kRM) {
          if (r0 + kRM <= nr) {
            micro_pv_bf16(dSk.data() + size_t(r0) * (kBN / 2), Kk.data(), cols2, dp, dqg + size_t(i0 + r0) * dp);
          } else {
            Buf<float> tmp(size_t(kRM) * dp, 0.f);
            micro_pv_bf16(dSk.data() + size_t(r0) * (kBN / 2), Kk.data(), cols2, dp, tmp.data());
            for (int r = 0; r < nr - r0; ++r)
              for (int x = 0; x < dp; ++x) dqg[size_t(i0 + r0 + r) * dp + x] += tmp[size_t(r) * dp + x];
          }
        }
      }
    }
    const float sc = float(p.scale);  // dK = scale dS^T Q (Q unscaled here)
    const float* dKs = dK.flush();
    const float* dVs = dV.flush();
    for (int cc = 0; cc < cols; ++cc) {
      T* dkr = dkp + (j0 + cc) * p.dk_row_stride;
      T* dvr = dvp_out + (j0 + cc) * p.dv_row_stride;
      for (int x = 0; x < d; ++x) dkr[x] = store_as<T, float>(dKs[size_t(cc) * dp + x] * sc);
      for (int x = 0; x < dv; ++x) dvr[x] = store_as<T, float>(dVs[size_t(cc) * dvp + x]);
    }
  }
  write_dq<T>(p, bi, hk, dq_acc.data(), dp);
}
#endif  // FAL_SIMD_AVX512

}  // namespace

int64_t fwd_num_work_items(const FwdParams& p) {
  if (p.dtype == DType::kFloat64) return fal::cpu::fwd_num_work_items(p);  // fp64 stays portable
  if (use_decode(p)) return int64_t(p.b) * decode_head_groups(p) * std::max(1, p.num_splits);
  return int64_t(p.b) * p.h * ((p.s_q + kQC - 1) / kQC);
}

void fwd_run(const FwdParams& p, int64_t begin, int64_t end) {
  if (p.dtype == DType::kFloat64) return fal::cpu::fwd_run(p, begin, end);
  if (use_decode(p)) {
    const int ns = std::max(1, p.num_splits);
    Buf<float> buf;
    dispatch_dtype(p.dtype, [&](auto tag) {
      using T = decltype(tag);
      if constexpr (!std::is_same_v<T, double>) {
        const int groups = decode_head_groups(p), per = decode_group_heads(p);
        for (int64_t it = begin; it < end; ++it) {
          const int64_t bg = it / ns;
          const int bi = int(bg / groups), h0 = int(bg % groups) * per;
          if (per == 1) decode_item<T>(p, bi, h0, int(it % ns), buf);
          else decode_item_heads<T>(p, bi, h0, std::min(p.h, h0 + per), int(it % ns), buf);
        }
      }
    });
    return;
  }
  const int nqc = (p.s_q + kQC - 1) / kQC;
#if defined(FAL_SIMD_AVX512)
  if (p.dtype == DType::kBFloat16) {
    FwdScratchBf16 wb;
    for (int64_t it = begin; it < end; ++it) {
      const int64_t bh = it / nqc;
      fwd_chunk_bf16(p, int(bh / p.h), int(bh % p.h), int(it % nqc), wb);
    }
    return;
  }
#endif
  FwdScratch w;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, double>) {
      for (int64_t it = begin; it < end; ++it) {
        const int qc = int(it % nqc);
        const int64_t bh = it / nqc;
        fwd_chunk<T>(p, int(bh / p.h), int(bh % p.h), qc, w);
      }
    }
  });
}

// Peak probe: 24 independent accumulators (more than FMA latency x issue width on current cores).
constexpr int kPeakChains = 24;

float peak_loop(int kind, int64_t iters) {
  VF acc[kPeakChains];
  for (int i = 0; i < kPeakChains; ++i) acc[i] = VF::set1(1e-3f * float(i));
#if defined(FAL_SIMD_AVX512)
  if (kind == 1) {
    const __m512 one = _mm512_set1_ps(1e-3f);
    const __m512bh a = _mm512_cvtne2ps_pbh(one, one);
    for (int64_t it = 0; it < iters; ++it)
#pragma GCC unroll 24
      for (int i = 0; i < kPeakChains; ++i) acc[i].v = _mm512_dpbf16_ps(acc[i].v, a, a);
  } else
#endif
  {
    const VF a = VF::set1(0.999999f), b = VF::set1(1e-7f);
    for (int64_t it = 0; it < iters; ++it)
#pragma GCC unroll 24
      for (int i = 0; i < kPeakChains; ++i) acc[i] = fma(acc[i], a, b);
  }
  VF s = VF::zero();
  for (int i = 0; i < kPeakChains; ++i) s = s + acc[i];
  return s.hsum();
}

double peak_flops_per_iter(int kind) {
#if defined(FAL_SIMD_AVX512)
  if (kind == 1) return kPeakChains * 64.0;  // 32 bf16 products + 32 adds per vdpbf16ps
#endif
  (void)kind;
  return kPeakChains * 2.0 * kN;
}

int64_t bwd_num_work_items(const BwdParams& p) {
  return p.dtype == DType::kFloat64 ? fal::cpu::bwd_num_work_items(p) : int64_t(p.b) * p.h_kv;
}

void bwd_run(const BwdParams& p, int64_t begin, int64_t end) {
  if (p.dtype == DType::kFloat64) return fal::cpu::bwd_run(p, begin, end);
#if defined(FAL_SIMD_AVX512)
  if (p.dtype == DType::kBFloat16) {
    for (int64_t it = begin; it < end; ++it) bwd_head_bf16(p, int(it / p.h_kv), int(it % p.h_kv));
    return;
  }
#endif
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, double>) {
      for (int64_t it = begin; it < end; ++it) bwd_head<T>(p, int(it / p.h_kv), int(it % p.h_kv));
    }
  });
}

}  // namespace fal::cpu::FAL_CPU_NS
