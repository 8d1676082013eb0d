// attn_glue.cpp -- validation and params construction shared by the CPU and CUDA ops.
#include "torch/attn_glue.h"

#include <cmath>
#include <limits>

#include "torch/glue_checks.h"

namespace fal::glue {
at::ScalarType lse_dtype(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor last_dim_contiguous(const at::Tensor& t) {
  if (!t.defined() || t.dim() == 0 || t.stride(-1) == 1 || t.size(-1) <= 1) return t;
  return t.contiguous();
}

void set_dropout_params(FwdParams& p, double dropout_p, const c10::optional<at::Tensor>& rng) {
  if (dropout_p == 0) return;
  TORCH_CHECK_VALUE(rng.has_value() && rng->defined(), kPre,
                    "rng_state (int64 [seed, offset]) is required when dropout_p > 0");
  const at::Tensor& r = *rng;
  TORCH_CHECK_TYPE(r.scalar_type() == at::kLong, kPre, "rng_state must be int64, got ", r.scalar_type());
  TORCH_CHECK_VALUE(r.numel() == 2, kPre, "rng_state must hold 2 values [seed, offset], got shape ", r.sizes());
  const at::Tensor h = r.to(at::kCPU).contiguous();
  p.seed = uint64_t(h.data_ptr<int64_t>()[0]);
  p.offset = uint64_t(h.data_ptr<int64_t>()[1]);
  p.dropout_threshold = uint32_t(std::lround(dropout_p * 16777216.0));
  p.dropout_keep_scale = 1.0 / (1.0 - dropout_p);
}

FwdParams make_fwd_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptArgs& a,
                          std::vector<at::Tensor>& keep) {
  const bool varlen = a.cu_seqlens_q.has_value() || a.cu_seqlens_k.has_value();
  TORCH_CHECK_VALUE(!varlen || (a.cu_seqlens_q.has_value() && a.cu_seqlens_k.has_value()), kPre,
                    "cu_seqlens_q and cu_seqlens_k must be given together");
  // varlen with a paged K/V (flash-attn's block_table): k/v (num_blocks, page_size, h_kv, d)
  const bool paged = a.block_table.has_value() && a.block_table->defined();
  TORCH_CHECK_VALUE(!paged || varlen, kPre,
                    "block_table needs cu_seqlens (flash_attn_varlen_func); or use flash_attn_with_kvcache");
  if (varlen) {
    check_rank(q, "q", 3, "(total_q, heads, head_dim) with cu_seqlens");
    if (paged) {
      check_rank(k, "k", 4, "(num_blocks, page_size, heads_kv, head_dim) with block_table");
      check_rank(v, "v", 4, "(num_blocks, page_size, heads_kv, head_dim_v) with block_table");
    } else {
      check_rank(k, "k", 3, "(total_k, heads_kv, head_dim) with cu_seqlens");
      check_rank(v, "v", 3, "(total_k, heads_kv, head_dim_v) with cu_seqlens");
    }
  } else {
    check_rank(q, "q", 4, "(batch, seqlen_q, heads, head_dim)");
    check_rank(k, "k", 4, "(batch, seqlen_k, heads_kv, head_dim)");
    check_rank(v, "v", 4, "(batch, seqlen_k, heads_kv, head_dim_v)");
  }
  // Views as (batch, seqlen, heads, dim); packed inputs are one "batch row" per token.
  const int o = varlen ? 1 : 0, ok = varlen && !paged ? 1 : 0;
  const int64_t s_q_all = q.size(1 - o), h = q.size(2 - o), d = q.size(3 - o);
  const int64_t s_k_all = k.size(1 - ok), h_kv = k.size(2 - ok), d_v = v.size(3 - ok);
  if (paged)
    TORCH_CHECK_VALUE(v.size(0) == k.size(0), kPre, "v must have the blocks of k (", k.size(0), "), got ", v.size(0));
  if (!varlen)
    TORCH_CHECK_VALUE(k.size(0) == q.size(0) && v.size(0) == q.size(0), kPre, "k and v must have the batch size of q (",
                      q.size(0), "), got k ", k.sizes(), " and v ", v.sizes());
  TORCH_CHECK_VALUE(v.size(1 - ok) == s_k_all, kPre, "v must have the ", varlen ? "tokens" : "seqlen", " of k (",
                    s_k_all, "), got ", v.size(1 - ok));
  TORCH_CHECK_VALUE(v.size(2 - ok) == h_kv, kPre, "v must have the heads of k (", h_kv, "), got ", v.size(2 - ok));
  TORCH_CHECK_VALUE(k.size(3 - ok) == d, kPre, "k must have the head_dim of q (", d, "), got ", k.size(3 - ok));
  check_qkv(q, k, v, "k", "v", h, h_kv, d, d_v);
  check_int_range(s_q_all, varlen ? "total_q" : "seqlen_q");
  check_int_range(s_k_all, varlen ? "total_k" : "seqlen_k");

  check_score_args(a.softmax_scale, a.window_left, a.window_right, a.softcap);
  TORCH_CHECK_VALUE(a.dropout_p >= 0 && a.dropout_p < 1, kPre, "dropout_p must be in [0, 1), got ", a.dropout_p);
  TORCH_CHECK_VALUE(a.num_splits >= 0, kPre, "num_splits must be >= 0, got ", a.num_splits);

  FwdParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  // (batch, row, head) strides; packed (varlen) q/k/v: batch stride 0; paged k/v: the page stride
  strides_of(q, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
  strides_of(k, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
  strides_of(v, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  int64_t b = varlen ? 0 : q.size(0), s_q = s_q_all, s_k = s_k_all;
  if (varlen) {
    const at::Tensor& cq = *a.cu_seqlens_q;
    const at::Tensor& ck = *a.cu_seqlens_k;
    TORCH_CHECK_VALUE(cq.dim() == 1 && cq.size(0) >= 1, kPre, "cu_seqlens_q must have shape (batch + 1,), got ",
                      cq.sizes());
    b = cq.size(0) - 1;
    check_cu_seqlens(cq, "cu_seqlens_q", q, b, s_q_all, a.max_seqlen_q, "max_seqlen_q");
    check_cu_seqlens(ck, "cu_seqlens_k", q, b, paged ? std::numeric_limits<int32_t>::max() : s_k_all, a.max_seqlen_k,
                     "max_seqlen_k");
    s_q = a.max_seqlen_q;
    s_k = a.max_seqlen_k;
    check_int_range(s_q, "max_seqlen_q");
    check_int_range(s_k, "max_seqlen_k");
    keep.push_back(cq.contiguous());
    keep.push_back(ck.contiguous());
    p.cu_seqlens_q = keep[keep.size() - 2].data_ptr<int32_t>();
    p.cu_seqlens_k = keep.back().data_ptr<int32_t>();
    if (paged) {  // every page a sequence uses (its cu_seqlens_k length) inside [0, num_blocks)
      const at::Tensor bt_host = check_block_table(*a.block_table, q, b, keep);
      const at::Tensor ck_host = host_ints(ck);
      std::vector<int32_t> n(b);
      for (int64_t i = 0; i < b; ++i) {
        n[i] = ck_host.data_ptr<int32_t>()[i + 1] - ck_host.data_ptr<int32_t>()[i];
        TORCH_CHECK_VALUE(n[i] <= bt_host.size(1) * k.size(1), kPre, "sequence ", i, " has ", n[i],
                          " keys, more than its block_table row holds (", bt_host.size(1), " pages of ", k.size(1),
                          ")");
      }
      set_block_table(p, bt_host, keep.back(), k.size(0), k.size(1), nullptr, n.data());
    }
  }
  check_int_range(b * h, "batch * heads");
  p.b = int(b);
  p.h = int(h);
  p.h_kv = int(h_kv);
  p.s_q = int(s_q);
  p.s_k = int(s_k);
  p.d = int(d);
  p.d_v = int(d_v);
  set_score_fields(p, q.scalar_type(), a.softmax_scale, a.causal, a.bottom_right, a.window_left, a.window_right,
                   a.softcap);
  p.dropout_p = float(a.dropout_p);
  p.num_splits = int(a.num_splits);  // 0 = the device chooses

  if (a.seqused_k.has_value() && a.seqused_k->defined()) {
    const at::Tensor& su = *a.seqused_k;
    check_index_tensor(su, "seqused_k", q, b);
    const at::Tensor hs = host_ints(su);
    const at::Tensor hk = varlen ? host_ints(*a.cu_seqlens_k) : at::Tensor();
    for (int64_t i = 0; i < b; ++i) {
      const int64_t cap = varlen ? hk.data_ptr<int32_t>()[i + 1] - hk.data_ptr<int32_t>()[i] : s_k;
      const int32_t u = hs.data_ptr<int32_t>()[i];
      TORCH_CHECK_VALUE(u >= 0 && u <= cap, kPre, "seqused_k[", i, "] = ", u, " must be in [0, ", cap,
                        "] (the keys of that sequence)");
    }
    keep.push_back(su.contiguous());
    p.seqused_k = keep.back().data_ptr<int32_t>();
  }
  if (a.alibi_slopes.has_value() && a.alibi_slopes->defined()) set_alibi(p, *a.alibi_slopes, q, keep);
  if (a.attn_mask.has_value() && a.attn_mask->defined()) {
    TORCH_CHECK_VALUE(!varlen, kPre, "attn_mask cannot be combined with cu_seqlens (varlen)");
    set_mask(p, *a.attn_mask, q, keep);
  }
  set_dropout_params(p, a.dropout_p, a.rng_state);
  return p;
}

std::tuple<at::Tensor, at::Tensor> alloc_fwd_outputs(const at::Tensor& q, const at::Tensor& v) {
  auto out = at::empty(out_shape_of(q, v), q.options());
  auto lse = at::empty(lse_shape_of(q), q.options().dtype(lse_dtype(q.scalar_type())));
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

namespace {
// (batch, head) strides of a (b, h, s_q) or packed (h, total_q) LSE-shaped tensor.
void lse_strides(const at::Tensor& t, int64_t& batch, int64_t& head) {
  if (t.dim() == 2) {
    batch = 0;
    head = t.stride(0);
  } else {
    batch = t.stride(0);
    head = t.stride(1);
  }
}
}  // namespace

void set_fwd_outputs(FwdParams& p, const at::Tensor& out, const at::Tensor& lse) {
  p.o = out.data_ptr();
  strides_of(out, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
  p.lse = lse.data_ptr();
  lse_strides(lse, p.lse_batch_stride, p.lse_head_stride);
}

BwdParams make_bwd_params(const FwdParams& fp, const at::Tensor& dout, const c10::optional<at::Tensor>& dlse,
                          const at::Tensor& out, const at::Tensor& lse, const at::Tensor& dq, const at::Tensor& dk,
                          const at::Tensor& dv, bool deterministic) {
  const std::vector<int64_t> out_shape = out_shape_of(dq, dv);
  const std::vector<int64_t> lse_shape = lse_shape_of(dq);
  check_float_tensor(dout, "dout");
  check_float_tensor(out, "out");
  check_same(dout, "dout", dq);
  check_same(out, "out", dq);
  TORCH_CHECK_VALUE(out.sizes() == at::IntArrayRef(out_shape), kPre, "out must have shape ", out_shape, ", got ",
                    out.sizes());
  TORCH_CHECK_VALUE(dout.sizes() == at::IntArrayRef(out_shape), kPre, "dout must have shape ", out_shape, ", got ",
                    dout.sizes());
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
  strides_of(out, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
  p.lse = const_cast<void*>(lse.data_ptr());
  lse_strides(lse, p.lse_batch_stride, p.lse_head_stride);
  p.dout = dout.data_ptr();
  strides_of(dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride);
  if (dlse.has_value() && dlse->defined()) {
    const auto& g = *dlse;
    TORCH_CHECK_TYPE(g.scalar_type() == lse_st, kPre, "dlse must be ", lse_st, ", got ", g.scalar_type());
    TORCH_CHECK_VALUE(g.device() == dq.device(), kPre, "dlse must be on the device of q");
    TORCH_CHECK_VALUE(g.sizes() == at::IntArrayRef(lse_shape), kPre, "dlse must have shape ", lse_shape, ", got ",
                      g.sizes());
    TORCH_CHECK_VALUE(g.stride(-1) == 1 || fp.s_q <= 1, kPre, "dlse must have a contiguous last dim");
    p.dlse = g.data_ptr();
    lse_strides(g, p.dlse_batch_stride, p.dlse_head_stride);
  }
  p.dq = dq.data_ptr();
  strides_of(dq, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride);
  p.dk = dk.data_ptr();
  strides_of(dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride);
  p.dv = dv.data_ptr();
  strides_of(dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride);
  p.deterministic = deterministic;
  return p;
}

}  // namespace fal::glue

namespace fal::glue {

OptArgs make_fwd_opt_args(FAL_FWD_ARGS) {
  (void)q;
  (void)k;
  (void)v;
  (void)deterministic;
  OptArgs a;
  a.attn_mask = attn_mask;
  a.alibi_slopes = alibi_slopes;
  a.cu_seqlens_q = cu_seqlens_q;
  a.cu_seqlens_k = cu_seqlens_k;
  a.seqused_k = seqused_k;
  a.block_table = block_table;
  a.rng_state = rng_state;
  a.max_seqlen_q = max_seqlen_q;
  a.max_seqlen_k = max_seqlen_k;
  a.softmax_scale = softmax_scale;
  a.causal = causal;
  a.bottom_right = bottom_right;
  a.window_left = window_left;
  a.window_right = window_right;
  a.softcap = softcap;
  a.dropout_p = dropout_p;
  a.num_splits = num_splits;
  return a;
}

OptArgs make_bwd_opt_args(FAL_BWD_ARGS) {
  (void)dout;
  (void)dlse;
  (void)out;
  (void)softmax_lse;
  (void)mask_grad;
  return make_fwd_opt_args(q, k, v, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, seqused_k, c10::nullopt,
                           rng_state, max_seqlen_q, max_seqlen_k, softmax_scale, causal, bottom_right, window_left,
                           window_right, softcap, dropout_p, 1, deterministic);
}

std::tuple<at::Tensor, at::Tensor> fwd_impl(FwdRunner run, const at::Tensor& q_in, const at::Tensor& k_in,
                                            const at::Tensor& v_in, const OptArgs& a) {
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in), v = last_dim_contiguous(v_in);
  std::vector<at::Tensor> keep;  // converted optional tensors the params point into
  FwdParams p = make_fwd_params(q, k, v, a, keep);
  auto [out, lse] = alloc_fwd_outputs(q, v);
  if (out.numel() == 0) return {out, lse};
  set_fwd_outputs(p, out, lse);
  if (p.cu_seqlens_q) {  // packed rows no sequence owns
    out.zero_();
    lse.fill_(-std::numeric_limits<double>::infinity());
  }
  run(p, q);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_impl(BwdRunner run, const at::Tensor& dout_in,
                                                                    const OptT& dlse_in, const at::Tensor& q_in,
                                                                    const at::Tensor& k_in, const at::Tensor& v_in,
                                                                    const at::Tensor& out_in, const at::Tensor& lse_in,
                                                                    const OptArgs& a, bool deterministic,
                                                                    bool mask_grad) {
  const at::Tensor lse = lse_in.contiguous();  // scratch buffers of the kernels share its strides
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in), v = last_dim_contiguous(v_in);
  std::vector<at::Tensor> keep;
  FwdParams fp = make_fwd_params(q, k, v, a, keep);
  auto dq = at::empty(q.sizes(), q.options());
  auto dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  const at::Tensor dout = last_dim_contiguous(dout_in), out = last_dim_contiguous(out_in);
  OptT dlse = dlse_in;
  if (dlse.has_value() && dlse->defined()) dlse = last_dim_contiguous(*dlse);
  BwdParams p = make_bwd_params(fp, dout, dlse, out, lse, dq, dk, dv, deterministic);
  // Gradient of a floating attn_mask: dS at every (batch, head, row, key), summed to the mask's shape.
  at::Tensor dmask_full, dmask = at::empty({0}, q.options());
  if (mask_grad) {
    TORCH_CHECK_VALUE(
        a.attn_mask.has_value() && a.attn_mask->defined() && at::isFloatingType(a.attn_mask->scalar_type()), kPre,
        "mask_grad needs a floating attn_mask");
    dmask_full = at::zeros({p.b, p.h, p.s_q, p.s_k}, q.options().dtype(lse_dtype(q.scalar_type())));
    p.dmask = dmask_full.data_ptr();
    p.dmask_batch_stride = dmask_full.stride(0);
    p.dmask_head_stride = dmask_full.stride(1);
    p.dmask_row_stride = dmask_full.stride(2);
  }
  auto finish_mask = [&] {
    if (mask_grad) dmask = at::sum_to(dmask_full, a.attn_mask->sizes()).to(a.attn_mask->scalar_type());
  };
  if (dk.numel() > 0 && dq.numel() == 0) dk.zero_(), dv.zero_();
  if (dq.numel() == 0 || dk.numel() == 0) {
    dq.zero_();
    finish_mask();
    return {dq, dk, dv, dmask};
  }
  if (p.cu_seqlens_k || p.seqused_k) {  // keys no sequence uses get zero gradients
    dk.zero_();
    dv.zero_();
  }
  if (p.cu_seqlens_q) dq.zero_();
  run(p, q);
  finish_mask();
  return {dq, dk, dv, dmask};
}

}  // namespace fal::glue
