// attn_glue.cpp -- validation and params construction shared by the CPU and CUDA ops.
#include "torch/attn_glue.h"

#include <cmath>
#include <limits>

namespace fal::glue {
namespace {

constexpr const char* kPre = "flashattn_lite: ";

DType to_dtype(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default: TORCH_CHECK_TYPE(false, kPre, "unsupported dtype ", st);
  }
  return DType::kFloat32;
}

void check_float_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), kPre, name, " must be a tensor, got an undefined tensor");
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf,
                   kPre, name, " must have dtype float32, float64, bfloat16 or float16, got ", st);
}

void check_same(const at::Tensor& t, const char* name, const at::Tensor& q, bool same_dtype = true) {
  TORCH_CHECK_VALUE(t.device() == q.device(), kPre, name, " must be on the same device as q (",
                    q.device(), "), got ", t.device());
  if (same_dtype)
    TORCH_CHECK_TYPE(t.scalar_type() == q.scalar_type(), kPre, name, " must have the same dtype as q (",
                     q.scalar_type(), "), got ", t.scalar_type());
}

void check_rank(const at::Tensor& t, const char* name, int64_t rank, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == rank, kPre, name, " must have ", rank, " dims ", layout, ", got shape ",
                    t.sizes());
}

void check_not_implemented(const c10::optional<at::Tensor>& t, const char* name) {
  TORCH_CHECK_NOT_IMPLEMENTED(!t.has_value() || !t->defined(), kPre, name,
                              " is not implemented yet (tracked by the features issue)");
}

void check_int_range(int64_t v, const char* name) {
  TORCH_CHECK_VALUE(v < std::numeric_limits<int32_t>::max(), kPre, name, " = ", v,
                    " is too large (must be < 2^31)");
}

}  // namespace

at::ScalarType lse_dtype(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor last_dim_contiguous(const at::Tensor& t) {
  if (!t.defined() || t.dim() == 0 || t.stride(-1) == 1 || t.size(-1) <= 1) return t;
  return t.contiguous();
}

FwdParams make_fwd_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const OptArgs& a) {
  check_float_tensor(q, "q");
  check_float_tensor(k, "k");
  check_float_tensor(v, "v");
  check_same(k, "k", q);
  check_same(v, "v", q);
  check_not_implemented(a.cu_seqlens_q, "cu_seqlens_q (varlen)");
  check_not_implemented(a.cu_seqlens_k, "cu_seqlens_k (varlen)");
  check_not_implemented(a.seqused_k, "seqused_k");
  check_not_implemented(a.block_table, "block_table (paged KV cache)");
  check_not_implemented(a.attn_mask, "attn_mask");
  check_not_implemented(a.alibi_slopes, "alibi_slopes");
  check_rank(q, "q", 4, "(batch, seqlen_q, heads, head_dim)");
  check_rank(k, "k", 4, "(batch, seqlen_k, heads_kv, head_dim)");
  check_rank(v, "v", 4, "(batch, seqlen_k, heads_kv, head_dim_v)");

  const int64_t b = q.size(0), s_q = q.size(1), h = q.size(2), d = q.size(3);
  const int64_t s_k = k.size(1), h_kv = k.size(2), d_v = v.size(3);
  TORCH_CHECK_VALUE(k.size(0) == b && v.size(0) == b, kPre, "k and v must have the batch size of q (", b,
                    "), got k ", k.sizes(), " and v ", v.sizes());
  TORCH_CHECK_VALUE(v.size(1) == s_k, kPre, "v must have the seqlen of k (", s_k, "), got ", v.size(1));
  TORCH_CHECK_VALUE(v.size(2) == h_kv, kPre, "v must have the heads of k (", h_kv, "), got ", v.size(2));
  TORCH_CHECK_VALUE(k.size(3) == d, kPre, "k must have the head_dim of q (", d, "), got ", k.size(3));
  TORCH_CHECK_VALUE(h_kv >= 1 && h >= 1 && h % h_kv == 0, kPre,
                    "the number of heads of q (", h, ") must be a multiple of the heads of k/v (", h_kv, ")");
  TORCH_CHECK_VALUE(d >= 1, kPre, "head_dim of q/k must be >= 1, got ", d);
  TORCH_CHECK_VALUE(d_v >= 1, kPre, "head_dim of v must be >= 1, got ", d_v);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{q, "q"}, {k, "k"}, {v, "v"}})
    TORCH_CHECK_VALUE(t.numel() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, kPre, name,
                      " must have a contiguous last dim (stride 1), got strides ", t.strides());
  check_int_range(s_q, "seqlen_q");
  check_int_range(s_k, "seqlen_k");
  check_int_range(b * h, "batch * heads");

  TORCH_CHECK_VALUE(std::isfinite(a.softmax_scale), kPre, "softmax_scale must be finite, got ", a.softmax_scale);
  TORCH_CHECK_VALUE(a.window_left >= -1 && a.window_right >= -1, kPre,
                    "window_size must be (left, right) with each >= -1 (-1 = unbounded), got (",
                    a.window_left, ", ", a.window_right, ")");
  check_int_range(a.window_left, "window_size[0]");
  check_int_range(a.window_right, "window_size[1]");
  TORCH_CHECK_VALUE(std::isfinite(a.softcap) && a.softcap >= 0, kPre, "softcap must be >= 0 and finite, got ",
                    a.softcap);
  TORCH_CHECK_NOT_IMPLEMENTED(a.softcap == 0, kPre, "softcap > 0 is not implemented yet (features issue)");
  TORCH_CHECK_VALUE(a.dropout_p >= 0 && a.dropout_p < 1, kPre, "dropout_p must be in [0, 1), got ", a.dropout_p);
  TORCH_CHECK_NOT_IMPLEMENTED(a.dropout_p == 0, kPre, "dropout_p > 0 is not implemented yet (features issue)");
  TORCH_CHECK_VALUE(a.num_splits >= 0, kPre, "num_splits must be >= 0, got ", a.num_splits);

  FwdParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.q_batch_stride = q.stride(0); p.q_row_stride = q.stride(1); p.q_head_stride = q.stride(2);
  p.k_batch_stride = k.stride(0); p.k_row_stride = k.stride(1); p.k_head_stride = k.stride(2);
  p.v_batch_stride = v.stride(0); p.v_row_stride = v.stride(1); p.v_head_stride = v.stride(2);
  p.b = int(b); p.h = int(h); p.h_kv = int(h_kv);
  p.s_q = int(s_q); p.s_k = int(s_k);
  p.d = int(d); p.d_v = int(d_v);
  p.dtype = to_dtype(q.scalar_type());
  p.scale = a.softmax_scale;
  p.scale_log2 = float(a.softmax_scale * M_LOG2E);
  p.causal = a.causal;
  p.bottom_right = a.bottom_right;
  p.window_left = int(a.window_left);
  p.window_right = int(a.window_right);
  p.softcap = float(a.softcap);
  p.dropout_p = float(a.dropout_p);
  p.num_splits = int(a.num_splits);  // 0 = the device chooses
  return p;
}

std::tuple<at::Tensor, at::Tensor> alloc_fwd_outputs(const at::Tensor& q, const at::Tensor& v) {
  auto out = at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options());
  auto lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(lse_dtype(q.scalar_type())));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> alloc_split_accum(FwdParams& p, const at::Tensor& q) {
  if (p.num_splits <= 1) return {};
  const auto f32 = q.options().dtype(at::kFloat);
  auto o_accum = at::empty({p.num_splits, p.b, p.h, p.s_q, p.d_v}, f32);
  auto lse_accum = at::empty({p.num_splits, p.b, p.h, p.s_q}, f32);
  p.o_accum = o_accum.data_ptr<float>();
  p.lse_accum = lse_accum.data_ptr<float>();
  return {o_accum, lse_accum};
}

void set_fwd_outputs(FwdParams& p, const at::Tensor& out, const at::Tensor& lse) {
  p.o = out.data_ptr();
  p.o_batch_stride = out.stride(0); p.o_row_stride = out.stride(1); p.o_head_stride = out.stride(2);
  p.lse = lse.data_ptr();
  p.lse_batch_stride = lse.stride(0); p.lse_head_stride = lse.stride(1);
}

BwdParams make_bwd_params(const FwdParams& fp, const at::Tensor& dout,
                          const c10::optional<at::Tensor>& dlse, const at::Tensor& out,
                          const at::Tensor& lse, const at::Tensor& dq, const at::Tensor& dk,
                          const at::Tensor& dv, bool deterministic) {
  const std::vector<int64_t> out_shape{fp.b, fp.s_q, fp.h, fp.d_v};
  const std::vector<int64_t> lse_shape{fp.b, fp.h, fp.s_q};
  check_float_tensor(dout, "dout");
  check_float_tensor(out, "out");
  check_same(dout, "dout", dq);
  check_same(out, "out", dq);
  TORCH_CHECK_VALUE(out.sizes() == at::IntArrayRef(out_shape), kPre, "out must have shape ", out_shape,
                    ", got ", out.sizes());
  TORCH_CHECK_VALUE(dout.sizes() == at::IntArrayRef(out_shape), kPre, "dout must have shape ", out_shape,
                    ", got ", dout.sizes());
  TORCH_CHECK_VALUE(dout.numel() == 0 || (dout.stride(-1) == 1 && out.stride(-1) == 1), kPre,
                    "dout and out must have a contiguous last dim");
  const auto lse_st = lse_dtype(dq.scalar_type());
  TORCH_CHECK_TYPE(lse.scalar_type() == lse_st, kPre, "softmax_lse must be ", lse_st, ", got ", lse.scalar_type());
  TORCH_CHECK_VALUE(lse.device() == dq.device(), kPre, "softmax_lse must be on the device of q");
  TORCH_CHECK_VALUE(lse.sizes() == at::IntArrayRef(lse_shape), kPre, "softmax_lse must have shape ", lse_shape,
                    ", got ", lse.sizes());
  TORCH_CHECK_VALUE(lse.stride(-1) == 1 || fp.s_q <= 1, kPre, "softmax_lse must have a contiguous last dim");

  BwdParams p;
  static_cast<FwdParams&>(p) = fp;
  p.o = const_cast<void*>(out.data_ptr());
  p.o_batch_stride = out.stride(0); p.o_row_stride = out.stride(1); p.o_head_stride = out.stride(2);
  p.lse = const_cast<void*>(lse.data_ptr());
  p.lse_batch_stride = lse.stride(0); p.lse_head_stride = lse.stride(1);
  p.dout = dout.data_ptr();
  p.do_batch_stride = dout.stride(0); p.do_row_stride = dout.stride(1); p.do_head_stride = dout.stride(2);
  if (dlse.has_value() && dlse->defined()) {
    const auto& g = *dlse;
    TORCH_CHECK_TYPE(g.scalar_type() == lse_st, kPre, "dlse must be ", lse_st, ", got ", g.scalar_type());
    TORCH_CHECK_VALUE(g.device() == dq.device(), kPre, "dlse must be on the device of q");
    TORCH_CHECK_VALUE(g.sizes() == at::IntArrayRef(lse_shape), kPre, "dlse must have shape ", lse_shape,
                      ", got ", g.sizes());
    TORCH_CHECK_VALUE(g.stride(-1) == 1 || fp.s_q <= 1, kPre, "dlse must have a contiguous last dim");
    p.dlse = g.data_ptr();
    p.dlse_batch_stride = g.stride(0); p.dlse_head_stride = g.stride(1);
  }
  p.dq = dq.data_ptr();
  p.dq_batch_stride = dq.stride(0); p.dq_row_stride = dq.stride(1); p.dq_head_stride = dq.stride(2);
  p.dk = dk.data_ptr();
  p.dk_batch_stride = dk.stride(0); p.dk_row_stride = dk.stride(1); p.dk_head_stride = dk.stride(2);
  p.dv = dv.data_ptr();
  p.dv_batch_stride = dv.stride(0); p.dv_row_stride = dv.stride(1); p.dv_head_stride = dv.stride(2);
  p.deterministic = deterministic;
  return p;
}

}  // namespace fal::glue

namespace fal::glue {

OptArgs make_fwd_opt_args(FAL_FWD_ARGS) {
  (void)q; (void)k; (void)v; (void)deterministic;
  OptArgs a;
  a.attn_mask = attn_mask; a.alibi_slopes = alibi_slopes;
  a.cu_seqlens_q = cu_seqlens_q; a.cu_seqlens_k = cu_seqlens_k; a.seqused_k = seqused_k;
  a.block_table = block_table; a.rng_state = rng_state;
  a.max_seqlen_q = max_seqlen_q; a.max_seqlen_k = max_seqlen_k;
  a.softmax_scale = softmax_scale; a.causal = causal; a.bottom_right = bottom_right;
  a.window_left = window_left; a.window_right = window_right;
  a.softcap = softcap; a.dropout_p = dropout_p; a.num_splits = num_splits;
  return a;
}

OptArgs make_bwd_opt_args(FAL_BWD_ARGS) {
  (void)dout; (void)dlse; (void)out; (void)softmax_lse;
  return make_fwd_opt_args(q, k, v, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, seqused_k,
                           c10::nullopt, rng_state, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                           bottom_right, window_left, window_right, softcap, dropout_p, 1, deterministic);
}

std::tuple<at::Tensor, at::Tensor> fwd_impl(FwdRunner run, const at::Tensor& q_in, const at::Tensor& k_in,
                                            const at::Tensor& v_in, const OptArgs& a) {
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in), v = last_dim_contiguous(v_in);
  FwdParams p = make_fwd_params(q, k, v, a);
  auto [out, lse] = alloc_fwd_outputs(q, v);
  if (out.numel() == 0) return {out, lse};
  set_fwd_outputs(p, out, lse);
  run(p, q);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_impl(BwdRunner run, const at::Tensor& dout_in,
                                                        const OptT& dlse_in, const at::Tensor& q_in,
                                                        const at::Tensor& k_in, const at::Tensor& v_in,
                                                        const at::Tensor& out_in, const at::Tensor& lse_in,
                                                        const OptArgs& a, bool deterministic) {
  const at::Tensor lse = lse_in.contiguous();  // scratch buffers of the kernels share its strides
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in), v = last_dim_contiguous(v_in);
  FwdParams fp = make_fwd_params(q, k, v, a);
  auto dq = at::empty(q.sizes(), q.options());
  auto dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  const at::Tensor dout = last_dim_contiguous(dout_in), out = last_dim_contiguous(out_in);
  OptT dlse = dlse_in;
  if (dlse.has_value() && dlse->defined()) dlse = last_dim_contiguous(*dlse);
  BwdParams p = make_bwd_params(fp, dout, dlse, out, lse, dq, dk, dv, deterministic);
  if (dk.numel() > 0 && dq.numel() == 0) dk.zero_(), dv.zero_();
  if (dq.numel() == 0 || dk.numel() == 0) {
    dq.zero_();
    return {dq, dk, dv};
  }
  run(p, q);
  return {dq, dk, dv};
}

}  // namespace fal::glue
