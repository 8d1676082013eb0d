// attn_fwd_tc.cuh -- FlashAttention-2 forward on tensor cores (fp16 / bf16, sm_80+).
//   out[b, i, h, :] = softmax_j(scale * q_i . k_j) v_j,  lse[b, h, i] = log sum_j exp(scale * q_i . k_j)
// Block: 4 warps, BM query rows split over the warps (FA2's split of the queries, so no
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

// Tile shapes. Each warp owns MT m16 row tiles (MT = 2 halves the shared-memory fragment traffic
// per MMA: every K / V fragment loaded by ldmatrix feeds two MMAs), so BM = 4 warps * 16 * MT.
// Register budget per thread (fp32 accumulators): O = MT * D / 2, S = MT * BN / 2:
//   D <= 64 : MT 2, BN 64 -> O 64 + S 64 floats;   D 96/128: MT 2, BN 32 -> O 128 + S 32;
//   D > 128 : MT 1, BN 32 -> O 128 + S 16  (BN 32 also keeps D = 256 under sm_80's 163 KB smem).
template <int D>
struct FwdTcConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMT = D <= 128 ? 2 : 1;                  // m16 tiles per warp
  static constexpr int kBM = kWarps * 16 * kMT;                 // query rows per block
  static constexpr int kBN = D <= 64 ? 64 : 32;                 // keys per tile
  static constexpr int kLd = D + 8;                             // padded shared row, elements
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
__global__ void __launch_bounds__(FwdTcConfig<D>::kThreads) attn_fwd_tc_kernel(const FwdParams p) {
  using Cfg = FwdTcConfig<D>;
  constexpr int BM = Cfg::kBM, BN = Cfg::kBN, LD = Cfg::kLd, NT = Cfg::kThreads, MT = Cfg::kMT;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);  // BM x LD
  T* Ks = Qs + BM * LD;                    // 2 x BN x LD
  T* Vs = Ks + 2 * BN * LD;                // 2 x BN x LD

  const int hi = blockIdx.y, bi = blockIdx.z, hk = hi / (p.h / p.h_kv);
  const int split = blockIdx.x % p.num_splits;
  const int i0 = (blockIdx.x / p.num_splits) * BM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;

  const T* q = static_cast<const T*>(p.q) + bi * p.q_batch_stride + hi * p.q_head_stride;
  const T* k = static_cast<const T*>(p.k) + bi * p.k_batch_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + bi * p.v_batch_stride + hk * p.v_head_stride;

  const Visibility vis = make_visibility(p, p.s_q, p.s_k);
  const int i1 = min(i0 + BM, p.s_q);
  const KeyRange kr = vis.keys_of_rows(i0, i1);
  const int n_tiles_all = kr.hi > kr.lo ? (kr.hi - kr.lo + BN - 1) / BN : 0;
  // this split's key tiles: [t_begin, t_end)
  const int per_split = (n_tiles_all + p.num_splits - 1) / p.num_splits;
  const int t_begin = min(split * per_split, n_tiles_all), t_end = min(t_begin + per_split, n_tiles_all);

  load_tile_async<T, D, BM, NT>(Qs, q, p.q_row_stride, i0, p.s_q, p.d);
  if (t_begin < t_end) {
    load_tile_async<T, D, BN, NT>(Ks, k, p.k_row_stride, kr.lo + t_begin * BN, p.s_k, p.d);
    load_tile_async<T, D, BN, NT>(Vs, v, p.v_row_stride, kr.lo + t_begin * BN, p.s_k, p.d);
  }
  cp_async_commit();

  // This thread's rows: m-tile mt of the warp, rows g and g + 8 (index 2 * mt + r), and the keys
  // each row sees.
  int rows[2 * MT];
  KeyRange rr[2 * MT];
#pragma unroll
  for (int x = 0; x < 2 * MT; ++x) {
    rows[x] = i0 + (warp * MT + x / 2) * 16 + g + (x % 2) * 8;
    rr[x] = vis.keys_of_row(rows[x]);
  }
  const float sl2 = p.scale_log2;
  const bool warp_active = i0 + warp * MT * 16 < p.s_q;

  float o[MT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int x = 0; x < D / 8; ++x) o[mt][x][0] = o[mt][x][1] = o[mt][x][2] = o[mt][x][3] = 0.f;
  float m[2 * MT], l[2 * MT];  // running max of the log2-domain scores; this thread's part of the sum
#pragma unroll
  for (int x = 0; x < 2 * MT; ++x) m[x] = -INFINITY, l[x] = 0.f;

  for (int t = t_begin; t < t_end; ++t) {
    const int j0 = kr.lo + t * BN, stage = (t - t_begin) & 1;
    if (t + 1 < t_end) {
      load_tile_async<T, D, BN, NT>(Ks + (stage ^ 1) * BN * LD, k, p.k_row_stride, j0 + BN, p.s_k, p.d);
      load_tile_async<T, D, BN, NT>(Vs + (stage ^ 1) * BN * LD, v, p.v_row_stride, j0 + BN, p.s_k, p.d);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* Kst = Ks + stage * BN * LD;
    const T* Vst = Vs + stage * BN * LD;

    // Warps whose rows all lie past s_q (decode, last query tile) only help load tiles.
    if (warp_active) {
      // S = Q K^T  (16 MT x BN per warp); each K fragment feeds MT MMAs.
      float s[MT][BN / 8][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int n = 0; n < BN / 8; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
          ldmatrix_x4(
              a[mt], Qs + ((warp * MT + mt) * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + kk * 16 + (lane / 16) * 8);
#pragma unroll
        for (int nb = 0; nb < BN / 16; ++nb) {
          uint32_t b[4];
          ldmatrix_x4(b, Kst + (nb * 16 + (lane % 8) + (lane / 16) * 8) * LD + kk * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma_16816<T>(s[mt][2 * nb], a[mt], b[0], b[1]);
            mma_16816<T>(s[mt][2 * nb + 1], a[mt], b[2], b[3]);
          }
        }
      }

      // Scale into the log2 domain and mask what the rows must not see.
      const bool full = vis.tile_fully_visible(i0, i1, j0, j0 + BN) && j0 + BN <= p.s_k;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int n = 0; n < BN / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float x = s[mt][n][e] * sl2;
            if (!full) {
              const int col = j0 + n * 8 + t4 * 2 + (e & 1);
              const KeyRange& r = rr[2 * mt + (e >> 1)];
              if (col < r.lo || col >= r.hi) x = -INFINITY;
            }
            s[mt][n][e] = x;
          }

      // Online softmax per row: m_new = max(m, rowmax(S)); acc *= exp2(m - m_new) (skipped when the
      // max did not move); P = exp2(S - m_new).
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int x = 2 * mt + r;
          float mx = m[x];
#pragma unroll
          for (int n = 0; n < BN / 8; ++n) mx = fmaxf(mx, fmaxf(s[mt][n][2 * r], s[mt][n][2 * r + 1]));
          mx = quad_max(mx);
          const float m_use = mx == -INFINITY ? 0.f : mx;  // a row with nothing visible yet keeps P = 0
          float sum = 0.f;
#pragma unroll
          for (int n = 0; n < BN / 8; ++n) {
            s[mt][n][2 * r] = exp2f(s[mt][n][2 * r] - m_use);
            s[mt][n][2 * r + 1] = exp2f(s[mt][n][2 * r + 1] - m_use);
            sum += s[mt][n][2 * r] + s[mt][n][2 * r + 1];
          }
          if (mx != m[x]) {
            const float alpha = exp2f(m[x] - m_use);
            l[x] *= alpha;
#pragma unroll
            for (int y = 0; y < D / 8; ++y) {
              o[mt][y][2 * r] *= alpha;
              o[mt][y][2 * r + 1] *= alpha;
            }
          }
          l[x] += sum;
          m[x] = mx;
        }

      // O += P V: the S accumulators of key blocks (2kk, 2kk+1) are the A fragment of k-step kk;
      // each V fragment feeds MT MMAs.
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          a[mt][0] = Pack<T>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          a[mt][1] = Pack<T>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          a[mt][2] = Pack<T>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          a[mt][3] = Pack<T>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int db = 0; db < D / 16; ++db) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, Vst + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + db * 16 + (lane / 16) * 8);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma_16816<T>(o[mt][2 * db], a[mt], b[0], b[1]);
            mma_16816<T>(o[mt][2 * db + 1], a[mt], b[2], b[3]);
          }
        }
      }
    }
    __syncthreads();  // this stage is overwritten by the load issued in the next iteration
  }
  cp_async_wait<0>();

  // Epilogue: O / l, LSE = (m + log2 l) * ln 2; a row that saw no key writes 0 and -inf.
  T* out = static_cast<T*>(p.o) + bi * p.o_batch_stride + hi * p.o_head_stride;
  float* lse = static_cast<float*>(p.lse) + bi * p.lse_batch_stride + hi * p.lse_head_stride;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int x = 2 * mt + r;
      const float lt = quad_sum(l[x]);
      const int row = rows[x];
      if (row >= p.s_q) continue;
      // row_has_mass: l > 0 saw keys, 0 saw none (out 0, lse -inf), NaN had a NaN score (both NaN)
      const float inv = row_has_mass(lt) ? 1.f / lt : 0.f;
      const float row_lse = row_has_mass(lt) ? (m[x] + __log2f(lt)) * 0.69314718055994531f : -INFINITY;
      if (p.num_splits > 1) {  // normalised fp32 partial output + its LSE, merged by the combine pass
        const int64_t prow = ((int64_t(split) * p.b + bi) * p.h + hi) * p.s_q + row;
        float* po = p.o_accum + prow * p.d_v;
#pragma unroll
        for (int y = 0; y < D / 8; ++y) {
          const int col = y * 8 + t4 * 2;
          if (col < p.d_v)
            *reinterpret_cast<float2*>(po + col) = make_float2(o[mt][y][2 * r] * inv, o[mt][y][2 * r + 1] * inv);
        }
        if (t4 == 0) p.lse_accum[prow] = row_lse;
        continue;
      }
      T* orow = out + int64_t(row) * p.o_row_stride;
#pragma unroll
      for (int y = 0; y < D / 8; ++y) {
        const int col = y * 8 + t4 * 2;
        if (col < p.d_v)
          *reinterpret_cast<uint32_t*>(orow + col) = Pack<T>::pack(o[mt][y][2 * r] * inv, o[mt][y][2 * r + 1] * inv);
      }
      if (t4 == 0) lse[row] = row_lse;
    }
}

// Split-KV combine: lse = log sum_s exp(lse_s), out = sum_s exp(lse_s - lse) out_s.
// grid (s_q, h, b), 128 threads.
template <typename T>
__global__ void __launch_bounds__(128) attn_fwd_combine_kernel(const FwdParams p) {
  const int row = blockIdx.x, hi = blockIdx.y, bi = blockIdx.z;
  const int64_t stride = int64_t(p.b) * p.h * p.s_q;  // between splits
  const int64_t prow = (int64_t(bi) * p.h + hi) * p.s_q + row;
  float mx = -INFINITY;
  bool nan = false;  // a NaN in any split's scores makes the row NaN (fmaxf alone would drop it)
  for (int s = 0; s < p.num_splits; ++s) {
    const float ls = p.lse_accum[s * stride + prow];
    nan |= ls != ls;
    mx = fmaxf(mx, ls);
  }
  float sum = 0.f;
  if (mx != -INFINITY)
    for (int s = 0; s < p.num_splits; ++s) sum += exp2f((p.lse_accum[s * stride + prow] - mx) * 1.4426950408889634f);
  if (nan) sum = __int_as_float(0x7fc00000);
  const float lse = row_has_mass(sum) ? mx + __logf(sum) : -INFINITY;
  T* out = static_cast<T*>(p.o) + bi * p.o_batch_stride + hi * p.o_head_stride + int64_t(row) * p.o_row_stride;
  for (int x = threadIdx.x; x < p.d_v; x += 128) {
    float acc = 0.f;
    if (lse != -INFINITY)
      for (int s = 0; s < p.num_splits; ++s) {
        const float w = exp2f((p.lse_accum[s * stride + prow] - lse) * 1.4426950408889634f);
        acc += w * p.o_accum[(s * stride + prow) * p.d_v + x];
      }
    out[x] = Pack<T>::from_float(acc);
  }
  if (threadIdx.x == 0) static_cast<float*>(p.lse)[bi * p.lse_batch_stride + hi * p.lse_head_stride + row] = lse;
}

template <typename T, int D>
int launch_fwd_tc(const FwdParams& p, cudaStream_t stream) {
  using Cfg = FwdTcConfig<D>;
  auto kernel = attn_fwd_tc_kernel<T, D>;
  if (Cfg::kSmemBytes > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (e != cudaSuccess) return int(e);
  }
  const dim3 grid((p.s_q + Cfg::kBM - 1) / Cfg::kBM * p.num_splits, p.h, p.b);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || p.num_splits <= 1) return int(e);
  attn_fwd_combine_kernel<T><<<dim3(p.s_q, p.h, p.b), 128, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace fal::cuda
