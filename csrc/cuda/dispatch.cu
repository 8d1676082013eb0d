// dispatch.cu -- runtime values -> template instantiations (dtype, padded head dim).
#include "cuda/launch.h"
#include "cuda/attn_fwd_tc.cuh"  // FwdTcConfig (tile shapes)
#include "cuda/launch_templates.cuh"

namespace fal::cuda {

namespace {
template <typename T>
int run_fwd_tc_dim(const FwdParams& p, cudaStream_t s) {
  if (p.d <= 32) return launch_fwd_tc<T, 32>(p, s);
  if (p.d <= 64) return launch_fwd_tc<T, 64>(p, s);
  if (p.d <= 96) return launch_fwd_tc<T, 96>(p, s);
  if (p.d <= 128) return launch_fwd_tc<T, 128>(p, s);
  if (p.d <= 192) return launch_fwd_tc<T, 192>(p, s);
  return launch_fwd_tc<T, 256>(p, s);
}
template <typename T>
int run_bwd_tc_dim(const BwdParams& p, cudaStream_t s) {
  if (p.d <= 32) return launch_bwd_tc<T, 32>(p, s);
  if (p.d <= 64) return launch_bwd_tc<T, 64>(p, s);
  if (p.d <= 96) return launch_bwd_tc<T, 96>(p, s);
  return launch_bwd_tc<T, 128>(p, s);
}
}  // namespace

bool bwd_uses_tensor_cores(const BwdParams& p) {
  return (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16) && p.d == p.d_v && p.d % 8 == 0 &&
         p.d <= kMaxTcBwdHeadDim && !p.deterministic;
}

int fwd_block_m(int d) {
  return d <= 64 ? FwdTcConfig<64>::kBM : d <= 128 ? FwdTcConfig<128>::kBM : FwdTcConfig<256>::kBM;
}
int fwd_block_n(int d) {
  return d <= 64 ? FwdTcConfig<64>::kBN : d <= 128 ? FwdTcConfig<128>::kBN : FwdTcConfig<256>::kBN;
}

bool fwd_uses_tensor_cores(const FwdParams& p) {
  return (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16) && p.d == p.d_v && p.d % 8 == 0 &&
         p.d <= kMaxTcHeadDim;
}

int run_fwd(const FwdParams& p, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (fwd_uses_tensor_cores(p))
    return p.dtype == DType::kFloat16 ? run_fwd_tc_dim<__half>(p, s) : run_fwd_tc_dim<__nv_bfloat16>(p, s);
  switch (p.dtype) {
    case DType::kFloat32: return launch_fwd_simt<float>(p, s);
    case DType::kFloat64: return launch_fwd_simt<double>(p, s);
    case DType::kFloat16: return launch_fwd_simt<__half>(p, s);
    case DType::kBFloat16: return launch_fwd_simt<__nv_bfloat16>(p, s);
  }
  return int(cudaErrorInvalidValue);
}

int run_bwd(const BwdParams& p, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (bwd_uses_tensor_cores(p))
    return p.dtype == DType::kFloat16 ? run_bwd_tc_dim<__half>(p, s) : run_bwd_tc_dim<__nv_bfloat16>(p, s);
  switch (p.dtype) {
    case DType::kFloat32: return launch_bwd_simt<float>(p, s);
    case DType::kFloat64: return launch_bwd_simt<double>(p, s);
    case DType::kFloat16: return launch_bwd_simt<__half>(p, s);
    case DType::kBFloat16: return launch_bwd_simt<__nv_bfloat16>(p, s);
  }
  return int(cudaErrorInvalidValue);
}

const char* error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

}  // namespace fal::cuda
