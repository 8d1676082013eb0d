// micro_decode_walk.cpp -- the several-row decode's whole walk over a head's keys (decode_head.h's
// DecodeHead: init, run, finish -- the blocks, masks, softmax steps, prefetch pieces and products the
// package runs), called from a C++ loop, with the fp32 FMA rate probed in the same process: how far
// the walk is from the FMA bound (4 * rows * d FLOPs per key) with K / V in L2, in L3 and streamed
// from memory, with the software prefetch and without. On the FMA paths (every dtype on AVX2, fp32 /
// fp16 on AVX-512) also the block's products alone, on L2-resident rows: S = Q K^T
// (decode_qk_rows_grouped) and P V (decode_pv_rows), and the two with the softmax step
// (softmax_rows_step) between them. Timings here repeat within 1-2 % on a shared host (from L2 and
// L3; ~10 % streamed), where the package's calls from Python swing 5-10 %.
// One thread, one kv head, its query rows packed as rows (GQA), head-major K / V, D128.
//
// Build and run (from the repository root; not part of the package):
//   g++ -O3 -std=gnu++17 -fno-math-errno -mavx2 -mfma -mf16c -DFAL_SIMD_AVX2=1 -Icsrc/include -Icsrc
//     bench/micro_decode_walk.cpp -o /tmp/micro_decode_walk && /tmp/micro_decode_walk [bf16|fp16|fp32] [rows]
//     [t1|t0|nta]
// (AVX-512: -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -DFAL_SIMD_AVX512=1 for the AVX2
// flags.) Results: bench/results/cpu-2026-12-05-zen4.md.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/simd/decode_head.h"
#include "cpu/simd/probes.h"

using namespace fal::cpu::FAL_CPU_NS;

namespace fal::cpu {  // the package's scratch allocator (scratch.cpp) and prefetch choice (isa.cpp), here
void* alloc_scratch(size_t n) { return std::aligned_alloc(64, (n + 63) / 64 * 64); }
void free_scratch(void* p) { std::free(p); }
PrefetchHint g_hint = PrefetchHint::kT1;
const DecodePrefetch& decode_prefetch() {
  static DecodePrefetch p;
  p.head = p.rows = p.chunk16 = p.chunk32 = g_hint;
  return p;
}
}  // namespace fal::cpu

namespace {
constexpr int kD = 128;
#if defined(FAL_SIMD_AVX512)
constexpr const char* kIsa = "AVX-512";
#else
constexpr const char* kIsa = "AVX2";
#endif

double secs(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// fp32 FMAs per ns: the package's peak probe loop (probes.h).
__attribute__((noinline)) double probe() {
  const long n = 2000000;
  const auto t0 = std::chrono::steady_clock::now();
  const float z = fma_chains(n);
  const double s = secs(t0);
  if (z == 12345.f) std::puts("");  // keeps the chains
  return double(kPeakChains) * double(n) / s / 1e9;
}

template <typename T>
T from_float(float x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else if constexpr (std::is_same_v<T, fal::bf16_t>)
    return fal::to_bf16(x);
  else
    return fal::to_fp16(x);
}

template <typename T>
fal::DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return fal::DType::kFloat32;
  if constexpr (std::is_same_v<T, fal::bf16_t>) return fal::DType::kBFloat16;
  return fal::DType::kFloat16;
}

// 64-byte aligned arrays, as the package's tensors and scratch
template <typename T>
struct Arr {
  T* p;
  explicit Arr(size_t n) : p(static_cast<T*>(fal::cpu::alloc_scratch(n * sizeof(T)))) {}
  ~Arr() { fal::cpu::free_scratch(p); }
  Arr(const Arr&) = delete;
  Arr& operator=(const Arr&) = delete;
};

// ns per key of the walk over n keys (best of reps), K / V from k, v (n rows of kD each).
template <typename T>
double walk(int rows, int n, const T* k, const T* v, const T* q, T* o, int reps) {
  fal::FwdParams p;
  std::vector<float> lse(static_cast<size_t>(rows));
  p.q = q, p.k = k, p.v = v, p.o = o, p.lse = lse.data();
  p.b = 1, p.h = 1, p.h_kv = 1, p.s_q = rows, p.s_k = n, p.d = kD, p.d_v = kD, p.dtype = dtype_of<T>();
  p.q_row_stride = p.o_row_stride = kD, p.q_head_stride = p.o_head_stride = kD;
  p.q_batch_stride = p.o_batch_stride = int64_t(rows) * kD;
  p.k_row_stride = p.v_row_stride = kD;
  p.k_head_stride = p.v_head_stride = p.k_batch_stride = p.v_batch_stride = int64_t(n) * kD;
  p.lse_batch_stride = p.lse_head_stride = rows;
  p.scale = 0.088, p.scale_log2 = float(0.088 * 1.4426950408889634), p.num_splits = 1;
  using H = DecodeHead<T>;
  Arr<float> mem(H::floats(p)), scratch(H::scratch_floats(p));
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    H h;
    const auto t0 = std::chrono::steady_clock::now();
    h.init(p, 0, 0, mem.p, scratch.p);
    h.run(0, n);
    h.finish(0);
    best = std::min(best, secs(t0) * 1e9 / n);
  }
  return best;
}

// The block's products alone, block after block over n L2-resident keys (ns per key): S, P V, and
// S, the softmax step and P V in a row. The row-wise FMA path with kRowsP query rows.
constexpr int kRowsP = 4;
constexpr int kKB = 2 * 8;  // the AVX2 several-row block (block_keys); AVX-512 walks kN = 16 too
template <typename T>
__attribute__((noinline)) void qk(const float* qf, const T* const* kp, float* s) {
  for (int g = 0; g < kKB; g += kN) decode_qk_rows_grouped<kRowsP, T, kKB>(qf, kD, kp + g, kD, s + g);
}
__attribute__((noinline)) void sm(float* s, float* m, float* l, float* o) {
  bool seen[8];
  softmax_rows_step<kRowsP>(s, kKB, kKB, m, l, o, kD, kD, seen);
}
template <typename T>
__attribute__((noinline)) void pv(const float* p, const T* const* vp, float* o) {
  decode_pv_rows<kRowsP, T, kKB, kKB>(p, vp, kD, kKB, o, kD);
}

template <typename T>
void phases(int n, const T* k, const T* v, double fma_per_ns) {
  std::vector<const T*> kp(static_cast<size_t>(n)), vp(static_cast<size_t>(n));
  for (int j = 0; j < n; ++j) kp[size_t(j)] = k + size_t(j) * kD, vp[size_t(j)] = v + size_t(j) * kD;
  Arr<float> qf(kRowsP * kD), s(kRowsP * kKB), o(kRowsP * kD), pb(kRowsP * kKB), ml(16);  // ml: m, l
  for (int i = 0; i < kRowsP * kD; ++i) qf.p[i] = 0.001f * float(i % 7), o.p[i] = 0.f;
  for (int i = 0; i < kRowsP * kKB; ++i) pb.p[i] = 0.01f;
  auto reset = [&] {
    for (int r = 0; r < 8; ++r) ml.p[r] = 0.f, ml.p[8 + r] = 1.f;
  };
  auto time = [&](auto&& f) {
    double best = 1e30;
    for (int rep = 0; rep < 9; ++rep) {
      reset();
      const auto t0 = std::chrono::steady_clock::now();
      for (int pass = 0; pass < 8; ++pass)
        for (int j = 0; j + kKB <= n; j += kKB) f(j);
      best = std::min(best, secs(t0) * 1e9 / (8.0 * (n / kKB * kKB)));
    }
    return best;
  };
  const double t_qk = time([&](int j) { qk<T>(qf.p, kp.data() + j, s.p); });
  const double t_pv = time([&](int j) { pv<T>(pb.p, vp.data() + j, o.p); });
  const double t_all = time([&](int j) {
    qk<T>(qf.p, kp.data() + j, s.p);
    sm(s.p, ml.p, ml.p + 8, o.p);
    pv<T>(s.p, vp.data() + j, o.p);
  });
  const double half = double(kRowsP) * kD / kN / fma_per_ns;  // ns per key of S's (or P V's) FMAs at the probe
  std::printf(
      "  products alone (%d rows, %d-key blocks, K / V in L2): S %.2f ns/key (%.0f %% of its FMA bound), "
      "P V %.2f (%.0f %%); S, softmax step, P V in a row %.2f (%.0f %%)\n",
      kRowsP, kKB, t_qk, 100 * half / t_qk, t_pv, 100 * half / t_pv, t_all, 100 * 2 * half / t_all);
}

fal::cpu::PrefetchHint g_walk_hint = fal::cpu::PrefetchHint::kT1;  // the walk's hint (argv[3])
const char* g_walk_hint_name = "t1";

template <typename T>
void run(const char* name, int rows) {
  const int sizes[] = {512, 8192, 131072};  // K + V: 256 KB (L2), 4 MB (L3), 64 MB (memory) at bf16 / fp16
  const char* where[] = {"L2", "L3", "memory"};
  const int nmax = sizes[2];
  Arr<T> k(size_t(nmax) * kD), v(size_t(nmax) * kD), q(size_t(rows) * kD), o(size_t(rows) * kD);
  for (size_t i = 0; i < size_t(nmax) * kD; ++i) {
    k.p[i] = from_float<T>(0.01f * float((i * 37) % 101) - 0.5f);
    v.p[i] = from_float<T>(0.02f * float((i * 13) % 51) - 0.5f);
  }
  for (int i = 0; i < rows * kD; ++i) q.p[i] = from_float<T>(0.01f * float(i % 7));
  const double f = probe();
  const double bound = 4.0 * rows * kD / (2.0 * kN) / f;  // ns per key at the probe's FMA rate
  std::printf(
      "%s, %d rows, D%d, %s, 1 thread, prefetch %s: fp32 FMA probe %.2f FMA/ns (%d lanes); FMA bound %.2f ns/key%s\n",
      name, rows, kD, kIsa, g_walk_hint_name, f, kN, bound,
      kN == 16 && std::is_same_v<T, fal::bf16_t> ? " (bf16 runs on vdpbf16ps, twice that rate: past 100 %)" : "");
  for (int s = 0; s < 3; ++s) {
    const int n = sizes[s];
    const int reps = std::max(3, 4000000 / n);
    double t[2];
    const fal::cpu::PrefetchHint hints[2] = {g_walk_hint, fal::cpu::PrefetchHint::kNone};
    for (int hnt = 0; hnt < 2; ++hnt) {
      fal::cpu::g_hint = hints[hnt];
      t[hnt] = walk<T>(rows, n, k.p, v.p, q.p, o.p, reps);
    }
    const double gbs = 2.0 * kD * sizeof(T) / t[0];
    std::printf(
        "  walk, %6d keys (%s): %.2f ns/key (%.0f %% of the FMA bound, %.1f GB/s), without prefetch %.2f (%.0f %%)\n",
        n, where[s], t[0], 100 * bound / t[0], gbs, t[1], 100 * bound / t[1]);
  }
  fal::cpu::g_hint = g_walk_hint;
#if defined(FAL_SIMD_AVX512)
  if constexpr (std::is_same_v<T, fal::bf16_t>) return;  // bf16 on vdpbf16ps: micro_decode_bf16.cpp
#endif
  phases<T>(sizes[0], k.p, v.p, f);
}
}  // namespace

int main(int argc, char** argv) {
  const std::string dt = argc > 1 ? argv[1] : "bf16";
  const int rows = argc > 2 ? std::atoi(argv[2]) : 4;
  if (rows < 2 || rows > fal::cpu::kDecodeMaxRows) {
    std::fprintf(stderr, "rows: 2..%d\n", fal::cpu::kDecodeMaxRows);
    return 2;
  }
  if (argc > 3) {
    const std::string h = argv[3];
    g_walk_hint_name = argv[3];
    g_walk_hint = h == "t0"    ? fal::cpu::PrefetchHint::kT0
                  : h == "nta" ? fal::cpu::PrefetchHint::kNta
                               : fal::cpu::PrefetchHint::kT1;
  }
  if (dt == "fp32")
    run<float>("fp32", rows);
  else if (dt == "fp16")
    run<fal::fp16_t>("fp16", rows);
  else
    run<fal::bf16_t>("bf16", rows);
}
