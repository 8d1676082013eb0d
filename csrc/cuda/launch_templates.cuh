// launch_templates.cuh -- declarations of the launchers that the generated inst_*.cu files
// instantiate (one instantiation per file, so the build parallelises).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "flashattn_lite/params.h"

namespace fal::cuda {
template <typename T, int D>
int launch_fwd_tc(const FwdParams& p, cudaStream_t stream);
template <typename T, int D>
int launch_fwd_tc2(const FwdParams& p, cudaStream_t stream);
template <typename T, int D>
int launch_bwd_tc2(const BwdParams& p, cudaStream_t stream);
template <typename T, int D>
int launch_bwd_tc(const BwdParams& p, cudaStream_t stream);
template <typename T>
int launch_fwd_simt(const FwdParams& p, cudaStream_t stream);
template <typename T>
int launch_bwd_simt(const BwdParams& p, cudaStream_t stream);
template <typename T>
int launch_fwd_simt_feat(const FwdParams& p, cudaStream_t stream);
template <typename T>
int launch_bwd_simt_feat(const BwdParams& p, cudaStream_t stream);
}  // namespace fal::cuda
