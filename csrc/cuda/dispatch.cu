// dispatch.cu -- runtime values -> template instantiations (dtype, padded head dim).
#include "cuda/head_dims.h"
#include "cuda/launch.h"
#include "cuda/attn_fwd_tc.cuh"   // FwdTcConfig (tile shapes)
#include "cuda/attn_fwd_tc2.cuh"  // FwdTc2Config
#include "cuda/launch_templates.cuh"

#include <cstdlib>
#include <cstring>

namespace fal::cuda {

// The kernel-variant switches: read at each call (a process can compare variants).
bool env_equals(const char* name, const char* value) {
  const char* env = std::getenv(name);
  return env != nullptr && std::strcmp(env, value) == 0;
}

namespace {
// Head dims built with tensor-core kernels (FLASHATTN_LITE_CUDA_HEADDIMS; all by default). A head
// dim without a built tile runs on the SIMT kernels.
#if !defined(FAL_CUDA_HDIM_32) && !defined(FAL_CUDA_HDIM_64) && !defined(FAL_CUDA_HDIM_96) && \
    !defined(FAL_CUDA_HDIM_128) && !defined(FAL_CUDA_HDIM_192) && !defined(FAL_CUDA_HDIM_256)
#define FAL_CUDA_HDIM_32 1
#define FAL_CUDA_HDIM_64 1
#define FAL_CUDA_HDIM_96 1
#define FAL_CUDA_HDIM_128 1
#define FAL_CUDA_HDIM_192 1
#define FAL_CUDA_HDIM_256 1
#endif

constexpr int kTileDims[] = {32, 64, 96, 128, 192, 256};
// the FAL_CUDA_HDIM_* blocks here and below follow the one list (head_dims.h)
constexpr bool same_dims() {
  if (sizeof(kTileDims) != sizeof(kTcFwdHeadDims)) return false;
  for (size_t i = 0; i < sizeof(kTileDims) / sizeof(int); ++i)
    if (kTileDims[i] != kTcFwdHeadDims[i]) return false;
  return true;
}
static_assert(same_dims(), "dispatch.cu: kTileDims must equal FAL_CUDA_TC_FWD_HEAD_DIMS (head_dims.h)");
constexpr bool kBuilt[] = {
#ifdef FAL_CUDA_HDIM_32
    true,
#else
    false,
#endif
#ifdef FAL_CUDA_HDIM_64
    true,
#else
    false,
#endif
#ifdef FAL_CUDA_HDIM_96
    true,
#else
    false,
#endif
#ifdef FAL_CUDA_HDIM_128
    true,
#else
    false,
#endif
#ifdef FAL_CUDA_HDIM_192
    true,
#else
    false,
#endif
#ifdef FAL_CUDA_HDIM_256
    true,
#else
    false,
#endif
};

// Smallest built tile dim >= d (at most max_d), or 0.
int tile_dim(int d, int max_d) {
  for (int i = 0; i < 6; ++i)
    if (kTileDims[i] >= d && kTileDims[i] <= max_d && kBuilt[i]) return kTileDims[i];
  return 0;
}

// Forward variant 2 (attn_fwd_tc2.cuh) is the default for its head dims (FAL_CUDA_TC2_FWD_HEAD_DIMS)
// and a scale > 0 since the 2026-11-30 H200 run (all CUDA tests, sanitizers, 1.2-1.4x variant 1);
// FLASHATTN_LITE_CUDA_FWD=v1, read at each call, selects variant 1 (attn_fwd_tc.cuh), which also
// runs every other head dim. bench/gpu_check.sh runs the CUDA tests under both.
bool fwd_v1_requested() { return env_equals("FLASHATTN_LITE_CUDA_FWD", "v1"); }

template <typename T>
int run_fwd_tc2_dim(const FwdParams& p, cudaStream_t s) {
  if (fwd_v1_requested() || !(p.scale_log2 > 0.f)) return -1;
  switch (tile_dim(p.d, kMaxTcHeadDim)) {
#ifdef FAL_CUDA_HDIM_64
    case 64: return launch_fwd_tc2<T, 64>(p, s);
#endif
#ifdef FAL_CUDA_HDIM_128
    case 128: return launch_fwd_tc2<T, 128>(p, s);
#endif
    default: return -1;
  }
}
// fwd_block_m / fwd_block_n (the glue's split-KV heuristic) hold for both variants
static_assert(FwdTc2Config<64>::kBN == FwdTcConfig<64>::kBN && FwdTc2Config<128>::kBN == FwdTcConfig<128>::kBN &&
                  FwdTc2Config<64>::kBM == FwdTcConfig<64>::kBM && FwdTc2Config<128>::kBM == FwdTcConfig<128>::kBM,
              "dispatch.cu: variant 2's tiles must match variant 1's for the split-KV heuristic");
static_assert(sizeof(kTc2FwdHeadDims) == 2 * sizeof(int) && kTc2FwdHeadDims[0] == 64 && kTc2FwdHeadDims[1] == 128,
              "dispatch.cu: run_fwd_tc2_dim's cases must equal FAL_CUDA_TC2_FWD_HEAD_DIMS (head_dims.h)");

template <typename T>
int run_fwd_tc_dim(const FwdParams& p, cudaStream_t s) {
  const int v2 = run_fwd_tc2_dim<T>(p, s);
  if (v2 >= 0) return v2;
  switch (tile_dim(p.d, kMaxTcHeadDim)) {
#ifdef FAL_CUDA_HDIM_32
    case 32: return launch_fwd_tc<T, 32>(p, s);
#endif
#ifdef FAL_CUDA_HDIM_64
    case 64: return launch_fwd_tc<T, 64>(p, s);
#endif
#ifdef FAL_CUDA_HDIM_96
    case 96: return launch_fwd_tc<T, 96>(p, s);
#endif
#ifdef FAL_CUDA_HDIM_128
    case 128: return launch_fwd_tc<T, 128>(p, s);
#endif
#ifdef FAL_CUDA_HDIM_192
    case 192: return launch_fwd_tc<T, 192>(p, s);
#endif
#ifdef FAL_CUDA_HDIM_256
    case 256: return launch_fwd_tc<T, 256>(p, s);
#endif
    default: return int(cudaErrorInvalidValue);
  }
}

// Backward variant 2 (attn_bwd_tc2.cuh) is the default for its head dims (FAL_CUDA_TC2_BWD_HEAD_DIMS)
// since the 2026-11-30 H200 run (all CUDA tests, sanitizers, fwd+bwd 1.27-1.53x variant 1);
// FLASHATTN_LITE_CUDA_BWD=v1, read at each call, selects variant 1 (attn_bwd_tc.cuh), which also runs
// the other head dims. Returns -1 when variant 2 does not run.
bool bwd_v1_requested() { return env_equals("FLASHATTN_LITE_CUDA_BWD", "v1"); }

template <typename T>
int run_bwd_tc2_dim(const BwdParams& p, cudaStream_t s) {
  if (bwd_v1_requested()) return -1;
  switch (tile_dim(p.d, kMaxTcBwdHeadDim)) {
#ifdef FAL_CUDA_HDIM_64
    case 64: return launch_bwd_tc2<T, 64>(p, s);
#endif
#ifdef FAL_CUDA_HDIM_128
    case 128: return launch_bwd_tc2<T, 128>(p, s);
#endif
    default: return -1;
  }
}
static_assert(sizeof(kTc2BwdHeadDims) == 2 * sizeof(int) && kTc2BwdHeadDims[0] == 64 && kTc2BwdHeadDims[1] == 128,
              "dispatch.cu: run_bwd_tc2_dim's cases must equal FAL_CUDA_TC2_BWD_HEAD_DIMS (head_dims.h)");

template <typename T>
int run_bwd_tc_dim(const BwdParams& p, cudaStream_t s) {
  const int v2 = run_bwd_tc2_dim<T>(p, s);
  if (v2 >= 0) return v2;
  switch (tile_dim(p.d, kMaxTcBwdHeadDim)) {
#ifdef FAL_CUDA_HDIM_32
    case 32: return launch_bwd_tc<T, 32>(p, s);
#endif
#ifdef FAL_CUDA_HDIM_64
    case 64: return launch_bwd_tc<T, 64>(p, s);
#endif
#ifdef FAL_CUDA_HDIM_96
    case 96: return launch_bwd_tc<T, 96>(p, s);
#endif
#ifdef FAL_CUDA_HDIM_128
    case 128: return launch_bwd_tc<T, 128>(p, s);
#endif
    default: return int(cudaErrorInvalidValue);
  }
}
}  // namespace

namespace {
bool tc2_shape(const FwdParams& p, int max_d) {
  if (!(p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16) || p.d != p.d_v || p.d % 8 != 0) return false;
  const int td = tile_dim(p.d, max_d);
  return td == 64 || td == 128;
}
}  // namespace

namespace {
// The params' layout features that only the feature SIMT kernels read (see needs_feature_kernels).
bool layout_features(const FwdParams& p) {
  return p.mask != nullptr || p.dropout_p > 0.f || p.cu_seqlens_q != nullptr || p.cu_seqlens_k != nullptr ||
         p.seqused_k != nullptr || p.leftpad_k != nullptr || p.kv_batch_idx != nullptr || p.block_table != nullptr;
}
bool score_mods(const FwdParams& p) { return p.softcap > 0.0 || p.alibi_slopes != nullptr; }
}  // namespace
bool score_mods_supported(const FwdParams& p) {
  return tc2_shape(p, kMaxTcHeadDim) && !fwd_v1_requested() && p.scale_log2 > 0.f;
}
bool score_mods_supported(const BwdParams& p) {
  return tc2_shape(p, kMaxTcBwdHeadDim) && !bwd_v1_requested() && !p.deterministic;
}

bool needs_feature_kernels(const FwdParams& p) {
  return layout_features(p) || (score_mods(p) && !score_mods_supported(p));
}
bool needs_feature_kernels(const BwdParams& p) {
  return layout_features(p) || (score_mods(p) && !score_mods_supported(p));
}
bool bwd_uses_tensor_cores(const BwdParams& p) {
  return (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16) && p.d == p.d_v && p.d % 8 == 0 &&
         tile_dim(p.d, kMaxTcBwdHeadDim) != 0 && !p.deterministic && !needs_feature_kernels(p);
}

int fwd_block_m(int d) {
  return d <= 64 ? FwdTcConfig<64>::kBM : d <= 128 ? FwdTcConfig<128>::kBM : FwdTcConfig<256>::kBM;
}
int fwd_block_n(int d) {
  return d <= 64 ? FwdTcConfig<64>::kBN : d <= 128 ? FwdTcConfig<128>::kBN : FwdTcConfig<256>::kBN;
}

bool fwd_uses_tensor_cores(const FwdParams& p) {
  return (p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16) && p.d == p.d_v && p.d % 8 == 0 &&
         tile_dim(p.d, kMaxTcHeadDim) != 0 && !needs_feature_kernels(p);
}

namespace {
// f(T{}) for the CUDA element type of dtype (the SIMT kernels take every dtype).
template <typename F>
int by_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat64: return f(double{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
  }
  return int(cudaErrorInvalidValue);
}
}  // namespace

int run_fwd(const FwdParams& p, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool feat = needs_feature_kernels(p);
  if (!feat && fwd_uses_tensor_cores(p))
    return p.dtype == DType::kFloat16 ? run_fwd_tc_dim<__half>(p, s) : run_fwd_tc_dim<__nv_bfloat16>(p, s);
  return by_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    return feat ? launch_fwd_simt_feat<T>(p, s) : launch_fwd_simt<T>(p, s);
  });
}

int run_bwd(const BwdParams& p, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool feat = needs_feature_kernels(p);
  if (!feat && bwd_uses_tensor_cores(p))
    return p.dtype == DType::kFloat16 ? run_bwd_tc_dim<__half>(p, s) : run_bwd_tc_dim<__nv_bfloat16>(p, s);
  return by_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    return feat ? launch_bwd_simt_feat<T>(p, s) : launch_bwd_simt<T>(p, s);
  });
}

const char* error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

}  // namespace fal::cuda
