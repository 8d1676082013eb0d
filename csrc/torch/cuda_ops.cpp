// cuda_ops.cpp -- CUDA implementations of the flashattn_lite ops: device guard, current stream,
// tensor-core layout preparation, CUDA errors -> Python exceptions. Kernels: csrc/cuda.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "cuda/launch.h"
#include "torch/attn_glue.h"

namespace fal::glue {
namespace {

constexpr const char* kPre = "flashattn_lite: ";

void check_launch(int err, const char* what) {
  TORCH_CHECK(err == 0, kPre, "CUDA ", what, " kernel failed: ", fal::cuda::error_string(err));
}

void check_grid_limits(const FwdParams& p) {
  TORCH_CHECK_VALUE(p.b <= 65535 && p.h <= 65535, kPre, "on CUDA, batch (", p.b, ") and heads (", p.h,
                    ") must each be <= 65535");
}

void run_fwd_cuda(const FwdParams& p) {
  check_grid_limits(p);
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
  FwdParams probe = make_fwd_params(qc, kc, vc, a);  // validates the caller's tensors
  check_grid_limits(probe);
  probe.d = probe.d_v = int((probe.d + 7) / 8 * 8);
  if (!fal::cuda::fwd_uses_tensor_cores(probe) || q.size(3) != v.size(3) || qc.numel() == 0 || kc.numel() == 0)
    return fwd_impl(run_fwd_cuda, qc, kc, vc, a);
  const int64_t d = q.size(3), d8 = probe.d;
  auto [out, lse] = fwd_impl(run_fwd_cuda, tensor_core_ready(qc, d8), tensor_core_ready(kc, d8),
                             tensor_core_ready(vc, d8), a);
  if (d8 != d) out = out.narrow(-1, 0, d).contiguous();
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_cuda(FAL_BWD_ARGS) {
  const c10::cuda::CUDAGuard guard(q.device());
  const OptArgs a = make_bwd_opt_args(FAL_BWD_FORWARD_ARGS);
  const at::Tensor qc = last_dim_contiguous(q), kc = last_dim_contiguous(k), vc = last_dim_contiguous(v);
  BwdParams probe;
  static_cast<FwdParams&>(probe) = make_fwd_params(qc, kc, vc, a);  // validates the caller's tensors
  check_grid_limits(probe);
  probe.d = probe.d_v = int((probe.d + 7) / 8 * 8);
  probe.deterministic = deterministic;
  if (!fal::cuda::bwd_uses_tensor_cores(probe) || q.size(3) != v.size(3) || qc.numel() == 0 || kc.numel() == 0)
    return bwd_impl(run_bwd_cuda, dout, dlse, qc, kc, vc, out, softmax_lse, a, deterministic);
  const int64_t d = q.size(3), d8 = probe.d;
  TORCH_CHECK_VALUE(out.dim() == 4 && dout.dim() == 4 && out.size(-1) == d && dout.size(-1) == d, kPre,
                    "out and dout must have shape (batch, seqlen_q, heads, head_dim) like q");
  auto [dq, dk, dv] = bwd_impl(run_bwd_cuda, tensor_core_ready(last_dim_contiguous(dout), d8), dlse,
                               tensor_core_ready(qc, d8), tensor_core_ready(kc, d8), tensor_core_ready(vc, d8),
                               tensor_core_ready(last_dim_contiguous(out), d8), softmax_lse, a, deterministic);
  if (d8 != d) {
    dq = dq.narrow(-1, 0, d).contiguous();
    dk = dk.narrow(-1, 0, d).contiguous();
    dv = dv.narrow(-1, 0, d).contiguous();
  }
  return {dq, dk, dv};
}

}  // namespace
}  // namespace fal::glue

TORCH_LIBRARY_IMPL(flashattn_lite, CUDA, m) {
  m.impl("fwd", &fal::glue::fwd_cuda);
  m.impl("bwd", &fal::glue::bwd_cuda);
}
