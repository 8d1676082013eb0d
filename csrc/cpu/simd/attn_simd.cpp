// attn_simd.cpp -- SIMD attention kernels (forward; the backward delegates to the portable
// kernel for now), compiled once per ISA (AVX-512, AVX2) with that ISA's flags; see vec.h.
//
// Forward, one work item = (batch, head, chunk of kQC query rows):
//   Q chunk -> fp32, pre-multiplied by scale * log2(e) (scores in the log2 domain, exp2 below);
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
#include <vector>

#include "cpu/cpu_kernels.h"
#include "cpu/simd/vec.h"
#include "cpu/tile_io.h"
#include "flashattn_lite/attn_math.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

constexpr int kRM = 6;                    // rows per microkernel
constexpr int kNV = kN == 16 ? 4 : 2;     // vectors per row in a microkernel
constexpr int kBN = 64;                   // keys per tile (a multiple of kNV * kN)
constexpr int kQC = 256;                  // query rows per work item
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kBN % (kNV * kN) == 0, "key tile must be a whole number of microkernel passes");

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// S[r][c] = sum_x Q[r][x] * Kt[x][c]  for r < kRM, c < kBN
inline void micro_qk(const float* q, int d, const float* kt, float* s) {
  for (int kc = 0; kc < kBN; kc += kNV * kN) {
    VF acc[kRM][kNV];
    for (int r = 0; r < kRM; ++r)
      for (int v = 0; v < kNV; ++v) acc[r][v] = VF::zero();
    for (int x = 0; x < d; ++x) {
      VF kv[kNV];
      for (int v = 0; v < kNV; ++v) kv[v] = VF::load(kt + x * kBN + kc + v * kN);
      for (int r = 0; r < kRM; ++r) {
        const VF qb = VF::set1(q[r * d + x]);
        for (int v = 0; v < kNV; ++v) acc[r][v] = fma(qb, kv[v], acc[r][v]);
      }
    }
    for (int r = 0; r < kRM; ++r)
      for (int v = 0; v < kNV; ++v) acc[r][v].store(s + r * kBN + kc + v * kN);
  }
}

// O[r][x] += sum_{c < cols} P[r][c] * V[c][x]  for r < kRM, x < dvp (dvp multiple of kNV * kN)
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

struct FwdScratch {
  std::vector<float> q, kt, v, s, o, m, l;
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
  const int i0 = qc * kQC, i1 = std::min(i0 + kQC, p.s_q), rows = i1 - i0;
  const int rows_pad = round_up(rows, kRM);
  w.resize(rows_pad, d, dvp);

  const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + hi * p.q_head_stride;
  const T* k = static_cast<const T*>(p.k) + bi * p.k_batch_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + bi * p.v_batch_stride + hk * p.v_head_stride;
  const float qmul = float(p.scale) * kLog2e;
  for (int r = 0; r < rows; ++r) convert_row(q + (i0 + r) * p.q_row_stride, d, qmul, w.q.data() + size_t(r) * d);
  std::fill(w.o.begin(), w.o.end(), 0.f);
  std::fill(w.m.begin(), w.m.end(), neg_inf);
  std::fill(w.l.begin(), w.l.end(), 0.f);

  const Visibility vis = make_visibility(p, p.s_q, p.s_k);
  const KeyRange kr = vis.keys_of_rows(i0, i1);
  float* S = w.s.data();
  for (int j0 = kr.lo; j0 < kr.hi; j0 += kBN) {
    const int cols = std::min(kBN, kr.hi - j0);
    // pack K^T (d x kBN) and V (kBN x dvp), zero-padded
    float* kt = w.kt.data();
    for (int c = 0; c < cols; ++c) {
      const T* kr_ = k + (j0 + c) * p.k_row_stride;
      for (int x = 0; x < d; ++x) kt[x * kBN + c] = load_as_float(kr_ + x);
    }
    if (cols < kBN)
      for (int x = 0; x < d; ++x) std::fill(kt + x * kBN + cols, kt + (x + 1) * kBN, 0.f);
    float* vp = w.v.data();
    for (int c = 0; c < cols; ++c) {
      convert_row(v + (j0 + c) * p.v_row_stride, dv, 1.f, vp + size_t(c) * dvp);
      std::fill(vp + size_t(c) * dvp + dv, vp + size_t(c + 1) * dvp, 0.f);
    }

    for (int r0 = 0; r0 < rows; r0 += kRM) {
      const int g0 = i0 + r0, g1 = std::min(g0 + kRM, i1);
      const KeyRange gr = vis.keys_of_rows(g0, g1);
      if (gr.hi <= j0 || gr.lo >= j0 + cols) continue;  // no row of the group sees this tile
      micro_qk(w.q.data() + size_t(r0) * d, d, kt, S);
      const bool full = cols == kBN && vis.tile_fully_visible(g0, g1, j0, j0 + cols);
      for (int r = 0; r < kRM; ++r) {
        float* sr = S + r * kBN;
        const int ri = r0 + r;
        if (g0 + r >= g1) {  // padding row
          std::fill(sr, sr + kBN, 0.f);
          continue;
        }
        if (!full) {
          const KeyRange rk = vis.keys_of_row(g0 + r);
          const int lo = std::max(0, rk.lo - j0), hi_ = std::min(cols, rk.hi - j0);
          for (int c = 0; c < kBN; ++c)
            if (c < lo || c >= hi_) sr[c] = neg_inf;
        }
        VF mv = VF::set1(w.m[ri]);
        for (int c = 0; c < kBN; c += kN) mv = vmax(mv, VF::load(sr + c));
        const float mx = mv.hmax();
        if (mx == neg_inf) {  // the row sees nothing yet: P = 0
          std::fill(sr, sr + kBN, 0.f);
          continue;
        }
        const VF mb = VF::set1(mx);
        VF sum = VF::zero();
        for (int c = 0; c < kBN; c += kN) {
          const VF pv = exp2(VF::load(sr + c) - mb);
          pv.store(sr + c);
          sum = sum + pv;
        }
        if (mx != w.m[ri]) {  // acc *= exp2(m_old - m_new), l likewise
          const float alpha = std::exp2(w.m[ri] - mx);
          const VF ab = VF::set1(alpha);
          float* orow = w.o.data() + size_t(ri) * dvp;
          for (int x = 0; x < dvp; x += kN) (VF::load(orow + x) * ab).store(orow + x);
          w.l[ri] *= alpha;
          w.m[ri] = mx;
        }
        w.l[ri] += sum.hsum();
      }
      micro_pv(S, vp, cols, dvp, w.o.data() + size_t(r0) * dvp);
    }
  }

  T* o = static_cast<T*>(p.o) + bi * p.o_batch_stride + hi * p.o_head_stride;
  float* lse = static_cast<float*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride;
  for (int r = 0; r < rows; ++r) {
    const float l = w.l[r];
    const float inv = l > 0.f ? 1.f / l : 0.f;  // a row that saw no key outputs 0
    T* orow = o + (i0 + r) * p.o_row_stride;
    const float* src = w.o.data() + size_t(r) * dvp;
    for (int x = 0; x < dv; ++x) orow[x] = store_as<T, float>(src[x] * inv);
    lse[i0 + r] = l > 0.f ? (w.m[r] + std::log2(l)) * 0.69314718055994531f : neg_inf;
  }
}

}  // namespace

int64_t fwd_num_work_items(const FwdParams& p) {
  if (p.dtype == DType::kFloat64) return fal::cpu::fwd_num_work_items(p);  // fp64 stays portable
  return int64_t(p.b) * p.h * ((p.s_q + kQC - 1) / kQC);
}

void fwd_run(const FwdParams& p, int64_t begin, int64_t end) {
  if (p.dtype == DType::kFloat64) return fal::cpu::fwd_run(p, begin, end);
  const int nqc = (p.s_q + kQC - 1) / kQC;
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

int64_t bwd_num_work_items(const BwdParams& p) { return fal::cpu::bwd_num_work_items(p); }
void bwd_run(const BwdParams& p, int64_t begin, int64_t end) { fal::cpu::bwd_run(p, begin, end); }

}  // namespace fal::cpu::FAL_CPU_NS
