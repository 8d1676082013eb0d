// attn_simt_feat.cuh -- the SIMT kernels with every feature of the CPU kernels: varlen (cu_seqlens,
// packed and paged), the KV-cache fields (seqused_k, cache_leftpad, cache_batch_idx, block_table),
// softcap and ALiBi at any dtype / head dim, bool and float attn_mask (with the float mask's
// gradient), dropout (the CPU's keep pattern: one Philox in attn_math.h). The shapes of
// attn_simt.cuh (one block per query row; the backward in two atomic-free passes), with the
// per-sequence and per-score rules taken from attn_math.h exactly as the portable CPU kernels take
// them (cpu/attn_fwd_cpu.cpp, cpu/attn_bwd_cpu.cpp):
//   SeqInfo / KvRows    where sequence bi's rows are (seq_info, kv_head_ptr, kv_rows)
//   ScoreMod            softcap, ALiBi, mask on the score; its softcap derivative for the backward
//   Dropout             P V with the dropped P, l (and the LSE) from the undropped P
//   Visibility          causal / window per sequence (its own s_q, s_k)
// A key a row cannot see (outside its range, or masked to -inf) takes no part in P V, so its
// value, even NaN, never reaches the row. Verified on an H200 on 2026-12-04 (bench/gpu_check.sh,
// tests/test_cuda_features.py); attn_simt.cuh stays the kernel of the plain calls it already runs.
#pragma once
#include "cuda/attn_simt.cuh"

namespace fal::cuda {

// One forward block's shared memory: key row offsets (int64), q (d), O (d_v), P (128), the
// visible flags (128) and the reduction scratch (32).
template <typename Acc>
size_t fwd_feat_smem(const FwdParams& p) {
  return kSimtThreads * sizeof(int64_t) + (size_t(p.d) + p.d_v + 2 * kSimtThreads + 32) * sizeof(Acc);
}

// grid: (max s_q, h, b); a row past its sequence's s_q exits.
template <typename T>
__global__ void __launch_bounds__(kSimtThreads) attn_fwd_feat_kernel(const FwdParams p) {
  using Acc = typename SimtAcc<T>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  int64_t* voff = reinterpret_cast<int64_t*>(smem_raw);   // V row offset of the chunk's keys
  Acc* qs = reinterpret_cast<Acc*>(voff + kSimtThreads);  // d
  Acc* os = qs + p.d;                                     // d_v
  Acc* ps = os + p.d_v;                                   // kSimtThreads: P (dropped) of the chunk
  Acc* seen = ps + kSimtThreads;                          // kSimtThreads: 1 where the key is visible
  Acc* red = seen + kSimtThreads;                         // 32
  const int i = blockIdx.x, hi = blockIdx.y, bi = blockIdx.z, hk = hi / (p.h / p.h_kv);
  const int tid = threadIdx.x;
  const SeqInfo sq = seq_info(p, bi);
  if (i >= sq.s_q) return;  // the whole block: before any barrier
  const T* q =
      static_cast<const T*>(p.q) + bi * p.q_batch_stride + (sq.q_row0 + i) * p.q_row_stride + hi * p.q_head_stride;
  const T* k = kv_head_ptr<T>(p.k, p.k_batch_stride, p.k_head_stride, p, sq, hk);
  const T* v = kv_head_ptr<T>(p.v, p.v_batch_stride, p.v_head_stride, p, sq, hk);
  const KvRows krows = kv_rows(p, sq, bi, p.k_row_stride, p.k_batch_stride);
  const KvRows vrows = kv_rows(p, sq, bi, p.v_row_stride, p.v_batch_stride);
  const ScoreMod mod = make_score_mod(p, bi, hi, sq.s_q, sq.s_k);
  for (int x = tid; x < p.d; x += kSimtThreads) qs[x] = to_acc(q[x]) * Acc(p.scale);
  for (int x = tid; x < p.d_v; x += kSimtThreads) os[x] = 0;
  __syncthreads();

  const KeyRange kr = make_visibility(p, sq.s_q, sq.s_k).keys_of_row(i);
  const Acc ninf = -INFINITY;
  Acc m = ninf, l = 0;
  for (int j0 = kr.lo; j0 < kr.hi; j0 += kSimtThreads) {
    const int j = j0 + tid, cnt = min(kSimtThreads, kr.hi - j0);
    Acc s = ninf;
    if (j < kr.hi) {
      s = dot_row(qs, k + krows.at(j), p.d);
      if (mod.any) s = mod.apply(s, i, j, static_cast<Acc*>(nullptr));
      voff[tid] = vrows.at(j);
    }
    const bool vis = !(s == ninf);  // NaN scores stay in (they make the row NaN, as on the CPU)
    const Acc mx = block_reduce(s, red, [](Acc a, Acc b) { return a > b ? a : b; });
    const Acc m_new = mx > m ? mx : m;
    // a chunk whose keys are all masked so far leaves the state as it is (exp(-inf - -inf) is NaN)
    const Acc alpha = m_new == ninf ? Acc(1) : acc_exp(m - m_new);
    const Acc pj = vis ? acc_exp(s - m_new) : Acc(0);
    Acc pd = pj;  // P V takes the dropped P; l sums the undropped one
    if (mod.drop.on && vis) pd = mod.drop.keep(i, j) ? pj * Acc(mod.drop.keep_scale) : Acc(0);
    ps[tid] = pd;
    seen[tid] = vis ? Acc(1) : Acc(0);
    const Acc sum = block_reduce(pj, red, [](Acc a, Acc b) { return a + b; });  // syncs: ps, seen, voff visible
    l = l * alpha + sum;
    m = m_new;
    for (int x = tid; x < p.d_v; x += kSimtThreads) {
      Acc acc = os[x] * alpha;
      for (int c = 0; c < cnt; ++c)
        if (seen[c] != Acc(0)) acc += ps[c] * to_acc(v[voff[c] + x]);
      os[x] = acc;
    }
    __syncthreads();  // ps, seen, voff are rewritten by the next chunk
  }
  T* o = static_cast<T*>(p.o) + bi * p.o_batch_stride + (sq.q_row0 + i) * p.o_row_stride + hi * p.o_head_stride;
  const Acc inv = row_has_mass(l) ? Acc(1) / l : Acc(0);
  for (int x = tid; x < p.d_v; x += kSimtThreads) o[x] = from_acc<T>(os[x] * inv);
  if (tid == 0) {
    Acc* lse = static_cast<Acc*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0;
    lse[i] = row_has_mass(l) ? m + acc_log(l) : ninf;  // NaN scores: NaN
  }
}

// P, dS of (row i, key j) in the backward: s the scaled raw score. *pd = P times the dropout factor
// (for dV); returns dS of the raw score (the softcap derivative applied); *dsm = dS of the
// transformed score (the float mask's gradient). Masked keys give 0.
template <typename Acc>
__device__ __forceinline__ Acc feat_ds(const ScoreMod& mod, Acc s, int i, int j, Acc lse, Acc dp, Acc D, Acc* pd,
                                       Acc* dsm) {
  Acc dcap = Acc(1);
  if (mod.any) s = mod.apply(s, i, j, &dcap);
  const Acc pij = acc_exp(s - lse);  // s = -inf (masked): 0
  const Acc z = mod.drop.on ? (mod.drop.keep(i, j) ? Acc(mod.drop.keep_scale) : Acc(0)) : Acc(1);
  const Acc ds = pij * (dp * z - D);
  *pd = pij * z;
  *dsm = ds;
  return ds * dcap;
}

// Pass 1: grid (max s_q, h, b). Writes dsum (D_i), dq and, for a float mask that needs it, dmask.
template <typename T>
__global__ void __launch_bounds__(kSimtThreads) attn_bwd_dq_feat_kernel(const BwdParams p) {
  using Acc = typename SimtAcc<T>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  int64_t* koff = reinterpret_cast<int64_t*>(smem_raw);   // K row offset of the chunk's keys
  Acc* qs = reinterpret_cast<Acc*>(koff + kSimtThreads);  // d
  Acc* dos = qs + p.d;                                    // d_v
  Acc* dqs = dos + p.d_v;                                 // d
  Acc* dss = dqs + p.d;                                   // kSimtThreads
  Acc* red = dss + kSimtThreads;                          // 32
  const int i = blockIdx.x, hi = blockIdx.y, bi = blockIdx.z, hk = hi / (p.h / p.h_kv);
  const int tid = threadIdx.x;
  const SeqInfo sq = seq_info(p, bi);
  if (i >= sq.s_q) return;
  const Acc scale = Acc(p.scale);
  const int64_t row = sq.q_row0 + i;
  const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + hi * p.q_head_stride + row * p.q_row_stride;
  const T* o = static_cast<const T*>(p.o) + bi * p.o_batch_stride + hi * p.o_head_stride + row * p.o_row_stride;
  const T* dout =
      static_cast<const T*>(p.dout) + bi * p.do_batch_stride + hi * p.do_head_stride + row * p.do_row_stride;
  const T* k = kv_head_ptr<T>(p.k, p.k_batch_stride, p.k_head_stride, p, sq, hk);
  const T* v = kv_head_ptr<T>(p.v, p.v_batch_stride, p.v_head_stride, p, sq, hk);
  const KvRows krows = kv_rows(p, sq, bi, p.k_row_stride, p.k_batch_stride);
  const KvRows vrows = kv_rows(p, sq, bi, p.v_row_stride, p.v_batch_stride);
  const ScoreMod mod = make_score_mod(p, bi, hi, sq.s_q, sq.s_k);
  for (int x = tid; x < p.d; x += kSimtThreads) {
    qs[x] = to_acc(q[x]) * scale;
    dqs[x] = 0;
  }
  Acc dpart = 0;
  for (int x = tid; x < p.d_v; x += kSimtThreads) {
    dos[x] = to_acc(dout[x]);
    dpart += dos[x] * to_acc(o[x]);
  }
  Acc D = block_reduce(dpart, red, [](Acc a, Acc b) { return a + b; });
  const int64_t lse_off = bi * p.lse_batch_stride + hi * p.lse_head_stride + row;
  if (p.dlse) D -= static_cast<const Acc*>(p.dlse)[bi * p.dlse_batch_stride + hi * p.dlse_head_stride + row];
  const Acc lse = static_cast<const Acc*>(p.lse)[lse_off];
  if (tid == 0) static_cast<Acc*>(p.dsum)[lse_off] = D;
  Acc* dmask = p.dmask ? static_cast<Acc*>(p.dmask) + bi * p.dmask_batch_stride + hi * p.dmask_head_stride +
                             int64_t(i) * p.dmask_row_stride
                       : nullptr;

  const KeyRange kr = make_visibility(p, sq.s_q, sq.s_k).keys_of_row(i);
  if (!(lse == Acc(-INFINITY))) {
    for (int j0 = kr.lo; j0 < kr.hi; j0 += kSimtThreads) {
      const int j = j0 + tid, cnt = min(kSimtThreads, kr.hi - j0);
      Acc ds = 0;
      if (j < kr.hi) {
        koff[tid] = krows.at(j);
        const Acc dp = dot_row(dos, v + vrows.at(j), p.d_v);
        Acc pd, dsm;
        ds = feat_ds(mod, dot_row(qs, k + koff[tid], p.d), i, j, lse, dp, D, &pd, &dsm);
        if (dmask) dmask[j] = dsm;
      }
      dss[tid] = ds;
      __syncthreads();
      for (int x = tid; x < p.d; x += kSimtThreads) {
        Acc acc = dqs[x];
        for (int c = 0; c < cnt; ++c) acc += dss[c] * to_acc(k[koff[c] + x]);
        dqs[x] = acc;
      }
      __syncthreads();
    }
  }
  T* dq = static_cast<T*>(p.dq) + bi * p.dq_batch_stride + hi * p.dq_head_stride + row * p.dq_row_stride;
  for (int x = tid; x < p.d; x += kSimtThreads) dq[x] = from_acc<T>(dqs[x] * scale);
}

// Pass 2: grid (max s_k, h_kv, b); a key past its sequence's s_k exits. Reads dsum from pass 1.
template <typename T>
__global__ void __launch_bounds__(kSimtThreads) attn_bwd_dkdv_feat_kernel(const BwdParams p) {
  using Acc = typename SimtAcc<T>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Acc* ks = reinterpret_cast<Acc*>(smem_raw);  // d
  Acc* vs = ks + p.d;                          // d_v
  Acc* dks = vs + p.d_v;                       // d
  Acc* dvs = dks + p.d;                        // d_v
  Acc* pss = dvs + p.d_v;                      // kSimtThreads
  Acc* dss = pss + kSimtThreads;               // kSimtThreads
  const int j = blockIdx.x, hk = blockIdx.y, bi = blockIdx.z, g = p.h / p.h_kv;
  const int tid = threadIdx.x;
  const SeqInfo sq = seq_info(p, bi);
  if (j >= sq.s_k) return;
  const Acc scale = Acc(p.scale);
  const T* k = kv_head_ptr<T>(p.k, p.k_batch_stride, p.k_head_stride, p, sq, hk) +
               kv_rows(p, sq, bi, p.k_row_stride, p.k_batch_stride).at(j);
  const T* v = kv_head_ptr<T>(p.v, p.v_batch_stride, p.v_head_stride, p, sq, hk) +
               kv_rows(p, sq, bi, p.v_row_stride, p.v_batch_stride).at(j);
  for (int x = tid; x < p.d; x += kSimtThreads) {
    ks[x] = to_acc(k[x]) * scale;
    dks[x] = 0;
  }
  for (int x = tid; x < p.d_v; x += kSimtThreads) {
    vs[x] = to_acc(v[x]);
    dvs[x] = 0;
  }
  __syncthreads();
  const KeyRange rr = make_visibility(p, sq.s_q, sq.s_k).rows_of_key(j, sq.s_q);
  for (int gi = 0; gi < g; ++gi) {
    const int hi = hk * g + gi;
    const ScoreMod mod = make_score_mod(p, bi, hi, sq.s_q, sq.s_k);
    const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + hi * p.q_head_stride + sq.q_row0 * p.q_row_stride;
    const T* dout =
        static_cast<const T*>(p.dout) + bi * p.do_batch_stride + hi * p.do_head_stride + sq.q_row0 * p.do_row_stride;
    const int64_t lrow = bi * p.lse_batch_stride + hi * p.lse_head_stride + sq.q_row0;
    const Acc* lse = static_cast<const Acc*>(p.lse) + lrow;
    const Acc* dsum = static_cast<const Acc*>(p.dsum) + lrow;
    for (int i0 = rr.lo; i0 < rr.hi; i0 += kSimtThreads) {
      const int i = i0 + tid, cnt = min(kSimtThreads, rr.hi - i0);
      Acc pd = 0, ds = 0;
      if (i < rr.hi && !(lse[i] == Acc(-INFINITY))) {
        const Acc dp = dot_row(vs, dout + int64_t(i) * p.do_row_stride, p.d_v);
        Acc dsm;
        ds = feat_ds(mod, dot_row(ks, q + int64_t(i) * p.q_row_stride, p.d), i, j, lse[i], dp, dsum[i], &pd, &dsm);
      }
      pss[tid] = pd;
      dss[tid] = ds;
      __syncthreads();
      for (int x = tid; x < p.d_v; x += kSimtThreads) {
        Acc acc = dvs[x];
        for (int c = 0; c < cnt; ++c) acc += pss[c] * to_acc(dout[int64_t(i0 + c) * p.do_row_stride + x]);
        dvs[x] = acc;
      }
      for (int x = tid; x < p.d; x += kSimtThreads) {
        Acc acc = dks[x];
        for (int c = 0; c < cnt; ++c) acc += dss[c] * to_acc(q[int64_t(i0 + c) * p.q_row_stride + x]);
        dks[x] = acc;
      }
      __syncthreads();
    }
  }
  const int64_t krow = sq.k_row0 + j;
  T* dk = static_cast<T*>(p.dk) + bi * p.dk_batch_stride + hk * p.dk_head_stride + krow * p.dk_row_stride;
  T* dv = static_cast<T*>(p.dv) + bi * p.dv_batch_stride + hk * p.dv_head_stride + krow * p.dv_row_stride;
  for (int x = tid; x < p.d; x += kSimtThreads) dk[x] = from_acc<T>(dks[x] * scale);
  for (int x = tid; x < p.d_v; x += kSimtThreads) dv[x] = from_acc<T>(dvs[x]);
}

template <typename T>
int launch_fwd_simt_feat(const FwdParams& p, cudaStream_t stream) {
  using Acc = typename SimtAcc<T>::type;
  const size_t smem = fwd_feat_smem<Acc>(p);
  auto kernel = attn_fwd_feat_kernel<T>;
  if (const cudaError_t e = allow_smem(kernel, smem); e != cudaSuccess) return int(e);
  kernel<<<dim3(p.s_q, p.h, p.b), kSimtThreads, smem, stream>>>(p);
  return int(cudaGetLastError());
}

template <typename T>
int launch_bwd_simt_feat(const BwdParams& p, cudaStream_t stream) {
  using Acc = typename SimtAcc<T>::type;
  const size_t smem1 = kSimtThreads * sizeof(int64_t) + (2 * size_t(p.d) + p.d_v + kSimtThreads + 32) * sizeof(Acc);
  const size_t smem2 = (2 * size_t(p.d) + 2 * size_t(p.d_v) + 2 * kSimtThreads) * sizeof(Acc);
  auto k1 = attn_bwd_dq_feat_kernel<T>;
  auto k2 = attn_bwd_dkdv_feat_kernel<T>;
  cudaError_t e = cudaSuccess;
  if ((e = allow_smem(k1, smem1)) != cudaSuccess || (e = allow_smem(k2, smem2)) != cudaSuccess) return int(e);
  k1<<<dim3(p.s_q, p.h, p.b), kSimtThreads, smem1, stream>>>(p);
  if ((e = cudaGetLastError()) != cudaSuccess) return int(e);
  k2<<<dim3(p.s_k, p.h_kv, p.b), kSimtThreads, smem2, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace fal::cuda
