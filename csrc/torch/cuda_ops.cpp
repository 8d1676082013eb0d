// cuda_ops.cpp -- CUDA implementations of the flashattn_lite ops: device guard, current stream,
// tensor-core layout preparation, CUDA errors -> Python exceptions. Kernels: csrc/cuda.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "cuda/launch.h"
#include "torch/attn_glue.h"

namespace fal::glue {
namespace {

constexpr const char* kPre = "flashattn_lite: ";

void check_launch(int err, const char* what) {
  TORCH_CHECK(err == 0, kPre, "CUDA ", what, " kernel failed: ", fal::cuda::error_string(err));
}

template <typename P>
void check_grid_limits(const P& p) {
  TORCH_CHECK_VALUE(p.b <= 65535 && p.h <= 65535, kPre, "on CUDA, batch (", p.b, ") and heads (", p.h,
                    ") must each be <= 65535");
}

// Split-KV count: with num_splits = 0, split the keys when the (batch, head, query tile) blocks
// alone cannot fill the GPU twice over (decode), keeping >= 2 key tiles per split.
int choose_num_splits(const FwdParams& p) {
  if (!fal::cuda::fwd_uses_tensor_cores(p)) return 1;
  const int64_t n_k_tiles = (p.s_k + fal::cuda::fwd_block_n(p.d) - 1) / fal::cuda::fwd_block_n(p.d);
  if (p.num_splits > 0) return int(std::max<int64_t>(1, std::min<int64_t>(p.num_splits, n_k_tiles)));
  const int64_t blocks = int64_t(p.b) * p.h * ((p.s_q + fal::cuda::fwd_block_m(p.d) - 1) / fal::cuda::fwd_block_m(p.d));
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  if (blocks >= sms || n_k_tiles < 4) return 1;
  return int(std::min<int64_t>({(2 * sms + blocks - 1) / blocks, n_k_tiles / 2, 128}));
}

void run_fwd_cuda(FwdParams& p, const at::Tensor& q) {
  check_grid_limits(p);
  p.num_splits = choose_num_splits(p);
  const auto accum = alloc_split_accum(p, q);  // alive until the kernels are done
  check_launch(fal::cuda::run_fwd(p, at::cuda::getCurrentCUDAStream().stream()), "forward");
}

void run_bwd_cuda(BwdParams& p, const at::Tensor& q) {
  check_grid_limits(p);
  // D_i = rowsum(dO o O) - dlse_i, written by the first backward pass; strides of lse.
  auto dsum = at::empty({p.b, p.h, p.s_q}, q.options().dtype(lse_dtype(q.scalar_type())));
  p.dsum = dsum.data_ptr();
  at::Tensor dq_accum;
  if (fal::cuda::bwd_uses_tensor_cores(p)) {  // fp32 dQ accumulator (atomics), b x s_q x h x d
    dq_accum = at::zeros({p.b, p.s_q, p.h, p.d}, q.options().dtype(at::kFloat));
    p.dq_accum = dq_accum.data_ptr<float>();
  }
  check_launch(fal::cuda::run_bwd(p, at::cuda::getCurrentCUDAStream().stream()), "backward");
}

// The tensor-core kernels read 16-byte chunks: last dim padded with zeros to a multiple of 8,
// strides multiples of 8 elements, 16-byte aligned base pointer.
at::Tensor tensor_core_ready(const at::Tensor& t, int64_t d8) {
  at::Tensor r = t;
  if (r.size(-1) != d8) r = at::constant_pad_nd(r, {0, d8 - r.size(-1)}, 0);
  bool ok = reinterpret_cast<uintptr_t>(r.data_ptr()) % 16 == 0 && r.stride(3) == 1;
  for (int i = 0; i < 3; ++i) ok = ok && r.stride(i) % 8 == 0;
  return ok ? r : r.clone(at::MemoryFormat::Contiguous);
}

std::tuple<at::Tensor, at::Tensor> fwd_cuda(FAL_FWD_ARGS) {
  const c10::cuda::CUDAGuard guard(q.device());
  const OptArgs a = make_fwd_opt_args(FAL_FWD_FORWARD_ARGS);
  const at::Tensor qc = last_dim_contiguous(q), kc = last_dim_contiguous(k), vc = last_dim_contiguous(v);
  std::vector<at::Tensor> keep;
  FwdParams probe = make_fwd_params(qc, kc, vc, a, keep);                          // validates the caller's tensors
  if (q.size(-1) == v.size(-1)) probe.d = probe.d_v = int((probe.d + 7) / 8 * 8);  // as the kernels will see it
  check_grid_limits(probe);
  if (!fal::cuda::fwd_uses_tensor_cores(probe) || q.size(-1) != v.size(-1) || qc.numel() == 0 || kc.numel() == 0)
    return fwd_impl(run_fwd_cuda, qc, kc, vc, a);
  const int64_t d = q.size(3), d8 = probe.d;
  at::Tensor qp = tensor_core_ready(qc, d8), kp = tensor_core_ready(kc, d8), vp = tensor_core_ready(vc, d8);
  // Decode with GQA: one query row per head and every key visible -> pack the g query heads that
  // share a kv head as g rows of one sequence (a strided view), so each K/V tile is read once per
  // kv head instead of once per query head.
  const int64_t b = q.size(0), h = q.size(2), h_kv = k.size(2), g = h / h_kv;
  const bool all_visible = a.window_left < 0 && a.window_right < 0 && (!a.causal || a.bottom_right);
  const bool alibi = a.alibi_slopes.has_value() && a.alibi_slopes->defined();  // per query head and row
  if (q.size(1) == 1 && g > 1 && all_visible && !alibi) {
    const at::Tensor qg = qp.as_strided({b, g, h_kv, d8}, {qp.stride(0), qp.stride(2), g * qp.stride(2), 1});
    OptArgs ag = a;
    ag.causal = false;
    auto [og, lg] = fwd_impl(run_fwd_cuda, qg, kp, vp, ag);  // og (b, g, h_kv, d8), lg (b, h_kv, g)
    at::Tensor out = og.transpose(1, 2).reshape({b, 1, h, d8});
    if (d8 != d) out = out.narrow(-1, 0, d);
    return {out.contiguous(), lg.reshape({b, h, 1})};
  }
  auto [out, lse] = fwd_impl(run_fwd_cuda, qp, kp, vp, a);
  if (d8 != d) out = out.narrow(-1, 0, d).contiguous();
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_cuda(FAL_BWD_ARGS) {
  const c10::cuda::CUDAGuard guard(q.device());
  const OptArgs a = make_bwd_opt_args(FAL_BWD_FORWARD_ARGS);
  const at::Tensor qc = last_dim_contiguous(q), kc = last_dim_contiguous(k), vc = last_dim_contiguous(v);
  BwdParams probe;
  std::vector<at::Tensor> keep;
  static_cast<FwdParams&>(probe) = make_fwd_params(qc, kc, vc, a, keep);           // validates the caller's tensors
  if (q.size(-1) == v.size(-1)) probe.d = probe.d_v = int((probe.d + 7) / 8 * 8);  // as the kernels will see it
  probe.deterministic = deterministic;
  check_grid_limits(probe);
  if (!fal::cuda::bwd_uses_tensor_cores(probe) || q.size(-1) != v.size(-1) || qc.numel() == 0 || kc.numel() == 0)
    return bwd_impl(run_bwd_cuda, dout, dlse, qc, kc, vc, out, softmax_lse, a, deterministic, mask_grad);
  const int64_t d = q.size(3), d8 = probe.d;
  TORCH_CHECK_VALUE(out.dim() == 4 && dout.dim() == 4 && out.size(-1) == d && dout.size(-1) == d, kPre,
                    "out and dout must have shape (batch, seqlen_q, heads, head_dim) like q");
  auto [dq, dk, dv, dmask] =
      bwd_impl(run_bwd_cuda, tensor_core_ready(last_dim_contiguous(dout), d8), dlse, tensor_core_ready(qc, d8),
               tensor_core_ready(kc, d8), tensor_core_ready(vc, d8), tensor_core_ready(last_dim_contiguous(out), d8),
               softmax_lse, a, deterministic, mask_grad);
  if (d8 != d) {
    dq = dq.narrow(-1, 0, d).contiguous();
    dk = dk.narrow(-1, 0, d).contiguous();
    dv = dv.narrow(-1, 0, d).contiguous();
  }
  return {dq, dk, dv, dmask};
}

// flash_attn_with_kvcache on CUDA: the same glue as the CPU (kvcache_glue.cpp), the kernels of
// run_fwd_cuda (the KV-cache fields take the feature SIMT kernels: opt-in, see check_cuda_features).
std::tuple<at::Tensor, at::Tensor> fwd_kvcache_cuda(const at::Tensor& q, const at::Tensor& k_cache,
                                                    const at::Tensor& v_cache, const at::Tensor& cache_seqlens,
                                                    const OptT& cache_batch_idx, const OptT& cache_leftpad,
                                                    const OptT& block_table, const OptT& alibi_slopes,
                                                    double softmax_scale, bool causal, int64_t window_left,
                                                    int64_t window_right, double softcap, int64_t num_splits) {
  const c10::cuda::CUDAGuard guard(q.device());
  return fwd_kvcache_impl(run_fwd_cuda, q, k_cache, v_cache, cache_seqlens, cache_batch_idx, cache_leftpad, block_table,
                          alibi_slopes, softmax_scale, causal, window_left, window_right, softcap, num_splits);
}

at::Tensor dropout_keep_cuda(const at::Tensor& rng_state, int64_t batch, int64_t heads, int64_t s_q, int64_t s_k,
                             double dropout_p) {
  TORCH_CHECK_VALUE(batch >= 0 && heads >= 0 && s_q >= 0 && s_k >= 0, kPre, "dropout_keep sizes must be >= 0");
  TORCH_CHECK_VALUE(dropout_p > 0 && dropout_p < 1, kPre, "dropout_p must be in (0, 1), got ", dropout_p);
  const c10::cuda::CUDAGuard guard(rng_state.device());
  FwdParams p;
  p.h = int(heads);
  set_dropout_params(p, dropout_p, rng_state);
  p.dropout_p = float(dropout_p);
  auto keep = at::empty({batch, heads, s_q, s_k}, rng_state.options().dtype(at::kBool));
  if (keep.numel() == 0) return keep;
  check_launch(fal::cuda::run_dropout_keep(p, int(batch), int(s_q), int(s_k),
                                           reinterpret_cast<unsigned char*>(keep.data_ptr<bool>()),
                                           at::cuda::getCurrentCUDAStream().stream()),
               "dropout_keep");
  return keep;
}

}  // namespace
}  // namespace fal::glue

TORCH_LIBRARY_IMPL(flashattn_lite, CUDA, m) {
  m.impl("dropout_keep", &fal::glue::dropout_keep_cuda);
  m.impl("fwd", &fal::glue::fwd_cuda);
  m.impl("bwd", &fal::glue::bwd_cuda);
  m.impl("fwd_kvcache", &fal::glue::fwd_kvcache_cuda);
}
