// isa.cpp -- CPUID / XCR0 detection and the per-ISA kernel tables.
#include "cpu/isa.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "cpu/cpu_kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define FAL_X86 1
#endif

namespace fal::cpu {

#define FAL_DECLARE_ISA_TABLE(ns)                               \
  namespace ns {                                                \
  int64_t fwd_num_work_items(const FwdParams& p);               \
  bool fwd_run(const FwdParams& p, int64_t begin, int64_t end); \
  int64_t bwd_num_work_items(const BwdParams& p);               \
  void bwd_run(const BwdParams& p, int64_t begin, int64_t end); \
  float peak_loop(int kind, int64_t iters);                     \
  double peak_flops_per_iter(int kind);                         \
  float read_sum(int kind, const float* p, int64_t n);          \
  }
#ifdef FAL_HAVE_AVX2
FAL_DECLARE_ISA_TABLE(avx2)
#endif
#ifdef FAL_HAVE_AVX512
FAL_DECLARE_ISA_TABLE(avx512)
#ifdef FAL_WITH_AMX
namespace avx512 {
bool fwd_run_amx(const FwdParams& p, int64_t begin, int64_t end);
int64_t fwd_num_work_items_amx(const FwdParams& p);
void bwd_run_amx(const BwdParams& p, int64_t begin, int64_t end);
float peak_loop_amx(int kind, int64_t iters);
double peak_flops_per_iter_amx(int kind);
}  // namespace avx512
#endif
#endif

namespace {

struct Features {
  bool avx2_fma = false;  // AVX2 + FMA + F16C, OS saves YMM
  bool avx512 = false;    // F + BW + VL + DQ + BF16, OS saves ZMM and opmasks
  bool amx = false;       // + AMX-TILE, AMX-BF16, OS saves the tile state and granted it to this process
};

#if defined(FAL_X86) && defined(__linux__)
// Linux hands the AMX tile data state to a process only on request (arch_prctl
// ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, kernel 5.16+); false where it refuses.
bool request_amx_state() {
  constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
}
#else
bool request_amx_state() { return false; }
#endif

Features detect() {
  Features f;
#ifdef FAL_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave || !avx) return f;
  unsigned xlo, xhi;
  __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  const bool ymm_os = (xlo & 0x6u) == 0x6u;    // SSE + AVX state
  const bool zmm_os = (xlo & 0xe6u) == 0xe6u;  // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  const bool avx2 = b & (1u << 5);
  const bool f512 = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  unsigned a1 = 0, b1, c1, d1;
  __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
  const bool bf16 = a1 & (1u << 5);
  f.avx2_fma = ymm_os && avx2 && fma && f16c;
  f.avx512 = f.avx2_fma && zmm_os && f512 && dq && bw && vl && bf16;
  unsigned a0 = 0, b0 = 0, c0 = 0, d0 = 0;
  __get_cpuid_count(7, 0, &a0, &b0, &c0, &d0);
  const bool amx_bf16 = d0 & (1u << 22), amx_tile = d0 & (1u << 24);
  const bool tile_os = (xlo & 0x60000u) == 0x60000u;  // XTILECFG, XTILEDATA
  f.amx = f.avx512 && amx_bf16 && amx_tile && tile_os && request_amx_state();
#endif
  return f;
}

std::atomic<int> g_active{-1};

Isa best_available() { return available_isas().back(); }

// "t0" (one hint for every stream) or "t0,t1,none,t1" (head, rows, chunk16, chunk32); false on any
// other text.
bool parse_decode_prefetch(const std::string& text, DecodePrefetch& d) {
  const char* names[] = {"t0", "t1", "nta", "none"};
  PrefetchHint h[4];
  size_t pos = 0;
  int n = 0;
  for (;;) {
    const size_t comma = text.find(',', pos);
    const std::string word = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    int i = 0;
    while (i < 4 && word != names[i]) ++i;
    if (i == 4 || n == 4) return false;
    h[n++] = PrefetchHint(i);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  if (n != 1 && n != 4) return false;
  d.head = h[0];
  d.rows = h[n == 4 ? 1 : 0];
  d.chunk16 = h[n == 4 ? 2 : 0];
  d.chunk32 = h[n == 4 ? 3 : 0];
  d.chunk_hw_span = 0;
  d.valid = true;
  return true;
}

bool intel_cpu() {
#ifdef FAL_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  return b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu;  // "GenuineIntel"
#else
  return false;
#endif
}

// The hints this machine gets when FLASHATTN_LITE_DECODE_PREFETCH is unset.
DecodePrefetch machine_decode_prefetch() {
  DecodePrefetch d;
  const long l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE);  // 0 or -1 when unknown: the small-L1 choice
  const std::string l1s = l1 > 0 ? std::to_string(l1 / 1024) + " KB" : std::string("unknown");
  if (intel_cpu()) {
    // B1 32768 keys D128, 2 threads, hints alternating call by call in one process (Xeon, 48 KB L1,
    // 2 MB L2, 2026-12-02): NTA 0.3-0.5x T0 on every stream; head-major one row T0 26 GB/s (read
    // probe 28), several rows (GQA 32/8, 16 rows) T1 1.03-1.14x T0; token-major rows of 4 KB or
    // more per item none 1.0-1.25x T1 (H32 bf16 4 rows 20.0 vs 16.0 GB/s), smaller rows T1
    // 1.25-1.85x none (GQA 32/4 bf16 12.5 vs 6.8); the forward's tiles T1 0.99x T0 (H8 N2048
    // D64), 1.07x (64 rows x 32768 keys), NTA 0.75-0.97x
    d.head = PrefetchHint::kT0;
    d.rows = d.chunk16 = d.chunk32 = PrefetchHint::kT1;
    d.chunk_hw_span = 4096;
    d.describe = "t0/t1/t1/t1, none on >= 4 KB rows (Intel, L1d " + l1s + ")";
  } else if (l1 >= 48 * 1024) {
    d.describe = "nta/nta/t0/t1 (L1d " + l1s + ")";
  } else {
    d.head = d.rows = d.chunk16 = d.chunk32 = PrefetchHint::kT1;
    d.describe = "t1 (L1d " + l1s + ")";
  }
  return d;
}

DecodePrefetch resolve_decode_prefetch() {
  const char* env = std::getenv("FLASHATTN_LITE_DECODE_PREFETCH");
  if (!env || !*env) return machine_decode_prefetch();
  DecodePrefetch d;
  if (parse_decode_prefetch(env, d)) {
    d.describe = std::string(env) + " (FLASHATTN_LITE_DECODE_PREFETCH)";
  } else {
    d.valid = false;
    d.describe = "invalid";
  }
  return d;
}

DecodePrefetch& decode_prefetch_state() {
  static DecodePrefetch d = resolve_decode_prefetch();
  return d;
}

Isa initial_isa() {
  const char* env = std::getenv("FLASHATTN_LITE_CPU_ISA");
  if (env && *env) {
    for (Isa i : available_isas())
      if (std::strcmp(env, isa_name(i)) == 0) return i;
    return Isa(-1);  // reported by the glue on use
  }
  return best_available();
}

}  // namespace

const DecodePrefetch& decode_prefetch() { return decode_prefetch_state(); }

std::string set_decode_prefetch(const std::string& text) {
  if (text.empty()) {
    decode_prefetch_state() = machine_decode_prefetch();
    return "";
  }
  DecodePrefetch d;
  if (!parse_decode_prefetch(text, d))
    return "decode prefetch must be one of t0, t1, nta, none, or four of them "
           "separated by commas (head,rows,chunk16,chunk32); got '" +
           text + "'";
  d.describe = text + " (set)";
  decode_prefetch_state() = d;
  return "";
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAmx: return "amx";
  }
  return "unknown";
}

std::vector<Isa> compiled_isas() {
  std::vector<Isa> v{Isa::kScalar};
#ifdef FAL_HAVE_AVX2
  v.push_back(Isa::kAvx2);
#endif
#ifdef FAL_HAVE_AVX512
  v.push_back(Isa::kAvx512);
#ifdef FAL_WITH_AMX
  v.push_back(Isa::kAmx);
#endif
#endif
  return v;
}

std::vector<Isa> available_isas() {
  static const Features f = detect();
  std::vector<Isa> v;
  for (Isa i : compiled_isas())
    if (i == Isa::kScalar || (i == Isa::kAvx2 && f.avx2_fma) || (i == Isa::kAvx512 && f.avx512) ||
        (i == Isa::kAmx && f.amx))
      v.push_back(i);
  return v;
}

Isa active_isa() {
  int v = g_active.load();
  if (v == -1) {
    v = int(initial_isa());
    g_active.store(v == -1 ? -2 : v);
    if (v == -1) v = -2;
  }
  return Isa(v);
}

std::string set_active_isa(const std::string& name) {
  for (Isa i : available_isas())
    if (name == isa_name(i)) {
      g_active.store(int(i));
      return "";
    }
  std::string msg = "unknown or unavailable CPU ISA '" + name + "'; available:";
  for (Isa i : available_isas()) msg += std::string(" ") + isa_name(i);
  return msg;
}

const KernelTable& kernels(Isa isa) {
  static const KernelTable scalar{fwd_plan_portable,          fwd_num_work_items, fwd_run, fwd_nan_pass_portable,
                                  bwd_plan_portable,          bwd_num_work_items, bwd_run, peak_loop_scalar,
                                  peak_flops_per_iter_scalar, read_sum_scalar};
#ifdef FAL_HAVE_AVX2
  static const KernelTable t_avx2{fwd_plan_simd,
                                  avx2::fwd_num_work_items,
                                  avx2::fwd_run,
                                  fwd_nan_pass_simd,
                                  bwd_plan_simd,
                                  avx2::bwd_num_work_items,
                                  avx2::bwd_run,
                                  avx2::peak_loop,
                                  avx2::peak_flops_per_iter,
                                  avx2::read_sum};
  if (isa == Isa::kAvx2) return t_avx2;
#endif
#ifdef FAL_HAVE_AVX512
  static const KernelTable t_avx512{fwd_plan_simd,
                                    avx512::fwd_num_work_items,
                                    avx512::fwd_run,
                                    fwd_nan_pass_simd,
                                    bwd_plan_simd,
                                    avx512::bwd_num_work_items,
                                    avx512::bwd_run,
                                    avx512::peak_loop,
                                    avx512::peak_flops_per_iter,
                                    avx512::read_sum};
  if (isa == Isa::kAvx512) return t_avx512;
#ifdef FAL_WITH_AMX
  static const KernelTable t_amx{fwd_plan_simd,
                                 avx512::fwd_num_work_items_amx,
                                 avx512::fwd_run_amx,
                                 fwd_nan_pass_amx,
                                 bwd_plan_simd,
                                 avx512::bwd_num_work_items,
                                 avx512::bwd_run_amx,
                                 avx512::peak_loop_amx,
                                 avx512::peak_flops_per_iter_amx,
                                 avx512::read_sum};
  if (isa == Isa::kAmx) return t_amx;
#endif
#endif
  (void)isa;
  return scalar;
}

float peak_loop_scalar(int /*kind*/, int64_t iters) {
  float acc[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  for (int64_t it = 0; it < iters; ++it)
    for (float& a : acc) a = a * 0.999999f + 1e-7f;
  float s = 0;
  for (float a : acc) s += a;
  return s;
}
double peak_flops_per_iter_scalar(int /*kind*/) { return 8 * 2.0; }
float read_sum_scalar(int /*kind*/, const float* p, int64_t n) {
  float s[8] = {};
  for (int64_t i = 0; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += p[i + j];
  float t = 0;
  for (float x : s) t += x;
  return t;
}

}  // namespace fal::cpu
