// launch.h -- the CUDA kernels' entry points as seen by the torch glue. Torch-free and
// CUDA-header-free: the stream travels as void* and errors as cudaError_t values (int).
#pragma once
#include "flashattn_lite/params.h"

namespace fal::cuda {

// Largest head dim of the tensor-core kernels (padded internally to 32, 64, 96, 128, 192, 256).
constexpr int kMaxTcHeadDim = 256;

// True when the tensor-core forward takes these params (fp16/bf16, d == d_v, d % 8 == 0,
// d <= 256); otherwise the SIMT kernels run.
bool fwd_uses_tensor_cores(const FwdParams& p);

// True when the tensor-core backward takes these params (fp16/bf16, d == d_v, d % 8 == 0,
// d <= 128, not deterministic); otherwise the atomic-free SIMT backward runs.
constexpr int kMaxTcBwdHeadDim = 128;
bool bwd_uses_tensor_cores(const BwdParams& p);

// True when the kernels implement these params' score transforms (softcap, ALiBi): the variant-2
// tensor-core kernels at head dims 64 / 128 (fp16 / bf16, d == d_v, d % 8 == 0, scale > 0, the
// variant not overridden by FLASHATTN_LITE_CUDA_FWD / _BWD = v1; the backward not deterministic).
bool score_mods_supported(const FwdParams& p);
bool score_mods_supported(const BwdParams& p);

// True when the params use a feature that only the feature SIMT kernels (attn_simt_feat.cuh)
// implement: attn_mask, dropout, varlen (cu_seqlens), seqused_k, cache_leftpad, cache_batch_idx,
// block_table, or softcap / ALiBi where score_mods_supported is false. The tensor-core kernels
// never take such params (fwd_ / bwd_uses_tensor_cores are false for them).
bool needs_feature_kernels(const FwdParams& p);
bool needs_feature_kernels(const BwdParams& p);

// Query rows and key columns per block of the tensor-core forward for padded head dim d (for the
// split-KV heuristic of the glue).
int fwd_block_m(int d);
int fwd_block_n(int d);

// Split-KV: p.num_splits > 1 needs p.o_accum / p.lse_accum (see params.h); tensor-core path only.
int run_fwd(const FwdParams& p, void* stream);
// Needs p.dsum: b x h x s_q in the lse dtype (scratch, written by the first pass), and for the
// tensor-core path p.dq_accum: fp32 zeros, b x s_q x h x d.
int run_bwd(const BwdParams& p, void* stream);

// The dropout keep pattern (batch x p.h x s_q x s_k bytes, 1 = keep) from p's dropout fields,
// the same bits as the CPU (Dropout in attn_math.h).
int run_dropout_keep(const FwdParams& p, int batch, int s_q, int s_k, unsigned char* out, void* stream);

const char* error_string(int err);

// True when the environment variable `name` is set to `value` (read at each call): the switches
// FLASHATTN_LITE_CUDA_FWD / _BWD.
bool env_equals(const char* name, const char* value);

}  // namespace fal::cuda
