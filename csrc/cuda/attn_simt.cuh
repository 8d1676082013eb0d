// attn_simt.cuh -- portable CUDA attention kernels without tensor cores (every dtype, any head
// dim, d_v != d). Correct first: fp32 and fp64 inputs run here, and so does the backward of every
// dtype until the tensor-core backward takes over fp16/bf16.
// Forward: one block per query row; the block scores 128 keys at a time (one per thread), then
// runs the online softmax over that chunk and accumulates O in shared memory (each thread owns
// the dims x = tid, tid + 128, ...).
// Backward, without atomics (deterministic):
//   pass 1, one block per query row i: D_i = dO_i . O_i - dlse_i, and dQ_i = scale sum_j dS_ij k_j
//   pass 2, one block per key row j of a kv head: dV_j = sum_{h in group, i} P_ij dO_i,
//           dK_j = scale sum_{h, i} dS_ij q_i,   with dS_ij = P_ij (dO_i . v_j - D_i).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "flashattn_lite/attn_math.h"

namespace fal::cuda {

template <typename T>
struct SimtAcc {
  using type = float;
};
template <>
struct SimtAcc<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(float x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <typename T>
__device__ __forceinline__ T from_acc(double x) {
  return T(x);
}

__device__ __forceinline__ float acc_exp(float x) { return expf(x); }
__device__ __forceinline__ double acc_exp(double x) { return exp(x); }
__device__ __forceinline__ float acc_log(float x) { return logf(x); }
__device__ __forceinline__ double acc_log(double x) { return log(x); }

constexpr int kSimtThreads = 128;

template <typename Acc, typename Op>
__device__ __forceinline__ Acc block_reduce(Acc x, Acc* red, Op op) {
  for (int o = 16; o > 0; o >>= 1) x = op(x, __shfl_xor_sync(0xffffffffu, x, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // red may still be read by a previous reduction
  if (lane == 0) red[warp] = x;
  __syncthreads();
  x = red[0];
  for (int w = 1; w < kSimtThreads / 32; ++w) x = op(x, red[w]);
  return x;
}

template <typename T, typename Acc>
__device__ __forceinline__ Acc dot_row(const Acc* a_smem, const T* b, int n) {
  Acc s = 0;
  for (int x = 0; x < n; ++x) s += a_smem[x] * to_acc(b[x]);
  return s;
}

// grid: (s_q, h, b)
template <typename T>
__global__ void __launch_bounds__(kSimtThreads) attn_fwd_simt_kernel(const FwdParams p) {
  using Acc = typename SimtAcc<T>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Acc* qs = reinterpret_cast<Acc*>(smem_raw);  // d
  Acc* os = qs + p.d;                          // d_v
  Acc* ps = os + p.d_v;                        // kSimtThreads
  Acc* red = ps + kSimtThreads;                // 32
  const int i = blockIdx.x, hi = blockIdx.y, bi = blockIdx.z, hk = hi / (p.h / p.h_kv);
  const int tid = threadIdx.x;
  const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + hi * p.q_head_stride + int64_t(i) * p.q_row_stride;
  const T* k = static_cast<const T*>(p.k) + bi * p.k_batch_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + bi * p.v_batch_stride + hk * p.v_head_stride;
  for (int x = tid; x < p.d; x += kSimtThreads) qs[x] = to_acc(q[x]) * Acc(p.scale);
  for (int x = tid; x < p.d_v; x += kSimtThreads) os[x] = 0;
  __syncthreads();

  const KeyRange kr = make_visibility(p, p.s_q, p.s_k).keys_of_row(i);
  const Acc ninf = -INFINITY;
  Acc m = ninf, l = 0;
  for (int j0 = kr.lo; j0 < kr.hi; j0 += kSimtThreads) {
    const int j = j0 + tid, cnt = min(kSimtThreads, kr.hi - j0);
    const Acc s = j < kr.hi ? dot_row(qs, k + int64_t(j) * p.k_row_stride, p.d) : ninf;
    const Acc mx = block_reduce(s, red, [](Acc a, Acc b) { return a > b ? a : b; });
    const Acc m_new = mx > m ? mx : m;
    const Acc alpha = acc_exp(m - m_new);  // exp(-inf) = 0 on the first chunk
    const Acc pj = j < kr.hi ? acc_exp(s - m_new) : Acc(0);
    ps[tid] = pj;
    const Acc sum = block_reduce(pj, red, [](Acc a, Acc b) { return a + b; });  // syncs: ps visible
    l = l * alpha + sum;
    m = m_new;
    for (int x = tid; x < p.d_v; x += kSimtThreads) {
      Acc acc = os[x] * alpha;
      for (int c = 0; c < cnt; ++c) acc += ps[c] * to_acc(v[int64_t(j0 + c) * p.v_row_stride + x]);
      os[x] = acc;
    }
    __syncthreads();  // ps is rewritten by the next chunk
  }
  T* o = static_cast<T*>(p.o) + bi * p.o_batch_stride + hi * p.o_head_stride + int64_t(i) * p.o_row_stride;
  const Acc inv = row_has_mass(l) ? Acc(1) / l : Acc(0);
  for (int x = tid; x < p.d_v; x += kSimtThreads) o[x] = from_acc<T>(os[x] * inv);
  if (tid == 0) {
    Acc* lse = static_cast<Acc*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride;
    lse[i] = row_has_mass(l) ? m + acc_log(l) : ninf;  // NaN scores: NaN
  }
}

// Pass 1: grid (s_q, h, b). Writes dsum (D_i) and dq.
template <typename T>
__global__ void __launch_bounds__(kSimtThreads) attn_bwd_dq_simt_kernel(const BwdParams p) {
  using Acc = typename SimtAcc<T>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Acc* qs = reinterpret_cast<Acc*>(smem_raw);  // d
  Acc* dos = qs + p.d;                         // d_v
  Acc* dqs = dos + p.d_v;                      // d
  Acc* dss = dqs + p.d;                        // kSimtThreads
  Acc* red = dss + kSimtThreads;               // 32
  const int i = blockIdx.x, hi = blockIdx.y, bi = blockIdx.z, hk = hi / (p.h / p.h_kv);
  const int tid = threadIdx.x;
  const Acc scale = Acc(p.scale);
  const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + hi * p.q_head_stride + int64_t(i) * p.q_row_stride;
  const T* o = static_cast<const T*>(p.o) + bi * p.o_batch_stride + hi * p.o_head_stride + int64_t(i) * p.o_row_stride;
  const T* dout =
      static_cast<const T*>(p.dout) + bi * p.do_batch_stride + hi * p.do_head_stride + int64_t(i) * p.do_row_stride;
  const T* k = static_cast<const T*>(p.k) + bi * p.k_batch_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + bi * p.v_batch_stride + hk * p.v_head_stride;
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
  const int64_t lse_off = bi * p.lse_batch_stride + hi * p.lse_head_stride + i;
  if (p.dlse) D -= static_cast<const Acc*>(p.dlse)[bi * p.dlse_batch_stride + hi * p.dlse_head_stride + i];
  const Acc lse = static_cast<const Acc*>(p.lse)[lse_off];
  if (tid == 0) static_cast<Acc*>(p.dsum)[lse_off] = D;

  const KeyRange kr = make_visibility(p, p.s_q, p.s_k).keys_of_row(i);
  if (!(lse == Acc(-INFINITY))) {
    for (int j0 = kr.lo; j0 < kr.hi; j0 += kSimtThreads) {
      const int j = j0 + tid, cnt = min(kSimtThreads, kr.hi - j0);
      Acc ds = 0;
      if (j < kr.hi) {
        const Acc pij = acc_exp(dot_row(qs, k + int64_t(j) * p.k_row_stride, p.d) - lse);
        const Acc dp = dot_row(dos, v + int64_t(j) * p.v_row_stride, p.d_v);
        ds = pij * (dp - D);
      }
      dss[tid] = ds;
      __syncthreads();
      for (int x = tid; x < p.d; x += kSimtThreads) {
        Acc acc = dqs[x];
        for (int c = 0; c < cnt; ++c) acc += dss[c] * to_acc(k[int64_t(j0 + c) * p.k_row_stride + x]);
        dqs[x] = acc;
      }
      __syncthreads();
    }
  }
  T* dq = static_cast<T*>(p.dq) + bi * p.dq_batch_stride + hi * p.dq_head_stride + int64_t(i) * p.dq_row_stride;
  for (int x = tid; x < p.d; x += kSimtThreads) dq[x] = from_acc<T>(dqs[x] * scale);
}

// Pass 2: grid (s_k, h_kv, b). Reads dsum written by pass 1; writes dk, dv.
template <typename T>
__global__ void __launch_bounds__(kSimtThreads) attn_bwd_dkdv_simt_kernel(const BwdParams p) {
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
  const Acc scale = Acc(p.scale);
  const T* k = static_cast<const T*>(p.k) + bi * p.k_batch_stride + hk * p.k_head_stride + int64_t(j) * p.k_row_stride;
  const T* v = static_cast<const T*>(p.v) + bi * p.v_batch_stride + hk * p.v_head_stride + int64_t(j) * p.v_row_stride;
  for (int x = tid; x < p.d; x += kSimtThreads) {
    ks[x] = to_acc(k[x]) * scale;
    dks[x] = 0;
  }
  for (int x = tid; x < p.d_v; x += kSimtThreads) {
    vs[x] = to_acc(v[x]);
    dvs[x] = 0;
  }
  __syncthreads();
  const KeyRange rr = make_visibility(p, p.s_q, p.s_k).rows_of_key(j, p.s_q);
  for (int gi = 0; gi < g; ++gi) {
    const int hi = hk * g + gi;
    const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + hi * p.q_head_stride;
    const T* dout = static_cast<const T*>(p.dout) + bi * p.do_batch_stride + hi * p.do_head_stride;
    const Acc* lse = static_cast<const Acc*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride;
    const Acc* dsum = static_cast<const Acc*>(p.dsum) + bi * p.lse_batch_stride + hi * p.lse_head_stride;
    for (int i0 = rr.lo; i0 < rr.hi; i0 += kSimtThreads) {
      const int i = i0 + tid, cnt = min(kSimtThreads, rr.hi - i0);
      Acc pij = 0, ds = 0;
      if (i < rr.hi && !(lse[i] == Acc(-INFINITY))) {
        pij = acc_exp(dot_row(ks, q + int64_t(i) * p.q_row_stride, p.d) - lse[i]);
        const Acc dp = dot_row(vs, dout + int64_t(i) * p.do_row_stride, p.d_v);
        ds = pij * (dp - dsum[i]);
      }
      pss[tid] = pij;
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
  T* dk = static_cast<T*>(p.dk) + bi * p.dk_batch_stride + hk * p.dk_head_stride + int64_t(j) * p.dk_row_stride;
  T* dv = static_cast<T*>(p.dv) + bi * p.dv_batch_stride + hk * p.dv_head_stride + int64_t(j) * p.dv_row_stride;
  for (int x = tid; x < p.d; x += kSimtThreads) dk[x] = from_acc<T>(dks[x] * scale);
  for (int x = tid; x < p.d_v; x += kSimtThreads) dv[x] = from_acc<T>(dvs[x]);
}

// Lets `kernel` use `smem` bytes of dynamic shared memory (the opt-in past 48 KB).
template <typename K>
cudaError_t allow_smem(K kernel, size_t smem) {
  return smem > 48 * 1024 ? cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem))
                          : cudaSuccess;
}

template <typename T>
int launch_fwd_simt(const FwdParams& p, cudaStream_t stream) {
  using Acc = typename SimtAcc<T>::type;
  const size_t smem = (size_t(p.d) + p.d_v + kSimtThreads + 32) * sizeof(Acc);
  auto kernel = attn_fwd_simt_kernel<T>;
  if (const cudaError_t e = allow_smem(kernel, smem); e != cudaSuccess) return int(e);
  kernel<<<dim3(p.s_q, p.h, p.b), kSimtThreads, smem, stream>>>(p);
  return int(cudaGetLastError());
}

template <typename T>
int launch_bwd_simt(const BwdParams& p, cudaStream_t stream) {
  using Acc = typename SimtAcc<T>::type;
  const size_t smem1 = (2 * size_t(p.d) + p.d_v + kSimtThreads + 32) * sizeof(Acc);
  const size_t smem2 = (2 * size_t(p.d) + 2 * size_t(p.d_v) + 2 * kSimtThreads) * sizeof(Acc);
  auto k1 = attn_bwd_dq_simt_kernel<T>;
  auto k2 = attn_bwd_dkdv_simt_kernel<T>;
  cudaError_t e = cudaSuccess;
  if ((e = allow_smem(k1, smem1)) != cudaSuccess || (e = allow_smem(k2, smem2)) != cudaSuccess) return int(e);
  k1<<<dim3(p.s_q, p.h, p.b), kSimtThreads, smem1, stream>>>(p);
  if ((e = cudaGetLastError()) != cudaSuccess) return int(e);
  k2<<<dim3(p.s_k, p.h_kv, p.b), kSimtThreads, smem2, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace fal::cuda
