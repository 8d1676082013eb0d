// peak_fma.cpp -- this machine's peak vector throughput on one ISA, for the "% of peak" columns of
// the CPU benchmark: independent chains of fp32 FMAs on every thread, of bf16 dot products where
// the ISA has them (vdpbf16ps, 64 FLOPs each on zmm; with `amx`, AMX tdpbf16ps too: 16 x 16 x 32
// products and sums each), and the read bandwidth of memory (every
// thread sums its slice of a 1 GiB buffer with vector loads and software prefetch, best of 5
// passes of two prefetch variants: the ceiling for decode, which streams K and V once). Prints JSON.
//
//   peak_fma THREADS [amx|avx512|avx2] [read]   (default: the best ISA this CPU runs; read: bandwidth only)
//
// One binary for every ISA: each kernel carries its ISA as a target attribute and runs only when
// __builtin_cpu_supports says the CPU has it, so an AVX2 machine measures its AVX2 peak and an
// AVX-512 machine can measure both (cpu_bench.py --isa avx2).
// Build: g++ -O3 -std=c++17 -pthread bench/peak_fma.cpp -o peak_fma  (cpu_bench.py does it)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cpuid.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr long kIters = 20000000;  // per thread
// Independent accumulators: more than FMA latency x FMA ports (4 x 2), within the register file
// (zmm: 32, ymm: 16 with 2 constants).
constexpr int kChains512 = 24;
constexpr int kChains256 = 12;

#define FAL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))
#define FAL_AVX2 __attribute__((target("avx2,fma")))

FAL_AVX512 double fp32_avx512(long iters) {
  __m512 acc[kChains512];
  for (int i = 0; i < kChains512; ++i) acc[i] = _mm512_set1_ps(float(i) * 1e-3f);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it)
#pragma GCC unroll 32
    for (int i = 0; i < kChains512; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  float s = 0;
  for (int i = 0; i < kChains512; ++i) s += _mm512_reduce_add_ps(acc[i]);
  return double(s);
}

FAL_AVX512 double bf16_avx512(long iters) {
  __m512 acc[kChains512];
  for (int i = 0; i < kChains512; ++i) acc[i] = _mm512_set1_ps(0.f);
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
  for (long it = 0; it < iters; ++it)
#pragma GCC unroll 32
    for (int i = 0; i < kChains512; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  float s = 0;
  for (int i = 0; i < kChains512; ++i) s += _mm512_reduce_add_ps(acc[i]);
  return double(s);
}

// AMX: tdpbf16ps into 4 independent C tiles (16 x 16 fp32 += 16 x 32 bf16 . 32 x 16 bf16); an
// iteration of the caller is 1 / kAmxDiv of a round of 4 (the tile unit runs ~20x the zmm rate).
#define FAL_AMX __attribute__((target("amx-tile,amx-bf16")))
constexpr long kAmxDiv = 64;
struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
constexpr TileConfig kTiles = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

// AMX-BF16 and AMX-TILE (CPUID 7.0 EDX bits 22, 24), the OS saving tile state (XCR0 bits 17, 18)
// and Linux granting it to this process (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
bool amx_usable() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) || !(d & (1u << 24))) return false;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 0x60000u) == 0x60000u && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

FAL_AMX double bf16_amx(long iters) {
  alignas(64) uint16_t a[16 * 32];
  alignas(64) float c[16 * 16];
  for (uint16_t& x : a) x = 0x3a83;  // 1e-3 in bf16
  _tile_loadconfig(&kTiles);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, a, 64);
  _tile_loadd(5, a, 64);
  _tile_loadd(6, a, 64);
  _tile_loadd(7, a, 64);
  for (long it = 0; it < iters / kAmxDiv; ++it) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, 64);
  _tile_release();
  return double(c[0]);
}

FAL_AVX2 double fp32_avx2(long iters) {
  __m256 acc[kChains256];
  for (int i = 0; i < kChains256; ++i) acc[i] = _mm256_set1_ps(float(i) * 1e-3f);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it)
#pragma GCC unroll 32
    for (int i = 0; i < kChains256; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  alignas(32) float t[8];
  float s = 0;
  for (int i = 0; i < kChains256; ++i) {
    _mm256_store_ps(t, acc[i]);
    for (float x : t) s += x;
  }
  return double(s);
}

// Every thread warms up (clocks settle), meets the others at a barrier, then times its own loop;
// the machine's rate is the sum of the per-thread rates.
double gflops(double (*f)(long), int threads, double flops_per_iter) {
  std::vector<std::thread> ts;
  std::vector<double> rate(threads), sink(threads);
  std::atomic<int> ready{0};
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      sink[t] = f(kIters / 4);
      ready.fetch_add(1);
      while (ready.load() < threads) {
      }
      const auto t0 = std::chrono::steady_clock::now();
      sink[t] += f(kIters);
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      rate[t] = double(kIters) * flops_per_iter / sec / 1e9;
    });
  for (auto& t : ts) t.join();
  double s = 0, r = 0;
  for (int t = 0; t < threads; ++t) s += sink[t], r += rate[t];
  if (s == 12345.678) std::printf(" ");  // keep the results alive
  return r;
}

// One thread's sum over buf[lo, hi) with 4 independent vector accumulators, prefetching Ahead
// bytes ahead (a line per iteration) into L1 (T1 = false) or L2 (T1 = true); read_gbs keeps the better of two: T0 4 KB
// ahead, T1 16 KB ahead (Zen 4, 2026-12-01: 27 vs 35 GB/s -- the decode, T1 one block ahead,
// had read faster than the T0-only probe, "> 100 %" of it). Inline asm: GCC may drop _mm_prefetch.
template <bool T1, int Ahead>
FAL_AVX512 float sum_avx512(const float* buf, size_t lo, size_t hi) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = lo; i + 64 <= hi; i += 64) {
    const char* a = reinterpret_cast<const char*>(buf + i) + Ahead;
    if constexpr (T1)
      asm volatile("prefetcht1 %0" : : "m"(*a));
    else
      asm volatile("prefetcht0 %0" : : "m"(*a));
    s0 = _mm512_add_ps(s0, _mm512_load_ps(buf + i));
    s1 = _mm512_add_ps(s1, _mm512_load_ps(buf + i + 16));
    s2 = _mm512_add_ps(s2, _mm512_load_ps(buf + i + 32));
    s3 = _mm512_add_ps(s3, _mm512_load_ps(buf + i + 48));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

template <bool T1, int Ahead>
FAL_AVX2 float sum_avx2(const float* buf, size_t lo, size_t hi) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = lo; i + 32 <= hi; i += 32) {
    const char* a = reinterpret_cast<const char*>(buf + i) + Ahead;
    if constexpr (T1)
      asm volatile("prefetcht1 %0" : : "m"(*a));
    else
      asm volatile("prefetcht0 %0" : : "m"(*a));
    s0 = _mm256_add_ps(s0, _mm256_load_ps(buf + i));
    s1 = _mm256_add_ps(s1, _mm256_load_ps(buf + i + 8));
    s2 = _mm256_add_ps(s2, _mm256_load_ps(buf + i + 16));
    s3 = _mm256_add_ps(s3, _mm256_load_ps(buf + i + 24));
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  float s = 0;
  for (float x : t) s += x;
  return s;
}

// One pass of every thread over its slice of buf (n floats); returns GB/s of the whole pass.
double read_pass(float (*sum)(const float*, size_t, size_t), const float* buf, size_t n, int threads) {
  std::vector<std::thread> ts;
  std::vector<float> sink(threads);
  const auto t0 = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t) ts.emplace_back([&, t] { sink[t] = sum(buf, n / threads * t, n / threads * (t + 1)); });
  for (auto& t : ts) t.join();
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float s = 0;
  for (float x : sink) s += x;
  if (s == 12345.678f) std::printf(" ");
  return double(n) * sizeof(float) / sec / 1e9;
}

// The best of 5 passes of each sum (the prefetch variants).
double read_gbs(float (*sum_a)(const float*, size_t, size_t), float (*sum_b)(const float*, size_t, size_t),
                int threads) {
  const size_t n = size_t(1) << 28;  // 1 GiB: far beyond the caches, like a long KV cache
  float* buf = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  if (!buf) return 0;
  std::fill(buf, buf + n, 1e-9f);  // touch every page before timing
  double best = 0;
  for (int rep = 0; rep < 5; ++rep)
    best = std::max({best, read_pass(sum_a, buf, n, threads), read_pass(sum_b, buf, n, threads)});
  std::free(buf);
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool amx = has512 && amx_usable();
  const char* isa = argc > 2 ? argv[2] : (amx ? "amx" : has512 ? "avx512" : has2 ? "avx2" : "none");
  if (argc > 3 && std::strcmp(argv[3], "read") == 0) {  // the read bandwidth alone (beside each decode row)
    const bool avx512 = (std::strcmp(isa, "avx512") == 0 && has512) || (std::strcmp(isa, "amx") == 0 && amx);
    if (!avx512 && !(std::strcmp(isa, "avx2") == 0 && has2)) return 1;
    const double bw = avx512 ? read_gbs(sum_avx512<false, 4096>, sum_avx512<true, 16384>, threads)
                             : read_gbs(sum_avx2<false, 4096>, sum_avx2<true, 16384>, threads);
    std::printf("{\"isa\": \"%s\", \"threads\": %d, \"read_gbs\": %.1f}\n", isa, threads, bw);
    return 0;
  }
  if (std::strcmp(isa, "amx") == 0 && amx) {  // the avx512 peaks and the tile unit's
    const double f32 = gflops(fp32_avx512, threads, kChains512 * 32.0);
    const double bf16 = gflops(bf16_avx512, threads, kChains512 * 64.0);
    const double tiles = gflops(bf16_amx, threads, 4.0 * 16 * 16 * 32 * 2 / kAmxDiv);
    const double bw = read_gbs(sum_avx512<false, 4096>, sum_avx512<true, 16384>, threads);
    std::printf("{\"isa\": \"amx\", \"threads\": %d, \"fp32_fma_gflops\": %.1f, \"bf16_dot_gflops\": %.1f, "
                "\"amx_bf16_gflops\": %.1f, \"read_gbs\": %.1f}\n", threads, f32, bf16, tiles, bw);
  } else if (std::strcmp(isa, "avx512") == 0 && has512) {
    const double f32 = gflops(fp32_avx512, threads, kChains512 * 32.0);   // 16 lanes x (mul + add)
    const double bf16 = gflops(bf16_avx512, threads, kChains512 * 64.0);  // 32 bf16 products + 32 adds
    const double bw = read_gbs(sum_avx512<false, 4096>, sum_avx512<true, 16384>, threads);
    std::printf("{\"isa\": \"avx512\", \"threads\": %d, \"fp32_fma_gflops\": %.1f, \"bf16_dot_gflops\": %.1f, "
                "\"read_gbs\": %.1f}\n", threads, f32, bf16, bw);
  } else if (std::strcmp(isa, "avx2") == 0 && has2) {
    const double f32 = gflops(fp32_avx2, threads, kChains256 * 16.0);  // 8 lanes x (mul + add)
    const double bw = read_gbs(sum_avx2<false, 4096>, sum_avx2<true, 16384>, threads);
    std::printf("{\"isa\": \"avx2\", \"threads\": %d, \"fp32_fma_gflops\": %.1f, \"bf16_dot_gflops\": null, "
                "\"read_gbs\": %.1f}\n", threads, f32, bw);
  } else {
    std::printf("{\"isa\": \"%s\", \"error\": \"this CPU cannot run it\"}\n", isa);
    return 1;
  }
  return 0;
}
