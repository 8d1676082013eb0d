// attn_bwd_tc.cuh -- FlashAttention-2 backward on tensor cores (fp16 / bf16, head dim <= 128).
// P is recomputed from the saved LSE: P = exp2(scale_log2 * q.k - lse * log2 e).
//   dV = P^T dO,  dP = dO V^T,  dS = P o (dP - D),  D = rowsum(dO o O) - dlse,
//   dK = scale dS^T Q,  dQ = scale dS K.
// One block owns BN = 64 keys of one kv head (grid: key tiles x h_kv x b) and walks every query
// tile of every query head of its GQA group that can see them. Its 4 warps own 16 keys each and
// compute the transposed products S^T = K Q^T and dP^T = V dO^T, so P^T and dS^T are already the
// A operands of dV += P^T dO and dK += dS^T Q: dK and dV stay in registers for the whole block
// and are written once, with no reduction across blocks.
// dQ needs a sum over key tiles, i.e. over blocks: each block adds its dS K into an fp32 buffer
// with atomicAdd (FA2's choice: one pass, no recomputation; a separate dQ pass would redo
// S and dP, ~40% more FLOPs), then a small kernel scales and rounds it once. fp32 atomics make
// dQ reproducible only to rounding; deterministic=True runs the atomic-free SIMT backward.
#pragma once
#include <cuda_runtime.h>

#include "cuda/attn_fwd_tc.cuh"
#include "cuda/kernel_common.cuh"
#include "flashattn_lite/attn_math.h"

namespace fal::cuda {

template <int D>
struct BwdTcConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 128;
  static constexpr int kBN = 64;                 // keys per block (16 per warp)
  static constexpr int kBM = D <= 64 ? 64 : 32;  // query rows per step (register budget: dK, dV = D floats/thread)
  static constexpr int kLd = D + 8;
  static constexpr int kLdS = kBN + 8;
  static constexpr int kSmemBytes = (2 * kBN + 2 * kBM) * kLd * 2 + kBM * kLdS * 2 + 2 * kBM * 4;
};

// D_i = dO_i . O_i - dlse_i (fp32), one warp per row; grid (ceil(s_q / 4), h, b).
template <typename T>
__global__ void __launch_bounds__(128) attn_bwd_preprocess_kernel(const BwdParams p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = blockIdx.x * 4 + warp, hi = blockIdx.y, bi = blockIdx.z;
  if (row >= p.s_q) return;
  const T* o =
      static_cast<const T*>(p.o) + bi * p.o_batch_stride + hi * p.o_head_stride + int64_t(row) * p.o_row_stride;
  const T* dout =
      static_cast<const T*>(p.dout) + bi * p.do_batch_stride + hi * p.do_head_stride + int64_t(row) * p.do_row_stride;
  float acc = 0.f;
  for (int x = lane; x < p.d_v; x += 32) acc += to_f32(o[x]) * to_f32(dout[x]);
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) {
    const int64_t off = bi * p.lse_batch_stride + hi * p.lse_head_stride + row;
    if (p.dlse) acc -= static_cast<const float*>(p.dlse)[bi * p.dlse_batch_stride + hi * p.dlse_head_stride + row];
    static_cast<float*>(p.dsum)[off] = acc;
  }
}

// dq = round(scale * dq_accum); dq_accum is (b, s_q, h, d) fp32 contiguous. grid (s_q, h, b).
template <typename T>
__global__ void __launch_bounds__(128) attn_bwd_convert_dq_kernel(const BwdParams p) {
  const int row = blockIdx.x, hi = blockIdx.y, bi = blockIdx.z;
  const float* acc = p.dq_accum + ((int64_t(bi) * p.s_q + row) * p.h + hi) * p.d;
  T* dq = static_cast<T*>(p.dq) + bi * p.dq_batch_stride + hi * p.dq_head_stride + int64_t(row) * p.dq_row_stride;
  for (int x = threadIdx.x; x < p.d; x += 128) dq[x] = Pack<T>::from_float(acc[x] * float(p.scale));
}

template <typename T, int D>
__global__ void __launch_bounds__(BwdTcConfig<D>::kThreads) attn_bwd_tc_kernel(const BwdParams p) {
  using Cfg = BwdTcConfig<D>;
  constexpr int BN = Cfg::kBN, BM = Cfg::kBM, LD = Cfg::kLd, LDS = Cfg::kLdS, NT = Cfg::kThreads;
  constexpr float kLog2e = 1.4426950408889634f;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Ks = reinterpret_cast<T*>(smem_raw);                    // BN x LD
  T* Vs = Ks + BN * LD;                                      // BN x LD
  T* Qs = Vs + BN * LD;                                      // BM x LD
  T* dOs = Qs + BM * LD;                                     // BM x LD
  T* dSs = dOs + BM * LD;                                    // BM x LDS  (dS as [query][key])
  float* lse2_s = reinterpret_cast<float*>(dSs + BM * LDS);  // BM, lse * log2 e
  float* dsum_s = lse2_s + BM;                               // BM

  const int j0 = blockIdx.x * BN, hk = blockIdx.y, bi = blockIdx.z, g_heads = p.h / p.h_kv;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const T* k = static_cast<const T*>(p.k) + bi * p.k_batch_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + bi * p.v_batch_stride + hk * p.v_head_stride;
  load_tile_async<T, D, BN, NT>(Ks, k, p.k_row_stride, j0, p.s_k, p.d);
  load_tile_async<T, D, BN, NT>(Vs, v, p.v_row_stride, j0, p.s_k, p.d);
  cp_async_commit();

  const Visibility vis = make_visibility(p, p.s_q, p.s_k);
  const int ja = j0 + warp * 16 + g, jb = ja + 8;  // this thread's two key rows
  const KeyRange qa = ja < p.s_k ? vis.rows_of_key(ja, p.s_q) : KeyRange{0, 0};
  const KeyRange qb = jb < p.s_k ? vis.rows_of_key(jb, p.s_q) : KeyRange{0, 0};
  const KeyRange qrange = vis.rows_of_keys(j0, min(j0 + BN, p.s_k), p.s_q);
  const float sl2 = p.scale_log2;

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int x = 0; x < D / 8; ++x)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[x][e] = dv[x][e] = 0.f;

  constexpr int MT = BM / 16, NSPLIT = 4 / MT, DW = D / NSPLIT;  // dQ step: warps over rows x dims
  constexpr int DC = DW % 32 == 0 ? 32 : 16;                     // dQ columns per chunk
  static_assert(DW % DC == 0, "dQ column split must be a multiple of the chunk");

  for (int gi = 0; gi < g_heads; ++gi) {
    const int hi = hk * g_heads + gi;
    const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + hi * p.q_head_stride;
    const T* dout = static_cast<const T*>(p.dout) + bi * p.do_batch_stride + hi * p.do_head_stride;
    const float* lse = static_cast<const float*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride;
    const float* dsum = static_cast<const float*>(p.dsum) + bi * p.lse_batch_stride + hi * p.lse_head_stride;
    for (int i0 = qrange.lo; i0 < qrange.hi; i0 += BM) {
      load_tile_async<T, D, BM, NT>(Qs, q, p.q_row_stride, i0, p.s_q, p.d);
      load_tile_async<T, D, BM, NT>(dOs, dout, p.do_row_stride, i0, p.s_q, p.d);
      cp_async_commit();
      for (int r = threadIdx.x; r < BM; r += NT) {
        const int row = i0 + r;
        lse2_s[r] = row < p.s_q ? lse[row] * kLog2e : 0.f;
        dsum_s[r] = row < p.s_q ? dsum[row] : 0.f;
      }
      cp_async_wait<0>();
      __syncthreads();

      // S^T = K Q^T and dP^T = V dO^T: 16 keys x BM queries per warp
      float st[BM / 8][4], dpt[BM / 8][4];
#pragma unroll
      for (int n = 0; n < BM / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ak[4], av[4];
        const int a_off = (warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + kk * 16 + (lane / 16) * 8;
        ldmatrix_x4(ak, Ks + a_off);
        ldmatrix_x4(av, Vs + a_off);
#pragma unroll
        for (int nb = 0; nb < BM / 16; ++nb) {
          uint32_t b[4];
          const int b_off = (nb * 16 + (lane % 8) + (lane / 16) * 8) * LD + kk * 16 + ((lane / 8) % 2) * 8;
          ldmatrix_x4(b, Qs + b_off);
          mma_16816<T>(st[2 * nb], ak, b[0], b[1]);
          mma_16816<T>(st[2 * nb + 1], ak, b[2], b[3]);
          ldmatrix_x4(b, dOs + b_off);
          mma_16816<T>(dpt[2 * nb], av, b[0], b[1]);
          mma_16816<T>(dpt[2 * nb + 1], av, b[2], b[3]);
        }
      }
      // P^T = exp2(S^T scale_log2 - lse2) where visible, dS^T = P^T o (dP^T - D)
#pragma unroll
      for (int n = 0; n < BM / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int il = n * 8 + t4 * 2 + (e & 1), i = i0 + il;
          const KeyRange& qr = e < 2 ? qa : qb;
          const float pv = (i >= qr.lo && i < qr.hi) ? exp2f(st[n][e] * sl2 - lse2_s[il]) : 0.f;
          st[n][e] = pv;
          dpt[n][e] = pv * (dpt[n][e] - dsum_s[il]);
        }
      }
      // dV += P^T dO, dK += dS^T Q (scaled at the end)
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) {
        uint32_t ap[4], ads[4];
        ap[0] = Pack<T>::pack(st[2 * kk][0], st[2 * kk][1]);
        ap[1] = Pack<T>::pack(st[2 * kk][2], st[2 * kk][3]);
        ap[2] = Pack<T>::pack(st[2 * kk + 1][0], st[2 * kk + 1][1]);
        ap[3] = Pack<T>::pack(st[2 * kk + 1][2], st[2 * kk + 1][3]);
        ads[0] = Pack<T>::pack(dpt[2 * kk][0], dpt[2 * kk][1]);
        ads[1] = Pack<T>::pack(dpt[2 * kk][2], dpt[2 * kk][3]);
        ads[2] = Pack<T>::pack(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
        ads[3] = Pack<T>::pack(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
#pragma unroll
        for (int db = 0; db < D / 16; ++db) {
          uint32_t b[4];
          const int b_off = (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + db * 16 + (lane / 16) * 8;
          ldmatrix_x4_trans(b, dOs + b_off);
          mma_16816<T>(dv[2 * db], ap, b[0], b[1]);
          mma_16816<T>(dv[2 * db + 1], ap, b[2], b[3]);
          ldmatrix_x4_trans(b, Qs + b_off);
          mma_16816<T>(dk[2 * db], ads, b[0], b[1]);
          mma_16816<T>(dk[2 * db + 1], ads, b[2], b[3]);
        }
      }
      // dS^T -> shared as dS [query][key]
#pragma unroll
      for (int n = 0; n < BM / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          dSs[(n * 8 + t4 * 2 + (e & 1)) * LDS + warp * 16 + g + (e >= 2 ? 8 : 0)] = Pack<T>::from_float(dpt[n][e]);
      __syncthreads();

      // dQ_i += dS K: warp (mt, ns) computes rows mt*16.. x columns ns*DW.., in chunks of DC
      // columns so that only DC/2 accumulators are live next to dK and dV.
      {
        const int mt = warp % MT, ns = warp / MT;
#pragma unroll 1
        for (int c0 = ns * DW; c0 < ns * DW + DW; c0 += DC) {
          float dq[DC / 8][4];
#pragma unroll
          for (int x = 0; x < DC / 8; ++x) dq[x][0] = dq[x][1] = dq[x][2] = dq[x][3] = 0.f;
#pragma unroll
          for (int kk = 0; kk < BN / 16; ++kk) {
            uint32_t a[4];
            ldmatrix_x4(a, dSs + (mt * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LDS + kk * 16 + (lane / 16) * 8);
#pragma unroll
            for (int db = 0; db < DC / 16; ++db) {
              uint32_t b[4];
              ldmatrix_x4_trans(
                  b, Ks + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + c0 + db * 16 + (lane / 16) * 8);
              mma_16816<T>(dq[2 * db], a, b[0], b[1]);
              mma_16816<T>(dq[2 * db + 1], a, b[2], b[3]);
            }
          }
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int row = i0 + mt * 16 + g + r * 8;
            if (row >= p.s_q) continue;
            float* acc = p.dq_accum + ((int64_t(bi) * p.s_q + row) * p.h + hi) * p.d;
#pragma unroll
            for (int x = 0; x < DC / 8; ++x) {
              const int col = c0 + x * 8 + t4 * 2;
              if (col < p.d) {
                atomicAdd(acc + col, dq[x][2 * r]);
                atomicAdd(acc + col + 1, dq[x][2 * r + 1]);
              }
            }
          }
        }
      }
      __syncthreads();  // Qs, dOs, dSs and the row vectors are rewritten by the next step
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  T* dkp = static_cast<T*>(p.dk) + bi * p.dk_batch_stride + hk * p.dk_head_stride;
  T* dvp = static_cast<T*>(p.dv) + bi * p.dv_batch_stride + hk * p.dv_head_stride;
  const float scale = float(p.scale);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = r == 0 ? ja : jb;
    if (j >= p.s_k) continue;
    T* dkr = dkp + int64_t(j) * p.dk_row_stride;
    T* dvr = dvp + int64_t(j) * p.dv_row_stride;
#pragma unroll
    for (int x = 0; x < D / 8; ++x) {
      const int col = x * 8 + t4 * 2;
      if (col < p.d) {
        *reinterpret_cast<uint32_t*>(dkr + col) = Pack<T>::pack(dk[x][2 * r] * scale, dk[x][2 * r + 1] * scale);
        *reinterpret_cast<uint32_t*>(dvr + col) = Pack<T>::pack(dv[x][2 * r], dv[x][2 * r + 1]);
      }
    }
  }
}

// Needs p.dsum (fp32, b x h x s_q, lse strides) and p.dq_accum (fp32 zeros, b x s_q x h x d).
template <typename T, int D>
int launch_bwd_tc(const BwdParams& p, cudaStream_t stream) {
  using Cfg = BwdTcConfig<D>;
  attn_bwd_preprocess_kernel<T><<<dim3((p.s_q + 3) / 4, p.h, p.b), 128, 0, stream>>>(p);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return int(e);
  auto kernel = attn_bwd_tc_kernel<T, D>;
  if (Cfg::kSmemBytes > 48 * 1024 &&
      (e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes)) != cudaSuccess)
    return int(e);
  kernel<<<dim3((p.s_k + Cfg::kBN - 1) / Cfg::kBN, p.h_kv, p.b), Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  if ((e = cudaGetLastError()) != cudaSuccess) return int(e);
  attn_bwd_convert_dq_kernel<T><<<dim3(p.s_q, p.h, p.b), 128, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace fal::cuda
