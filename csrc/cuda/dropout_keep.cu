// dropout_keep.cu -- the dropout keep pattern on the GPU from the shared Philox definition
// (attn_math.h: Dropout::keep4), so the bits the CPU kernels draw can be compared with the
// device's for the same rng_state (tests/test_cuda.py).
#include <cuda_runtime.h>

#include "cuda/launch.h"
#include "flashattn_lite/attn_math.h"

namespace fal::cuda {
namespace {

// one thread per group of 4 keys of one (batch * head, row)
__global__ void dropout_keep_kernel(Dropout d, int heads, int s_q, int s_k, unsigned char* out, int64_t n_groups) {
  const int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= n_groups) return;
  const int groups_per_row = (s_k + 3) / 4;
  const int j4 = int(g % groups_per_row);
  const int64_t row = g / groups_per_row;  // (bh, i)
  const int i = int(row % s_q);
  Dropout dd = d;
  dd.bh = uint32_t(row / s_q);
  const uint32_t bits = dd.keep4(i, j4);
  for (int t = 0; t < 4 && 4 * j4 + t < s_k; ++t) out[row * s_k + 4 * j4 + t] = (bits >> t) & 1u;
  (void)heads;
}

}  // namespace

int run_dropout_keep(const FwdParams& p, int batch, int s_q, int s_k, unsigned char* out, void* stream) {
  const int64_t n_groups = int64_t(batch) * p.h * s_q * ((s_k + 3) / 4);
  if (n_groups == 0) return 0;
  const int threads = 256;
  const int64_t blocks = (n_groups + threads - 1) / threads;
  dropout_keep_kernel<<<unsigned(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(make_dropout(p), p.h, s_q,
                                                                                           s_k, out, n_groups);
  return int(cudaGetLastError());
}

}  // namespace fal::cuda
