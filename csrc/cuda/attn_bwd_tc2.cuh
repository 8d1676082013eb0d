// attn_bwd_tc2.cuh -- tensor-core backward, variant 2 (issue 14). The default for D 64 and 128 since
// the 2026-11-30 H200 run (bench/results/gpu-2026-11-30-h200.md); FLASHATTN_LITE_CUDA_BWD=v1 selects
// variant 1 (attn_bwd_tc.cuh), which runs the other head dims. Same math and fragment layouts as
// variant 1 (read its header first):
//   dV = P^T dO,  dP = dO V^T,  dS = P o (dP - D),  dK = scale dS^T Q,  dQ = scale dS K,
// with P recomputed from the saved LSE. What differs, all aimed at the work per MMA:
//  - 128 keys x 8 warps per block (FA2's shape): every Q / dO tile loaded to shared memory and every
//    dQ atomic serves twice the keys of variant 1;
//  - Q, dO and the row vectors (lse, D) double-buffered: the next query tile's loads are issued
//    before this tile's MMAs and overlap them (variant 1: load, wait, compute);
//  - query tiles that see all 128 keys whole run a copy of the step without the visibility mask
//    (the boundary tiles -- diagonal, window edges, s_q / s_k edges -- keep it);
//  - dS^T goes to shared memory as [key][query] in packed 32-bit stores (pairs of queries) and the
//    dQ step reads it back with ldmatrix.trans as the A operand of dS K;
//  - dQ accumulated with vector fp32 atomics (atomicAdd(float2*), one instruction on sm_90) where
//    the architecture has them.
// Requirements met by the glue: as variant 1 (fp16/bf16, d % 8 == 0, d <= D, d_v == d).
#pragma once
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/attn_bwd_tc.cuh"  // attn_bwd_preprocess_kernel, attn_bwd_convert_dq_kernel
#include "cuda/kernel_common.cuh"
#include "flashattn_lite/attn_math.h"

namespace fal::cuda {

template <int D, bool kMod = false>
struct BwdTc2Config {
  static_assert(D == 64 || D == 128, "backward variant 2 is built for head dims 64 and 128");
  static constexpr int kWarps = 8;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBN = kWarps * 16;  // keys per block (16 per warp)
  // query rows per step (registers: dK, dV = D floats/thread; the score transforms need 32 at D 64 too)
  static constexpr int kBM = D <= 64 && !kMod ? 64 : 32;
  static constexpr int kLd = D + 8;     // padded shared row of K, V, Q, dO
  static constexpr int kLdT = kBM + 8;  // padded shared row of dS^T ([key][query])
  static constexpr int kSmemBytes = (2 * kBN + 4 * kBM) * kLd * 2 + kBN * kLdT * 2 + 4 * kBM * 4;
};

// dQ += v over two adjacent fp32 columns: one vector atomic where the architecture has it.
__device__ __forceinline__ void atomic_add_pair(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// Rows [row0, row0 + ROWS) x [0, D) of a (rows x d) matrix into shared memory (row pitch D + 8) by a
// fixed chunk map: thread t copies the 16-byte chunk at column (t % (D / 8)) * 8 of rows
// t / (D / 8) + i * kStep (compile-time trip count, no division in the loop); rows >= n_rows and
// columns >= d read as zeros.
template <typename T, int D, int ROWS, int NT>
__device__ __forceinline__ void load_rows_async(T* dst, const T* src, int64_t row_stride, int row0, int n_rows, int d) {
  constexpr int kChunks = D / 8, kStep = NT / kChunks, kIters = ROWS / kStep;
  static_assert(NT % kChunks == 0 && ROWS % kStep == 0, "chunk map needs NT % (D / 8) == 0");
  const int r0 = threadIdx.x / kChunks, col = (threadIdx.x % kChunks) * 8;
  const T* g = src + (int64_t(row0) + r0) * row_stride + col;
  T* s = dst + r0 * (D + 8) + col;
#pragma unroll
  for (int i = 0; i < kIters; ++i) {
    const bool ok = col < d && row0 + r0 + i * kStep < n_rows;
    cp_async_16(s + i * kStep * (D + 8), ok ? g + i * kStep * row_stride : src, ok ? 16 : 0);
  }
}

// kMod: softcap / ALiBi (softcap_alibi of attn_math.h, the CPU's math): P from the transformed score
// and dS times the softcap derivative (opt-in through the glue until a GPU run has proven it).
template <typename T, int D, bool kMod = false>
__global__ void __launch_bounds__(BwdTc2Config<D>::kThreads) attn_bwd_tc2_kernel(const BwdParams p) {
  using Cfg = BwdTc2Config<D, kMod>;
  constexpr int BN = Cfg::kBN, BM = Cfg::kBM, LD = Cfg::kLd, LDT = Cfg::kLdT, NT = Cfg::kThreads;
  constexpr float kLog2e = 1.4426950408889634f;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Ks = reinterpret_cast<T*>(smem_raw);                   // BN x LD
  T* Vs = Ks + BN * LD;                                     // BN x LD
  T* Qs = Vs + BN * LD;                                     // 2 stages x BM x LD
  T* dOs = Qs + 2 * BM * LD;                                // 2 stages x BM x LD
  T* dSt = dOs + 2 * BM * LD;                               // BN x LDT  (dS^T: [key][query])
  float* lse_s = reinterpret_cast<float*>(dSt + BN * LDT);  // 2 stages x BM
  float* dsum_s = lse_s + 2 * BM;                           // 2 stages x BM

  const int j0 = blockIdx.x * BN, hk = blockIdx.y, bi = blockIdx.z, g_heads = p.h / p.h_kv;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  load_rows_async<T, D, BN, NT>(Ks, static_cast<const T*>(p.k) + bi * p.k_batch_stride + hk * p.k_head_stride,
                                p.k_row_stride, j0, p.s_k, p.d);
  load_rows_async<T, D, BN, NT>(Vs, static_cast<const T*>(p.v) + bi * p.v_batch_stride + hk * p.v_head_stride,
                                p.v_row_stride, j0, p.s_k, p.d);
  cp_async_commit();

  const Visibility vis = make_visibility(p, p.s_q, p.s_k);
  const int ja = j0 + warp * 16 + g, jb = ja + 8;  // this thread's two key rows
  const KeyRange qrange = vis.rows_of_keys(j0, min(j0 + BN, p.s_k), p.s_q);
  const int n_m = qrange.hi > qrange.lo ? (qrange.hi - qrange.lo + BM - 1) / BM : 0;  // query tiles per head
  // Query tiles whose rows all see keys [j0, j0 + BN) whole: rows i with raw_row_lo(j0 + BN - 1) <= i
  // < raw_row_hi(j0) and i < s_q, keys all < s_k; tile m covers rows qrange.lo + m * BM + [0, BM).
  int m0 = 0, m1 = 0;
  if (j0 + BN <= p.s_k && n_m > 0) {
    const int64_t lo = vis.raw_row_lo(j0 + BN - 1) - qrange.lo;
    const int64_t hi = (vis.raw_row_hi(j0) < p.s_q ? vis.raw_row_hi(j0) : int64_t(p.s_q)) - qrange.lo - BM;
    const int64_t a = lo <= 0 ? 0 : (lo + BM - 1) / BM, b = hi < 0 ? 0 : hi / BM + 1;
    m0 = a > n_m ? n_m : int(a);
    m1 = b < m0 ? m0 : b > n_m ? n_m : int(b);
  }

  // Query tile (gi, m) of head hk * g_heads + gi into stage s: Q, dO, lse and D (rows >= s_q zeros).
  // bi is re-read from blockIdx.z (ctaid_z) rather than kept: with it live across the loop ptxas spills
  // one 64-bit pointer on sm_90a at D 128 (598 instructions per step with the spill, 686 without).
  auto load_q_tile = [&](int gi, int m, int s) {
    const int bi = ctaid_z(), hi = hk * g_heads + gi, i0 = qrange.lo + m * BM;
    load_rows_async<T, D, BM, NT>(Qs + s * BM * LD,
                                  static_cast<const T*>(p.q) + bi * p.q_batch_stride + hi * p.q_head_stride,
                                  p.q_row_stride, i0, p.s_q, p.d);
    load_rows_async<T, D, BM, NT>(dOs + s * BM * LD,
                                  static_cast<const T*>(p.dout) + bi * p.do_batch_stride + hi * p.do_head_stride,
                                  p.do_row_stride, i0, p.s_q, p.d);
    if (threadIdx.x < BM) {
      const int row = i0 + threadIdx.x;
      const bool ok = row < p.s_q;
      const int64_t off = bi * p.lse_batch_stride + hi * p.lse_head_stride + (ok ? row : 0);
      cp_async_4(lse_s + s * BM + threadIdx.x, static_cast<const float*>(p.lse) + off, ok ? 4 : 0);
      cp_async_4(dsum_s + s * BM + threadIdx.x, static_cast<const float*>(p.dsum) + off, ok ? 4 : 0);
    }
  };

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int x = 0; x < D / 8; ++x)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[x][e] = dv[x][e] = 0.f;

  constexpr int MT = BM / 16, NSPLIT = Cfg::kWarps / MT, DW = D / NSPLIT;  // dQ step: warps over rows x dims
  constexpr int DC = DW % 32 == 0 ? 32 : 16;                               // dQ columns per chunk
  static_assert(DW % DC == 0, "dQ column split must be a multiple of the chunk");
  const float sl2 = p.scale_log2;
  // This lane's ldmatrix addresses (shared state space; the fragment offsets added below are
  // compile-time constants): A fragments of its warp's 16 keys of K / V; B fragments of Q / dO
  // (rows lane % 8 + 8 * bit 4, columns 8 * bit 3) and, transposed, of dO / Q / K (rows lane % 8 +
  // 8 * bit 3, columns 8 * bit 4); A fragments of dS read transposed from dS^T (rows = keys lane % 8
  // + 8 * bit 4, columns = queries 8 * bit 3), all in stage 0.
  const uint32_t k_a = smem_u32(Ks + (warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + (lane / 16) * 8);
  const uint32_t v_a = k_a + BN * LD * 2;
  const uint32_t q_b = smem_u32(Qs + ((lane % 8) + (lane / 16) * 8) * LD + ((lane / 8) % 2) * 8);
  const uint32_t q_bt = smem_u32(Qs + ((lane % 8) + ((lane / 8) % 2) * 8) * LD + (lane / 16) * 8);
  const uint32_t k_bt = smem_u32(Ks + ((lane % 8) + ((lane / 8) % 2) * 8) * LD + (lane / 16) * 8);
  const uint32_t ds_at = smem_u32(dSt + ((lane % 8) + (lane / 16) * 8) * LDT + ((lane / 8) % 2) * 8);
  constexpr uint32_t kDO = 2 * BM * LD * 2, kStage = BM * LD * 2;  // bytes: Q -> dO, stage 0 -> 1

  // One query tile: prefetch the next one into the other stage, wait for this one, compute.
  int stage = 0;
  auto step = [&](int gi, int m, auto mask) {
    constexpr bool kMask = decltype(mask)::value;
    const int hi = hk * g_heads + gi, i0 = qrange.lo + m * BM;
    if (m + 1 < n_m) {
      load_q_tile(gi, m + 1, stage ^ 1);
    } else if (gi + 1 < g_heads) {
      load_q_tile(gi + 1, 0, stage ^ 1);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const uint32_t qs_b = q_b + stage * kStage, qs_bt = q_bt + stage * kStage;
    const float* lse_st = lse_s + stage * BM;
    const float* dsum_st = dsum_s + stage * BM;

    // S^T = K Q^T and dP^T = V dO^T: 16 keys x BM queries per warp
    float st[BM / 8][4], dpt[BM / 8][4];
#pragma unroll
    for (int n = 0; n < BM / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ak[4], av[4];
      ldmatrix_x4(ak, k_a + kk * 32);
      ldmatrix_x4(av, v_a + kk * 32);
#pragma unroll
      for (int nb = 0; nb < BM / 16; ++nb) {
        uint32_t b[4];
        const uint32_t b_off = qs_b + (nb * 16 * LD + kk * 16) * 2;
        ldmatrix_x4(b, b_off);
        mma_16816<T>(st[2 * nb], ak, b[0], b[1]);
        mma_16816<T>(st[2 * nb + 1], ak, b[2], b[3]);
        ldmatrix_x4(b, b_off + kDO);
        mma_16816<T>(dpt[2 * nb], av, b[0], b[1]);
        mma_16816<T>(dpt[2 * nb + 1], av, b[2], b[3]);
      }
    }
    // P^T = exp2(S^T scale_log2 - lse log2 e) where visible, dS^T = P^T o (dP^T - D)
    // The masked copy recomputes its rows-of-key ranges from the params and a fresh read of the
    // thread index (tid_x(): not hoistable), so nothing of the mask stays live across the loop.
    KeyRange qr[2] = {};
    if (kMask) {
      const Visibility vm = make_visibility(p, p.s_q, p.s_k);
      const int tid = tid_x(), jk = j0 + (tid / 32) * 16 + (tid % 32) / 4;
#pragma unroll
      for (int r = 0; r < 2; ++r) qr[r] = jk + 8 * r < p.s_k ? vm.rows_of_key(jk + 8 * r, p.s_q) : KeyRange{0, 0};
    }
    ScoreModLite mod;
    if constexpr (kMod) mod = make_score_mod_lite(p, ctaid_z(), hi, p.s_q, p.s_k);
#pragma unroll
    for (int n = 0; n < BM / 8; ++n)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int il = n * 8 + t4 * 2 + c;
        const float l2 = lse_st[il] * kLog2e, dd = dsum_st[il];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int e = 2 * r + c;
          float pv, gcap = 1.f;
          if constexpr (kMod) {  // natural units: z = mod(scale s), P = exp(z - lse)
            const float z = mod.apply(st[n][e] * float(p.scale), i0 + il, r == 0 ? ja : jb, &gcap);
            pv = exp2f(fmaf(z, kLog2e, -l2));
          } else {
            pv = exp2f(fmaf(st[n][e], sl2, -l2));
          }
          if (kMask && (i0 + il < qr[r].lo || i0 + il >= qr[r].hi)) pv = 0.f;
          st[n][e] = pv;
          if constexpr (kMod)
            dpt[n][e] = pv * (dpt[n][e] - dd) * gcap;
          else
            dpt[n][e] = pv * (dpt[n][e] - dd);
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
      // dS^T rows (keys) warp * 16 + g (+ 8), query pairs 16 kk + 8 h + 2 t4: packed 32-bit stores
      *reinterpret_cast<uint32_t*>(dSt + (warp * 16 + g) * LDT + kk * 16 + t4 * 2) = ads[0];
      *reinterpret_cast<uint32_t*>(dSt + (warp * 16 + g + 8) * LDT + kk * 16 + t4 * 2) = ads[1];
      *reinterpret_cast<uint32_t*>(dSt + (warp * 16 + g) * LDT + kk * 16 + 8 + t4 * 2) = ads[2];
      *reinterpret_cast<uint32_t*>(dSt + (warp * 16 + g + 8) * LDT + kk * 16 + 8 + t4 * 2) = ads[3];
#pragma unroll
      for (int db = 0; db < D / 16; ++db) {
        uint32_t b[4];
        const uint32_t b_off = qs_bt + (kk * 16 * LD + db * 16) * 2;
        ldmatrix_x4_trans(b, b_off + kDO);
        mma_16816<T>(dv[2 * db], ap, b[0], b[1]);
        mma_16816<T>(dv[2 * db + 1], ap, b[2], b[3]);
        ldmatrix_x4_trans(b, b_off);
        mma_16816<T>(dk[2 * db], ads, b[0], b[1]);
        mma_16816<T>(dk[2 * db + 1], ads, b[2], b[3]);
      }
    }
    __syncthreads();

    // dQ_i += dS K: warp (mt, ns) computes rows mt*16.. x columns ns*DW.., in chunks of DC columns so
    // that only DC/2 accumulators are live next to dK and dV. A = dS read transposed from dS^T.
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
          ldmatrix_x4_trans(a, ds_at + (kk * 16 * LDT + mt * 16) * 2);
#pragma unroll
          for (int db = 0; db < DC / 16; ++db) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, k_bt + (kk * 16 * LD + c0 + db * 16) * 2);
            mma_16816<T>(dq[2 * db], a, b[0], b[1]);
            mma_16816<T>(dq[2 * db + 1], a, b[2], b[3]);
          }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = i0 + mt * 16 + g + r * 8;
          if (kMask && row >= p.s_q) continue;
          float* acc = p.dq_accum + ((int64_t(bi) * p.s_q + row) * p.h + hi) * p.d;
#pragma unroll
          for (int x = 0; x < DC / 8; ++x) {
            const int col = c0 + x * 8 + t4 * 2;
            if (col < p.d) atomic_add_pair(acc + col, dq[x][2 * r], dq[x][2 * r + 1]);
          }
        }
      }
    }
    __syncthreads();  // this stage and dS^T are rewritten by the next step
    stage ^= 1;
  };

  if (n_m > 0) load_q_tile(0, 0, 0);
  cp_async_commit();
  using Yes = std::true_type;
  using No = std::false_type;
  // Two copies of the step: unmasked over the whole tiles [m0, m1) of each head, masked elsewhere.
  for (int gi = 0; gi < g_heads; ++gi) {
    for (int m = 0; m < n_m;) {
      if (m >= m0 && m < m1) {
        for (; m < m1; ++m) step(gi, m, No{});
      } else {
        step(gi, m++, Yes{});
      }
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
template <typename T, int D, bool kMod>
int launch_bwd_tc2_mod(const BwdParams& p, cudaStream_t stream) {
  using Cfg = BwdTc2Config<D, kMod>;
  attn_bwd_preprocess_kernel<T><<<dim3((p.s_q + 3) / 4, p.h, p.b), 128, 0, stream>>>(p);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return int(e);
  auto kernel = attn_bwd_tc2_kernel<T, D, kMod>;
  if ((e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes)) != cudaSuccess)
    return int(e);
  kernel<<<dim3((p.s_k + Cfg::kBN - 1) / Cfg::kBN, p.h_kv, p.b), Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  if ((e = cudaGetLastError()) != cudaSuccess) return int(e);
  attn_bwd_convert_dq_kernel<T><<<dim3(p.s_q, p.h, p.b), 128, 0, stream>>>(p);
  return int(cudaGetLastError());
}

// softcap / ALiBi (opt-in through the glue until a GPU run has proven them) run the kMod kernel.
template <typename T, int D>
int launch_bwd_tc2(const BwdParams& p, cudaStream_t stream) {
  if (p.softcap > 0.0 || p.alibi_slopes != nullptr) return launch_bwd_tc2_mod<T, D, true>(p, stream);
  return launch_bwd_tc2_mod<T, D, false>(p, stream);
}

}  // namespace fal::cuda
