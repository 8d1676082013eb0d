// cpu_ops.cpp -- CPU implementations of the flashattn_lite ops: ATen's thread pool around the
// torch-free kernels of csrc/cpu.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <torch/library.h>

#include "cpu/cpu_kernels.h"
#include "cpu/isa.h"
#include "flashattn_lite/attn_math.h"
#include "torch/attn_glue.h"

namespace fal::glue {
namespace {

const cpu::KernelTable& active_kernels() {
  const cpu::Isa isa = cpu::active_isa();
  if (int(isa) < 0) {
    std::string avail;
    for (cpu::Isa i : cpu::available_isas()) avail += std::string(" ") + cpu::isa_name(i);
    TORCH_CHECK_VALUE(false,
                      "flashattn_lite: FLASHATTN_LITE_CPU_ISA names an ISA this build or CPU cannot run; "
                      "available:",
                      avail);
  }
  TORCH_CHECK_VALUE(cpu::decode_prefetch().valid,
                    "flashattn_lite: FLASHATTN_LITE_DECODE_PREFETCH must be one of t0, t1, nta, none, or four "
                    "of them separated by commas (head,rows,chunk16,chunk32), or unset");
  return cpu::kernels(isa);
}

}  // namespace

const cpu::KernelTable& active_kernels_for_probe() { return active_kernels(); }

namespace {

// Runs fn(i, i + 1) for every work item i of [0, n) in one parallel region, each thread taking the
// next item from an atomic counter -- from the last item down: the kernels number a head's query
// chunks (and keys) so that, under a causal mask, the last is the heaviest, and heaviest-first
// keeps the threads' shares even (a lone causal head on 2 threads took 0.67 of the 1-thread time
// with a static split in halves; ggml's dynamic split takes 0.47).
template <typename F>
void parallel_dynamic(int64_t n, F&& fn) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1) {
    if (n > 0) fn(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t t = next.fetch_add(1); t < n; t = next.fetch_add(1)) fn(n - 1 - t, n - t);
  });
}

// One forward call on the active ISA's kernel table (isa.h): the table decides the decomposition.
void run_fwd_cpu(FwdParams& p, const at::Tensor& q) {
  const cpu::KernelTable& k = active_kernels();
  k.fwd_plan(p, at::get_num_threads());
  const auto accum = alloc_split_accum(p, q);  // alive until the kernels are done
  std::atomic<bool> nan_value{false};          // an output row may hold a NaN value (isa.h)
  parallel_dynamic(k.fwd_num_work_items(p), [&](int64_t begin, int64_t end) {
    if (k.fwd_run(p, begin, end)) nan_value.store(true, std::memory_order_relaxed);
  });
  // the merge of the splits: an item reads num_splits x d_v floats; ~16 K floats per thread at least
  // (a short decode's merge runs on the calling thread, without a parallel region)
  // (split: the merge writes the output, its flag replaces the kernels')
  if (p.num_splits > 1) {
    nan_value.store(false);
    at::parallel_for(0, cpu::fwd_combine_num_work_items(p),
                     std::max<int64_t>(1, (1 << 14) / (int64_t(p.num_splits) * p.d_v)),
                     [&](int64_t begin, int64_t end) {
                       if (cpu::fwd_combine_run(p, begin, end)) nan_value.store(true, std::memory_order_relaxed);
                     });
  }
  // a NaN value must reach only the rows that see its key (cpu_kernels.h); the SIMD kernels flag
  // the rows they write with a NaN value, and without one the scan of the output is skipped
  // (2-3 % of the bf16 forward, H8 N2048 D64, Zen 4)
  const cpu::NanPass pass = k.fwd_nan_pass(p);
  if (pass != cpu::NanPass::kNone && nan_value.load())
    at::parallel_for(
        0, cpu::fwd_num_work_items(p), std::max<int64_t>(1, (1 << 16) / (int64_t(cpu::kFwdBlockM) * p.d_v)),
        [&](int64_t begin, int64_t end) { cpu::fwd_redo_nan_tiles(p, begin, end, pass == cpu::NanPass::kRows); });
}

void run_bwd_cpu(BwdParams& p, const at::Tensor& q) {
  const cpu::KernelTable& k = active_kernels();
  k.bwd_plan(p, at::get_num_threads());
  at::Tensor dq_partial;  // alive until the combine pass is done
  if (p.key_splits > 1) {
    // head splits: every row a sequence has is written by each split (params.h), so no zeroing
    dq_partial = p.split_heads
                     ? at::empty({p.key_splits, p.b, p.h_kv, p.s_k, p.d + p.d_v}, q.options().dtype(at::kFloat))
                     : at::zeros({p.key_splits, p.b, p.h, p.s_q, p.d}, q.options().dtype(at::kFloat));
    p.dq_partial = dq_partial.data_ptr<float>();
  }
  parallel_dynamic(k.bwd_num_work_items(p), [&](int64_t begin, int64_t end) { k.bwd_run(p, begin, end); });
  if (p.key_splits > 1)
    at::parallel_for(0, cpu::bwd_combine_num_work_items(p), 64,
                     [&](int64_t begin, int64_t end) { cpu::bwd_combine_run(p, begin, end); });
}

std::tuple<at::Tensor, at::Tensor> fwd_cpu(FAL_FWD_ARGS) {
  return fwd_impl(run_fwd_cpu, q, k, v, make_fwd_opt_args(FAL_FWD_FORWARD_ARGS));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_cpu(FAL_BWD_ARGS) {
  return bwd_impl(run_bwd_cpu, dout, dlse, q, k, v, out, softmax_lse, make_bwd_opt_args(FAL_BWD_FORWARD_ARGS),
                  deterministic, mask_grad);
}

std::tuple<at::Tensor, at::Tensor> fwd_kvcache_cpu(const at::Tensor& q, const at::Tensor& k_cache,
                                                   const at::Tensor& v_cache, const at::Tensor& cache_seqlens,
                                                   const OptT& cache_batch_idx, const OptT& cache_leftpad,
                                                   const OptT& block_table, const OptT& alibi_slopes,
                                                   double softmax_scale, bool causal, int64_t window_left,
                                                   int64_t window_right, double softcap, int64_t num_splits) {
  return fwd_kvcache_impl(run_fwd_cpu, q, k_cache, v_cache, cache_seqlens, cache_batch_idx, cache_leftpad, block_table,
                          alibi_slopes, softmax_scale, causal, window_left, window_right, softcap, num_splits);
}

at::Tensor dropout_keep_cpu(const at::Tensor& rng_state, int64_t batch, int64_t heads, int64_t s_q, int64_t s_k,
                            double dropout_p) {
  TORCH_CHECK_VALUE(batch >= 0 && heads >= 0 && s_q >= 0 && s_k >= 0,
                    "flashattn_lite: dropout_keep sizes must be >= 0");
  TORCH_CHECK_VALUE(dropout_p > 0 && dropout_p < 1, "flashattn_lite: dropout_p must be in (0, 1), got ", dropout_p);
  auto keep = at::empty({batch, heads, s_q, s_k}, rng_state.options().dtype(at::kBool));
  if (keep.numel() == 0) return keep;
  // The same params path as the kernels (validation of rng_state included).
  FwdParams p;
  p.h = int(heads);
  set_dropout_params(p, dropout_p, rng_state);
  p.dropout_p = float(dropout_p);
  bool* out = keep.data_ptr<bool>();
  at::parallel_for(0, batch * heads, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bh = b0; bh < b1; ++bh) {
      Dropout d = make_dropout(p);
      d.bh = uint32_t(bh);
      for (int64_t i = 0; i < s_q; ++i)
        for (int64_t j = 0; j < s_k; ++j) out[(bh * s_q + i) * s_k + j] = d.keep(int(i), int(j));
    }
  });
  return keep;
}

}  // namespace
}  // namespace fal::glue

// Peak probe on torch's intra-op threads: every thread runs FMA chains; the rate is the summed
// work over the wall time. `seconds` sizes the run (calibrated from a short first run).
double fal_cpu_peak_gflops(int kind, double seconds) {
  const fal::cpu::KernelTable& k = fal::glue::active_kernels_for_probe();
  const int64_t threads = at::get_num_threads();
  auto run = [&](int64_t iters) {
    std::atomic<int64_t> sink{0};
    const auto t0 = std::chrono::steady_clock::now();
    at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) sink += int64_t(k.peak_loop(kind, iters));
    });
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return std::make_pair(sec, sink.load());
  };
  int64_t iters = 100000;
  double sec = run(iters).first;
  iters = std::max<int64_t>(iters, int64_t(double(iters) * seconds / std::max(sec, 1e-6)));
  sec = run(iters).first;
  return double(threads) * double(iters) * k.peak_flops_per_iter(kind) / sec / 1e9;
}

// Read-bandwidth probe on torch's intra-op threads: every thread sums its slice of p[0, n) with the
// active ISA's read_sum; `passes` passes of each prefetch kind, the best GB/s.
double fal_cpu_read_gbps(const float* p, int64_t n, int64_t passes) {
  TORCH_CHECK(p != nullptr && passes >= 1, "_cpu_read_gbps: a buffer and passes >= 1");
  const fal::cpu::KernelTable& k = fal::glue::active_kernels_for_probe();
  const int64_t threads = at::get_num_threads();
  const int64_t per = n / threads / 64 * 64;  // floats per thread, whole 256-byte steps
  TORCH_CHECK(per > 0, "_cpu_read_gbps: the buffer must hold at least 64 floats per thread");
  double best = 0;
  for (int64_t pass = 0; pass < passes; ++pass)
    for (int kind = 0; kind < 2; ++kind) {
      std::atomic<int64_t> sink{0};
      const auto t0 = std::chrono::steady_clock::now();
      at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) sink += k.read_sum(kind, p + t * per, per) == 1.2345f ? 1 : 0;  // keeps the sum
      });
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::max(best, double(threads * per) * sizeof(float) / sec / 1e9);
    }
  return best;
}

TORCH_LIBRARY_IMPL(flashattn_lite, CPU, m) {
  m.impl("fwd", &fal::glue::fwd_cpu);
  m.impl("bwd", &fal::glue::bwd_cpu);
  m.impl("dropout_keep", &fal::glue::dropout_keep_cpu);
  m.impl("fwd_kvcache", &fal::glue::fwd_kvcache_cpu);
  m.impl("kvcache_append", &fal::glue::kvcache_append_cpu);
}
