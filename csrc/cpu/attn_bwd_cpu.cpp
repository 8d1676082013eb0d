// attn_bwd_cpu.cpp -- portable FlashAttention-2 backward on the CPU.
// P is recomputed from the saved LSE, never stored:  P = exp(scale * Q K^T - lse)
//   dV = P^T dO,  dP = dO V^T,  dS = P o (dP - D)  with  D = rowsum(dO o O) - dlse,
//   dQ = scale * dS K,  dK = scale * dS^T Q.
// One work item = (batch, kv head): key tiles outer, then every query head of the GQA group
// and every query tile that sees the key tile. dK/dV of the tile are accumulated in registers-
// sized scratch and written once; dQ of the group is accumulated in an fp32 (fp64) buffer of
// O(g * s_q * d) and rounded once at the end. No two work items write the same memory.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "cpu/tile_io.h"
#include "flashattn_lite/attn_math.h"

namespace fal::cpu {
namespace {

template <typename T>
void bwd_head(const BwdParams& p, int bi, int hk) {
  using Acc = typename AccOf<T>::type;
  constexpr int BM = kBwdBlockM, BN = kBwdBlockN;
  const int d = p.d, dv = p.d_v, g = p.h / p.h_kv;
  const Acc scale = Acc(p.scale);
  const SeqInfo sq = seq_info(p, bi);
  const int s_q = sq.s_q, s_k = sq.s_k;
  const Visibility vis = make_visibility(p, s_q, s_k);

  std::vector<Acc> dq_acc(size_t(g) * s_q * d, Acc(0));
  std::vector<Acc> dsum(size_t(g) * s_q);  // D = rowsum(dO o O) - dlse
  std::vector<Acc> Ks(size_t(BN) * d), Kt(size_t(d) * BN), Vt(size_t(dv) * BN);
  std::vector<Acc> dK(size_t(BN) * d), dV(size_t(BN) * dv);
  // dK/dV summed over the query rows in three levels (blocked summation, as a GEMM's K loop): a
  // query tile's terms (dKt/dVt), 16 tiles (dKm/dVm), then the total. A running sum over all s_q
  // rows would grow the rounding error with s_q instead of ~BM + 16 + s_q / (16 BM).
  std::vector<Acc> dKt(size_t(BN) * d), dVt(size_t(BN) * dv), dKm(size_t(BN) * d), dVm(size_t(BN) * dv);
  int mid_tiles = 0;
  auto add_into = [](std::vector<Acc>& to, std::vector<Acc>& from) {
    for (size_t x = 0; x < to.size(); ++x) to[x] += from[x];
    std::fill(from.begin(), from.end(), Acc(0));
  };
  std::vector<Acc> Qs(size_t(BM) * d), dOs(size_t(BM) * dv), P(size_t(BM) * BN), dS(size_t(BM) * BN);

  auto q_ptr = [&](int hi) {
    return static_cast<const T*>(p.q) + bi * p.q_batch_stride + sq.q_row0 * p.q_row_stride + hi * p.q_head_stride;
  };
  auto do_ptr = [&](int hi) {
    return static_cast<const T*>(p.dout) + bi * p.do_batch_stride + sq.q_row0 * p.do_row_stride + hi * p.do_head_stride;
  };
  auto lse_ptr = [&](int hi) {
    return static_cast<const Acc*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0;
  };

  for (int gi = 0; gi < g; ++gi) {
    const int hi = hk * g + gi;
    const T* o = static_cast<const T*>(p.o) + bi * p.o_batch_stride + sq.q_row0 * p.o_row_stride + hi * p.o_head_stride;
    const T* dout = do_ptr(hi);
    const Acc* dlse =
        p.dlse ? static_cast<const Acc*>(p.dlse) + bi * p.dlse_batch_stride + hi * p.dlse_head_stride + sq.q_row0
               : nullptr;
    for (int i = 0; i < s_q; ++i) {
      Acc acc = 0;
      const T* orow = o + i * p.o_row_stride;
      const T* drow = dout + i * p.do_row_stride;
      for (int x = 0; x < dv; ++x) acc += load_acc<Acc>(orow + x) * load_acc<Acc>(drow + x);
      dsum[size_t(gi) * s_q + i] = acc - (dlse ? Acc(dlse[i]) : Acc(0));
    }
  }

  const T* k = static_cast<const T*>(p.k) + bi * p.k_batch_stride + sq.k_row0 * p.k_row_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + bi * p.v_batch_stride + sq.k_row0 * p.v_row_stride + hk * p.v_head_stride;
  T* dk = static_cast<T*>(p.dk) + bi * p.dk_batch_stride + sq.k_row0 * p.dk_row_stride + hk * p.dk_head_stride;
  T* dvp = static_cast<T*>(p.dv) + bi * p.dv_batch_stride + sq.k_row0 * p.dv_row_stride + hk * p.dv_head_stride;

  for (int j0 = 0; j0 < s_k; j0 += BN) {
    const int j1 = std::min(j0 + BN, s_k), cols = j1 - j0;
    load_rows(k + j0 * p.k_row_stride, p.k_row_stride, cols, d, Acc(1), Ks.data(), d);
    load_rows_transposed(k + j0 * p.k_row_stride, p.k_row_stride, cols, d, Kt.data(), BN);
    load_rows_transposed(v + j0 * p.v_row_stride, p.v_row_stride, cols, dv, Vt.data(), BN);
    std::fill(dK.begin(), dK.end(), Acc(0));
    std::fill(dV.begin(), dV.end(), Acc(0));
    std::fill(dKm.begin(), dKm.end(), Acc(0));
    std::fill(dVm.begin(), dVm.end(), Acc(0));
    mid_tiles = 0;

    for (int gi = 0; gi < g; ++gi) {
      const int hi = hk * g + gi;
      const T* q = q_ptr(hi);
      const T* dout = do_ptr(hi);
      const Acc* lse = lse_ptr(hi);
      const ScoreMod mod = make_score_mod(p, bi, hi, s_q, s_k);
      Acc* dmask =
          p.dmask ? static_cast<Acc*>(p.dmask) + bi * p.dmask_batch_stride + hi * p.dmask_head_stride : nullptr;
      const KeyRange qr_range = vis.rows_of_keys(j0, j1, s_q);  // rows that may see this key tile
      for (int i0 = qr_range.lo; i0 < qr_range.hi; i0 += BM) {
        const int i1 = std::min(i0 + BM, qr_range.hi), rows = i1 - i0;
        const KeyRange kr = vis.keys_of_rows(i0, i1);
        if (kr.hi <= j0 || kr.lo >= j1) continue;  // no row of this tile sees this key tile
        const bool full = vis.tile_fully_visible(i0, i1, j0, j1);
        load_rows(q + i0 * p.q_row_stride, p.q_row_stride, rows, d, Acc(1), Qs.data(), d);
        load_rows(dout + i0 * p.do_row_stride, p.do_row_stride, rows, dv, Acc(1), dOs.data(), dv);

        for (int r = 0; r < rows; ++r) {
          Acc* pr = P.data() + r * BN;
          Acc* dsr = dS.data() + r * BN;
          std::fill(pr, pr + cols, Acc(0));
          std::fill(dsr, dsr + cols, Acc(0));
          const Acc l = Acc(lse[i0 + r]);
          if (std::isinf(l) && l < 0) continue;  // row sees no key: P = 0
          // S = scale * q k^T, P = exp(S - lse)
          const Acc* qr = Qs.data() + r * d;
          for (int x = 0; x < d; ++x) {
            const Acc qv = qr[x] * scale;
            const Acc* kt = Kt.data() + x * BN;
            for (int c = 0; c < cols; ++c) pr[c] += qv * kt[c];
          }
          KeyRange rr{j0, j1};
          if (!full) rr = vis.keys_of_row(i0 + r);
          Acc dcap[BN], z[BN];  // softcap derivative, dropout factor (0 or 1 / (1 - p))
          for (int c = 0; c < cols; ++c) {
            const bool vis_c = j0 + c >= rr.lo && j0 + c < rr.hi;
            dcap[c] = Acc(1);
            z[c] = Acc(1);
            Acc sv = pr[c];
            if (mod.any && vis_c) sv = mod.apply(sv, i0 + r, j0 + c, &dcap[c]);
            pr[c] = vis_c ? std::exp(sv - l) : Acc(0);
          }
          if (mod.drop.on) mod.drop.apply_row(i0 + r, j0, z, cols);
          // dP = dO V^T
          const Acc* dor = dOs.data() + r * dv;
          for (int x = 0; x < dv; ++x) {
            const Acc dval = dor[x];
            const Acc* vt = Vt.data() + x * BN;
            for (int c = 0; c < cols; ++c) dsr[c] += dval * vt[c];
          }
          // dS = P o (dP o Z - D) (Z: dropout), the gradient of the transformed score; the mask's
          // gradient is dS itself, the raw score's dS times the softcap derivative. P <- P o Z for dV.
          const Acc D = dsum[size_t(gi) * s_q + i0 + r];
          Acc* dmrow = dmask ? dmask + int64_t(i0 + r) * p.dmask_row_stride + j0 : nullptr;
          for (int c = 0; c < cols; ++c) {
            const Acc ds = pr[c] * (dsr[c] * z[c] - D);
            if (dmrow && j0 + c >= rr.lo && j0 + c < rr.hi) dmrow[c] = ds;
            dsr[c] = ds * dcap[c];
            pr[c] *= z[c];
          }
        }
        // dV += P^T dO ; dK += scale * dS^T Q ; dQ += scale * dS K
        for (int r = 0; r < rows; ++r) {
          const Acc* pr = P.data() + r * BN;
          const Acc* dsr = dS.data() + r * BN;
          const Acc* dor = dOs.data() + r * dv;
          const Acc* qr = Qs.data() + r * d;
          for (int c = 0; c < cols; ++c) {
            const Acc pc = pr[c], dsc = dsr[c] * scale;
            Acc* dvr = dVt.data() + c * dv;
            for (int x = 0; x < dv; ++x) dvr[x] += pc * dor[x];
            Acc* dkr = dKt.data() + c * d;
            for (int x = 0; x < d; ++x) dkr[x] += dsc * qr[x];
          }
          Acc* dqr = dq_acc.data() + (size_t(gi) * s_q + i0 + r) * d;
          for (int c = 0; c < cols; ++c) {
            const Acc dsc = dsr[c] * scale;
            const Acc* kr2 = Ks.data() + c * d;
            for (int x = 0; x < d; ++x) dqr[x] += dsc * kr2[x];
          }
        }
        add_into(dVm, dVt);
        add_into(dKm, dKt);
        if (++mid_tiles == 16) {
          add_into(dV, dVm);
          add_into(dK, dKm);
          mid_tiles = 0;
        }
      }
    }
    add_into(dV, dVm);
    add_into(dK, dKm);
    for (int c = 0; c < cols; ++c) {
      T* dkr = dk + (j0 + c) * p.dk_row_stride;
      T* dvr = dvp + (j0 + c) * p.dv_row_stride;
      for (int x = 0; x < d; ++x) dkr[x] = store_as<T, Acc>(dK[c * d + x]);
      for (int x = 0; x < dv; ++x) dvr[x] = store_as<T, Acc>(dV[c * dv + x]);
    }
  }
  for (int gi = 0; gi < g; ++gi) {
    const int hi = hk * g + gi;
    T* dq = static_cast<T*>(p.dq) + bi * p.dq_batch_stride + sq.q_row0 * p.dq_row_stride + hi * p.dq_head_stride;
    for (int i = 0; i < s_q; ++i) {
      T* dqr = dq + i * p.dq_row_stride;
      const Acc* src = dq_acc.data() + (size_t(gi) * s_q + i) * d;
      for (int x = 0; x < d; ++x) dqr[x] = store_as<T, Acc>(src[x]);
    }
  }
}

}  // namespace

int64_t bwd_num_work_items(const BwdParams& p) { return int64_t(p.b) * p.h_kv; }

void bwd_run(const BwdParams& p, int64_t begin, int64_t end) {
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t w = begin; w < end; ++w) bwd_head<T>(p, int(w / p.h_kv), int(w % p.h_kv));
  });
}

// dK[b, j, hk] = sum_s partial[s, b, hk, j][0, d), dV[b, j, hk] = sum_s partial[s, b, hk, j][d, d +
// d_v) (a head split's rows, params.h; splits in order: deterministic)
static void bwd_combine_kv_run(const BwdParams& p, int64_t begin, int64_t end) {
  const int64_t w = p.d + p.d_v, split_stride = int64_t(p.b) * p.h_kv * p.s_k * w;
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, double>) {
      std::vector<float> acc(static_cast<size_t>(w), 0.f);
      for (int64_t it = begin; it < end; ++it) {
        const int j = int(it % p.s_k);
        const int64_t bh = it / p.s_k;
        const int bi = int(bh / p.h_kv), hk = int(bh % p.h_kv);
        const SeqInfo sq = seq_info(p, bi);
        if (j >= sq.s_k) continue;
        const float* src = p.dq_partial + it * w;
        for (int64_t x = 0; x < w; ++x) acc[size_t(x)] = src[x];
        for (int s = 1; s < p.key_splits; ++s)
          for (int64_t x = 0; x < w; ++x) acc[size_t(x)] += src[s * split_stride + x];
        T* dk =
            static_cast<T*>(p.dk) + bi * p.dk_batch_stride + hk * p.dk_head_stride + (sq.k_row0 + j) * p.dk_row_stride;
        T* dv =
            static_cast<T*>(p.dv) + bi * p.dv_batch_stride + hk * p.dv_head_stride + (sq.k_row0 + j) * p.dv_row_stride;
        for (int x = 0; x < p.d; ++x) dk[x] = store_as<T, float>(acc[size_t(x)]);
        for (int x = 0; x < p.d_v; ++x) dv[x] = store_as<T, float>(acc[size_t(p.d + x)]);
      }
    }
  });
}

void bwd_combine_run(const BwdParams& p, int64_t begin, int64_t end) {
  if (p.split_heads) return bwd_combine_kv_run(p, begin, end);
  // dQ[b, i, h] = scale * sum_s dq_partial[s, b, h, i]  (splits in order: deterministic)
  const int64_t split_stride = int64_t(p.b) * p.h * p.s_q * p.d;
  for_each_split_row(p, begin, end, [&](auto tag, int64_t w, int bi, int hi, int i, const SeqInfo& sq) {
    using T = decltype(tag);
    const float* src = p.dq_partial + w * p.d;
    T* dq = static_cast<T*>(p.dq) + bi * p.dq_batch_stride + hi * p.dq_head_stride + (sq.q_row0 + i) * p.dq_row_stride;
    for (int x = 0; x < p.d; ++x) {
      float acc = 0.f;
      for (int s = 0; s < p.key_splits; ++s) acc += src[s * split_stride + x];
      dq[x] = store_as<T, float>(acc * float(p.scale));
    }
  });
}

}  // namespace fal::cpu
