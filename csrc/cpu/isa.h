// isa.h -- CPU instruction-set selection for the attention kernels (torch-free).
// Each SIMD variant is compiled from the same sources (csrc/cpu/simd) in its own translation
// unit and namespace with its own -m flags; the table below is filled once per process from
// CPUID and the OS-enabled register state (XCR0), or from FLASHATTN_LITE_CPU_ISA.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/cpu_kernels.h"  // NanPass
#include "flashattn_lite/params.h"

namespace fal::cpu {

// kAmx: the avx512 kernels, with the bf16, fp16 and fp32 forward (more than kDecodeMaxRows rows),
// the bf16 and fp16 backward and the bf16 decode from 4 rows on AMX tiles
enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAmx = 3 };

const char* isa_name(Isa isa);
// ISAs compiled into this build (scalar always).
std::vector<Isa> compiled_isas();
// ISAs this CPU and OS can run, among the compiled ones, best last.
std::vector<Isa> available_isas();
// The ISA the kernels use: FLASHATTN_LITE_CPU_ISA if set (an error if unavailable), else the best
// available. Resolved once; set_active_isa changes it (tests and benchmarks).
Isa active_isa();
// Returns an error message ("" on success).
std::string set_active_isa(const std::string& name);

// Software prefetch of the decode kernels' K / V streams (decode_head.h, decode.cpp) and of the
// forward's next key tile (fwd.cpp), a per-machine choice: FLASHATTN_LITE_DECODE_PREFETCH=
// t0|t1|nta|none sets one hint for every stream, "h,r,c16,c32" one per stream (measurement);
// unset, the vendor and the L1 data cache decide. Intel (a Xeon with a 48 KB L1, 2 MB L2): T0 for a
// one-row head stream, T1 for several rows and the forward's tiles, token-major chunks T1 where an
// item's span of a K row is under 4 KB, else left to the hardware prefetcher -- NTA there cost
// 0.3-0.5x on every stream (bench/results/cpu-2026-12-02d-intel.md). AMD with 48 KB or more (Zen 5):
// the hints measured best there -- NTA one block ahead per head stream; per chunk of a token-major
// cache T0 (bf16 / fp16) or T1 (fp32). Smaller (Zen 4, Zen 3: 32 KB): T1 everywhere -- T0 / NTA
// lines fill the small L1 ahead of their use (bench/results/cpu-2026-12-01-zen4.md). Resolved once
// per process; set_decode_prefetch replaces it (benchmarks; not while a kernel runs).
enum class PrefetchHint : int { kT0 = 0, kT1 = 1, kNta = 2, kNone = 3 };
struct DecodePrefetch {
  PrefetchHint head = PrefetchHint::kNta;    // a one-row decode's head-contiguous streams, one block ahead
  PrefetchHint rows = PrefetchHint::kNta;    // several rows' head streams; the forward's next key tile
  PrefetchHint chunk16 = PrefetchHint::kT0;  // token-major chunks, 16-bit K / V
  PrefetchHint chunk32 = PrefetchHint::kT1;  // token-major chunks, fp32 K / V
  int64_t chunk_hw_span = 0;                 // > 0: token-major chunks whose K span is this wide or wider
                                             // get no software prefetch
  bool valid = true;                         // false: the variable held another value
  std::string describe;                      // e.g. "t1 (L1d 32 KB)", for benchmark machine lines
};
const DecodePrefetch& decode_prefetch();
// The FLASHATTN_LITE_DECODE_PREFETCH forms, or "" for the machine's own choice; returns an error
// message ("" on success).
std::string set_decode_prefetch(const std::string& text);

// One ISA's kernels.
// A forward call: fwd_plan(p, threads), allocate split-KV scratch when p.num_splits > 1, run
// fwd_run over [0, fwd_num_work_items(p)), then fwd_combine_run when split, then
// fwd_redo_nan_tiles when fwd_nan_pass(p) is not kNone and the output may hold a NaN value: a fwd_run returned
// true or, split, a fwd_combine_run did (cpu_kernels.h). A backward: bwd_plan(p, threads),
// dq_partial when p.key_splits > 1 (params.h: zeroed for key splits), bwd_run over [0,
// bwd_num_work_items(p)), then bwd_combine_run when split.
struct KernelTable {
  void (*fwd_plan)(FwdParams&, int threads);
  int64_t (*fwd_num_work_items)(const FwdParams&);
  bool (*fwd_run)(const FwdParams&, int64_t begin, int64_t end);
  NanPass (*fwd_nan_pass)(const FwdParams&);
  void (*bwd_plan)(BwdParams&, int threads);
  int64_t (*bwd_num_work_items)(const BwdParams&);
  void (*bwd_run)(const BwdParams&, int64_t begin, int64_t end);
  // Peak-throughput probe: `iters` rounds of independent FMA chains (kind 0: fp32 FMA, kind 1: the
  // bf16 dot product where the ISA has one, else fp32; kind 2, amx only: AMX tdpbf16ps tiles).
  // Returns a value to keep the work alive;
  // FLOPs done = iters * peak_flops_per_iter(kind).
  float (*peak_loop)(int kind, int64_t iters);
  double (*peak_flops_per_iter)(int kind);
  // Read-bandwidth probe: the sum of p[0, n) (n a multiple of 64), streaming with a software
  // prefetch per line (kind 0: T0 4 KB ahead, 1: T1 16 KB ahead).
  float (*read_sum)(int kind, const float* p, int64_t n);
};
const KernelTable& kernels(Isa isa);

// Portable (scalar) peak probe, the scalar table's entries.
float peak_loop_scalar(int kind, int64_t iters);
double peak_flops_per_iter_scalar(int kind);
float read_sum_scalar(int kind, const float* p, int64_t n);

}  // namespace fal::cpu
