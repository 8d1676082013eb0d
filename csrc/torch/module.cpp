// module.cpp -- the op schemas (TORCH_LIBRARY) and the pybind11 module flashattn_lite._C.
// Device implementations live in cpu_ops.cpp / cuda_ops.cpp; fake and autograd in Python.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include "cpu/isa.h"

namespace py = pybind11;

double fal_cpu_peak_gflops(int kind, double seconds);                   // cpu_ops.cpp
double fal_cpu_read_gbps(const float* buf, int64_t n, int64_t passes);  // cpu_ops.cpp

// Layouts: q (b, s_q, h, d), k (b, s_k, h_kv, d), v (b, s_k, h_kv, d_v), any strides with a
// contiguous last dim. out (b, s_q, h, d_v), softmax_lse (b, h, s_q) fp32. With cu_seqlens_q/k
// (varlen): q (total_q, h, d), k/v (total_k, h_kv, d), out (total_q, h, d_v), lse (h, total_q).
// bwd returns dmask (the attn_mask's shape) when mask_grad, else an empty tensor.
// `deterministic` of fwd is only recorded for its backward (bitwise-reproducible gradients).
// Optional arguments are part of the schema from the start so that features extend it without
// changing it; a device that lacks a feature raises NotImplementedError (cuda_ops.cpp).
TORCH_LIBRARY(flashattn_lite, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, Tensor? attn_mask, Tensor? alibi_slopes, "
      "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, Tensor? seqused_k, Tensor? block_table, "
      "Tensor? rng_state, int max_seqlen_q, int max_seqlen_k, float softmax_scale, bool causal, "
      "bool bottom_right, int window_left, int window_right, float softcap, float dropout_p, "
      "int num_splits, bool deterministic=False) -> (Tensor out, Tensor softmax_lse)");
  m.def(
      "bwd(Tensor dout, Tensor? dlse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor softmax_lse, "
      "Tensor? attn_mask, Tensor? alibi_slopes, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, "
      "Tensor? seqused_k, Tensor? rng_state, int max_seqlen_q, int max_seqlen_k, float softmax_scale, "
      "bool causal, bool bottom_right, int window_left, int window_right, float softcap, "
      "float dropout_p, bool deterministic, bool mask_grad=False) -> (Tensor dq, Tensor dk, Tensor dv, "
      "Tensor dmask)");
  // flash_attn_with_kvcache's attention (inference only; the append and rotary happen before it).
  m.def(
      "fwd_kvcache(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens, Tensor? cache_batch_idx, "
      "Tensor? cache_leftpad, Tensor? block_table, Tensor? alibi_slopes, float softmax_scale, bool causal, "
      "int window_left, int window_right, float softcap, int num_splits=0) -> (Tensor out, Tensor softmax_lse)");
  // flash_attn_with_kvcache's in-place append of the new k / v, with its rotary of k and q (CPU;
  // kvcache.py uses torch ops elsewhere); returns (q rotated, or an empty tensor without rotary,
  // cache_seqlens + seqlen_new).
  m.def(
      "kvcache_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, Tensor cache_seqlens, "
      "Tensor? cache_batch_idx, Tensor? block_table, Tensor q, Tensor? rotary_cos, Tensor? rotary_sin, "
      "bool rotary_interleaved, bool rotary_q_rows) -> (Tensor q_rotated, Tensor cache_seqlens_new)");
  // The dropout keep pattern (bool, batch x heads x seqlen_q x seqlen_k) for an rng_state: what the
  // kernels draw (Philox4x32-10, see attn_math.h), for tests and return_attn_probs.
  m.def("dropout_keep(Tensor rng_state, int batch, int heads, int seqlen_q, int seqlen_k, float dropout_p) -> Tensor");
}

namespace {

py::dict build_info() {
  py::dict info;
  info["version"] = FAL_VERSION;
  info["torch_version"] = FAL_TORCH_VERSION;
  info["compiler"] = FAL_COMPILER;
  py::list isas;
  std::string s = FAL_CPU_ISAS;
  size_t start = 0;
  while (start <= s.size() && !s.empty()) {
    size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    isas.append(s.substr(start, end - start));
    start = end + 1;
  }
  info["cpu_isas"] = isas;
#ifdef FLASHATTN_LITE_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = FAL_CUDA_VERSION;
  py::list archs;
  std::string a = FAL_CUDA_ARCHS;
  start = 0;
  while (start < a.size()) {
    size_t end = a.find(',', start);
    if (end == std::string::npos) end = a.size();
    archs.append(a.substr(start, end - start));
    start = end + 1;
  }
  info["cuda_archs"] = archs;
#else
  info["cuda"] = false;
  info["cuda_version"] = py::none();
  info["cuda_archs"] = py::list();
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "flashattn_lite native module: op registrations and build information";
  mod.def("build_info", &build_info, "What this build was compiled with.");
  mod.def(
      "cpu_isa",
      [] {
        const auto isa = fal::cpu::active_isa();
        return std::string(int(isa) < 0 ? "invalid" : fal::cpu::isa_name(isa));
      },
      "The CPU ISA the kernels use now.");
  mod.def(
      "_decode_prefetch", [] { return fal::cpu::decode_prefetch().describe; },
      "The decode kernels' (and the forward's next-tile) software-prefetch hints on this machine "
      "(FLASHATTN_LITE_DECODE_PREFETCH, or the vendor and the L1 size).");
  mod.def(
      "_set_decode_prefetch",
      [](const std::string& text) {
        const std::string err = fal::cpu::set_decode_prefetch(text);
        if (!err.empty()) throw pybind11::value_error(err);
      },
      "Sets the decode prefetch hints for this process: 't0', 't1', 'nta', 'none', 'head,rows,chunk16,chunk32', "
      "or '' for this machine's own choice (benchmarks; results are bit-identical whatever the hints).");
  mod.def(
      "available_isas",
      [] {
        std::vector<std::string> v;
        for (auto i : fal::cpu::available_isas()) v.push_back(fal::cpu::isa_name(i));
        return v;
      },
      "CPU ISAs compiled in and supported by this CPU and OS (best last).");
  mod.def(
      "_cpu_peak_gflops",
      [](const std::string& kind, double seconds) {
        if (kind != "fp32" && kind != "bf16" && kind != "amx")
          throw pybind11::value_error("_cpu_peak_gflops: kind must be 'fp32', 'bf16' or 'amx'");
        if (kind == "amx" && fal::cpu::active_isa() != fal::cpu::Isa::kAmx)
          throw pybind11::value_error("_cpu_peak_gflops: kind 'amx' needs the amx ISA active");
        pybind11::gil_scoped_release nogil;
        return fal_cpu_peak_gflops(kind == "amx" ? 2 : kind == "bf16" ? 1 : 0, seconds);
      },
      "Measured peak GFLOP/s of the active CPU ISA on torch's threads: kind 'fp32' (FMA), 'bf16' (vector dot "
      "product) or 'amx' (AMX tiles, the amx ISA).");
  mod.def(
      "_cpu_read_gbps",
      [](uintptr_t data_ptr, int64_t n, int64_t passes) {
        pybind11::gil_scoped_release nogil;
        return fal_cpu_read_gbps(reinterpret_cast<const float*>(data_ptr), n, passes);
      },
      "Measured read bandwidth (GB/s) of the active CPU ISA on torch's threads: the best of `passes` "
      "streaming sums over n floats at data_ptr (use flashattn_lite._bench_core.read_gbps(tensor)).");
  mod.def(
      "_set_cpu_isa",
      [](const std::string& name) {
        const std::string err = fal::cpu::set_active_isa(name);
        if (!err.empty()) throw pybind11::value_error("flashattn_lite: " + err);
      },
      "Select the CPU ISA (tests and benchmarks).");
}
