// attn_fwd_tc.cuh -- FlashAttention-2 forward on tensor cores (fp16 / bf16, sm_80+).
//   out[b, i, h, :] = softmax_j(scale * q_i . k_j) v_j,  lse[b, h, i] = log sum_j exp(scale * q_i . k_j)
// Block: 4 warps, BM = 64 query rows (16 per warp: FA2's split of the queries over warps, so no
// inter-warp reduction), loops over BN-key tiles of K and V double-buffered in shared memory with
// cp.async. S = Q K^T and O += P V are mma.sync m16n8k16 fed by ldmatrix; the online softmax
// runs on the S accumulator fragments in registers (scores in the log2 domain, scale folded in).
// Shared rows are padded by 8 elements (16 B) so the 8 row addresses of an ldmatrix hit 8
// distinct 16-byte bank groups.
// Requirements met by the glue: head dim d % 8 == 0, d <= D (D = padded tile dim, multiple of
// 32), d_v == d, 16-byte aligned base pointers and row/head/batch strides multiple of 8.
#pragma once
#include <cuda_runtime.h>

#include "cuda/kernel_common.cuh"
#include "flashattn_lite/attn_math.h"

namespace fal::cuda {

template <int D>
struct FwdTcConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBM = 64;                  // query rows per block
  static constexpr int kBN = D <= 128 ? 64 : 32;  // keys per tile (keeps D=256 under 164 KB smem for sm_80)
  static constexpr int kLd = D + 8;               // padded shared row, elements
  static constexpr int kSmemBytes = (kBM + 4 * kBN) * kLd * 2;  // Q + 2 stages of K and V
};

// Copy rows [row0, row0 + ROWS) x [0, D) of a (rows x d) matrix into shared memory (row pitch
// kLd), zero-filling rows >= row_limit and columns >= d.
template <typename T, int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_async(T* dst, const T* src, int64_t row_stride, int row0, int row_limit,
                                                int d) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kLd = D + 8;
  for (int c = threadIdx.x; c < ROWS * kChunks; c += THREADS) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const int gr = row0 + r;
    const bool valid = gr < row_limit && col < d;
    const T* g = valid ? src + int64_t(gr) * row_stride + col : src;
    cp_async_16(dst + r * kLd + col, g, valid ? 16 : 0);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(FwdTcConfig<D>::kThreads)
    attn_fwd_tc_kernel(const FwdParams p) {
  using Cfg = FwdTcConfig<D>;
  constexpr int BM = Cfg::kBM, BN = Cfg::kBN, LD = Cfg::kLd, NT = Cfg::kThreads;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);  // BM x LD
  T* Ks = Qs + BM * LD;                     // 2 x BN x LD
  T* Vs = Ks + 2 * BN * LD;                 // 2 x BN x LD

  const int hi = blockIdx.y, bi = blockIdx.z, hk = hi / (p.h / p.h_kv);
  const int i0 = blockIdx.x * BM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;

  const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + hi * p.q_head_stride;
  const T* k = static_cast<const T*>(p.k) + bi * p.k_batch_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + bi * p.v_batch_stride + hk * p.v_head_stride;

  const Visibility vis = make_visibility(p, p.s_q, p.s_k);
  const int i1 = min(i0 + BM, p.s_q);
  const KeyRange kr = vis.keys_of_rows(i0, i1);
  const int n_tiles = kr.hi > kr.lo ? (kr.hi - kr.lo + BN - 1) / BN : 0;

  load_tile_async<T, D, BM, NT>(Qs, q, p.q_row_stride, i0, p.s_q, p.d);
  if (n_tiles > 0) {
    load_tile_async<T, D, BN, NT>(Ks, k, p.k_row_stride, kr.lo, p.s_k, p.d);
    load_tile_async<T, D, BN, NT>(Vs, v, p.v_row_stride, kr.lo, p.s_k, p.d);
  }
  cp_async_commit();

  // This thread's two rows of the warp's 16 and the keys they see.
  const int row_a = i0 + warp * 16 + g, row_b = row_a + 8;
  const KeyRange ra = vis.keys_of_row(row_a), rb = vis.keys_of_row(row_b);
  const float sl2 = p.scale_log2;

  float o[D / 8][4];
#pragma unroll
  for (int x = 0; x < D / 8; ++x) o[x][0] = o[x][1] = o[x][2] = o[x][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY};  // running max of the log2-domain scores
  float l[2] = {0.f, 0.f};              // this thread's part of the running sum

  for (int t = 0; t < n_tiles; ++t) {
    const int j0 = kr.lo + t * BN, stage = t & 1;
    if (t + 1 < n_tiles) {
      load_tile_async<T, D, BN, NT>(Ks + (stage ^ 1) * BN * LD, k, p.k_row_stride, j0 + BN, p.s_k, p.d);
      load_tile_async<T, D, BN, NT>(Vs + (stage ^ 1) * BN * LD, v, p.v_row_stride, j0 + BN, p.s_k, p.d);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* Kst = Ks + stage * BN * LD;
    const T* Vst = Vs + stage * BN * LD;

    // S = Q K^T  (16 x BN per warp)
    float s[BN / 8][4];
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      ldmatrix_x4(a, Qs + (warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + kk * 16 + (lane / 16) * 8);
#pragma unroll
      for (int nb = 0; nb < BN / 16; ++nb) {
        uint32_t b[4];
        ldmatrix_x4(b, Kst + (nb * 16 + (lane % 8) + (lane / 16) * 8) * LD + kk * 16 + ((lane / 8) % 2) * 8);
        mma_16816<T>(s[2 * nb], a, b[0], b[1]);
        mma_16816<T>(s[2 * nb + 1], a, b[2], b[3]);
      }
    }

    // Scale into the log2 domain and mask what the rows must not see.
    const bool full = vis.tile_fully_visible(i0, i1, j0, j0 + BN) && j0 + BN <= p.s_k;
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[n][e] * sl2;
        if (!full) {
          const int col = j0 + n * 8 + t4 * 2 + (e & 1);
          const KeyRange& rr = e < 2 ? ra : rb;
          if (col < rr.lo || col >= rr.hi) x = -INFINITY;
        }
        s[n][e] = x;
      }
    }

    // Online softmax per row: m_new = max(m, rowmax(S)); acc *= exp2(m - m_new); P = exp2(S - m_new)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = m[r];
#pragma unroll
      for (int n = 0; n < BN / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
      mx = quad_max(mx);
      const float m_use = mx == -INFINITY ? 0.f : mx;  // a row with nothing visible yet keeps P = 0
      const float alpha = exp2f(m[r] - m_use);
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < BN / 8; ++n) {
        s[n][2 * r] = exp2f(s[n][2 * r] - m_use);
        s[n][2 * r + 1] = exp2f(s[n][2 * r + 1] - m_use);
        sum += s[n][2 * r] + s[n][2 * r + 1];
      }
      l[r] = l[r] * alpha + sum;
      m[r] = mx;
#pragma unroll
      for (int x = 0; x < D / 8; ++x) {
        o[x][2 * r] *= alpha;
        o[x][2 * r + 1] *= alpha;
      }
    }

    // O += P V: the S accumulators of key blocks (2kk, 2kk+1) are the A fragment of k-step kk.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      a[0] = Pack<T>::pack(s[2 * kk][0], s[2 * kk][1]);
      a[1] = Pack<T>::pack(s[2 * kk][2], s[2 * kk][3]);
      a[2] = Pack<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = Pack<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int db = 0; db < D / 16; ++db) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, Vst + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + db * 16 + (lane / 16) * 8);
        mma_16816<T>(o[2 * db], a, b[0], b[1]);
        mma_16816<T>(o[2 * db + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // this stage is overwritten by the load issued in the next iteration
  }
  cp_async_wait<0>();

  // Epilogue: O / l, LSE = (m + log2 l) * ln 2; a row that saw no key writes 0 and -inf.
  T* out = static_cast<T*>(p.o) + bi * p.o_batch_stride + hi * p.o_head_stride;
  float* lse = static_cast<float*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float lt = quad_sum(l[r]);
    const int row = r == 0 ? row_a : row_b;
    if (row >= p.s_q) continue;
    const float inv = lt > 0.f ? 1.f / lt : 0.f;
    T* orow = out + int64_t(row) * p.o_row_stride;
#pragma unroll
    for (int x = 0; x < D / 8; ++x) {
      const int col = x * 8 + t4 * 2;
      if (col < p.d_v)
        *reinterpret_cast<uint32_t*>(orow + col) = Pack<T>::pack(o[x][2 * r] * inv, o[x][2 * r + 1] * inv);
    }
    if (t4 == 0) lse[row] = lt > 0.f ? (m[r] + __log2f(lt)) * 0.69314718055994531f : -INFINITY;
  }
}

template <typename T, int D>
int launch_fwd_tc(const FwdParams& p, cudaStream_t stream) {
  using Cfg = FwdTcConfig<D>;
  auto kernel = attn_fwd_tc_kernel<T, D>;
  if (Cfg::kSmemBytes > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (e != cudaSuccess) return int(e);
  }
  const dim3 grid((p.s_q + Cfg::kBM - 1) / Cfg::kBM, p.h, p.b);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace fal::cuda
