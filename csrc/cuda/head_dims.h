// head_dims.h -- the head dims with tensor-core kernels: the one list. CMakeLists.txt
// (FLASHATTN_LITE_CUDA_HEADDIMS) and tools/generate_cuda_instantiations.py read the two macro
// lines below; dispatch.cu checks its tile table against them at compile time. A head dim between
// two entries runs on the next larger tile (zero-padded); above the last, on the SIMT kernels.
#pragma once

#define FAL_CUDA_TC_FWD_HEAD_DIMS 32, 64, 96, 128, 192, 256
#define FAL_CUDA_TC_BWD_HEAD_DIMS 32, 64, 96, 128
// forward variant 2 (attn_fwd_tc2.cuh, the default at these dims): a subset of the forward list
#define FAL_CUDA_TC2_FWD_HEAD_DIMS 64, 128
// backward variant 2 (attn_bwd_tc2.cuh, the default at these dims): a subset of the backward list
#define FAL_CUDA_TC2_BWD_HEAD_DIMS 64, 128

namespace fal::cuda {
constexpr int kTcFwdHeadDims[] = {FAL_CUDA_TC_FWD_HEAD_DIMS};
constexpr int kTcBwdHeadDims[] = {FAL_CUDA_TC_BWD_HEAD_DIMS};
constexpr int kTc2FwdHeadDims[] = {FAL_CUDA_TC2_FWD_HEAD_DIMS};
constexpr int kTc2BwdHeadDims[] = {FAL_CUDA_TC2_BWD_HEAD_DIMS};
}  // namespace fal::cuda
