// common.h -- what every SIMD stage shares, compiled into each per-ISA object (see vec.h): the
// scratch buffer, the tile shape with its register and cache budget, small helpers.
//
// Everything here lives in fal::cpu::<isa> (vec.h's FAL_CPU_NS) and an anonymous namespace: each
// object gets its own internal copies, so no inline function or template instantiation becomes a
// weak symbol the linker could hand, compiled with AVX-512 flags, to the portable path
// (tools/check_isa_symbols.sh checks every SIMD object). Hence no std containers or algorithms:
// only Buf and fill.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "cpu/cpu_kernels.h"
#include "cpu/simd/vec.h"
#include "cpu/tile_io.h"
#include "flashattn_lite/attn_math.h"
#include "flashattn_lite/online_softmax.h"

namespace fal::cpu::FAL_CPU_NS {
namespace {

// A scratch array; trivial element types come from alloc_scratch (cpu_kernels.h: huge pages for 2 MB
// and more).
template <typename T>
class Buf {
 public:
  Buf() = default;
  explicit Buf(size_t n, T v = T()) { assign(n, v); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { release(); }
  void resize(size_t n) {  // contents unspecified
    if (n > cap_) {
      release();
      if constexpr (std::is_trivial_v<T>)
        data_ = static_cast<T*>(fal::cpu::alloc_scratch(n * sizeof(T)));
      else
        data_ = new T[n];
      cap_ = n;
    }
    n_ = n;
  }
  void assign(size_t n, T v) {
    resize(n);
    for (size_t i = 0; i < n; ++i) data_[i] = v;
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  T* begin() { return data_; }
  T* end() { return data_ + n_; }
  size_t size() const { return n_; }
  T& operator[](size_t i) { return data_[i]; }
  void swap(Buf& o) noexcept {  // the two arrays trade places (no copy)
    std::swap(data_, o.data_);
    std::swap(n_, o.n_);
    std::swap(cap_, o.cap_);
  }

 private:
  void release() {
    if constexpr (std::is_trivial_v<T>)
      fal::cpu::free_scratch(data_);
    else
      delete[] data_;
    data_ = nullptr;
    cap_ = n_ = 0;
  }
  T* data_ = nullptr;
  size_t n_ = 0, cap_ = 0;
};

template <typename T>
inline void fill(T* b, T* e, T v) {
  for (; b < e; ++b) *b = v;
}

inline bool has_nan(const float* x, int n) {
  for (int i = 0; i < n; ++i)
    if (x[i] != x[i]) return true;
  return false;
}

// Tile shape. Register budget of the microkernels (kRM rows x kNV vectors of accumulators, kNV
// panel loads, 1 broadcast): AVX-512 (32 zmm) 6 x 4 = 24 + 4 + 1 = 29; AVX2 (16 ymm) 6 x 2 = 12 +
// 2 + 1 = 15. Cache budget: a packed K^T + V tile is 2 * kBN * d * 4 B = 32 KB at d = 64 (L1/L2)
// and is reused by the 43 row groups of a forward work item (kQC).
constexpr int kRM = 6;                 // rows per microkernel
constexpr int kNV = kN == 16 ? 4 : 2;  // vectors per row in a microkernel
constexpr int kBN = 64;                // keys per tile (a multiple of kNV * kN)
// query rows per work item: whole row groups (256 rows left a 4-row group per item; 258 against
// 256, 2 threads, calls alternating in one process, Xeon 2026-12-02: AVX2 fp32 1.05x, fp16 1.023x,
// AVX-512 1.0-1.016x)
constexpr int kQC = 43 * kRM;
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kBN % (kNV * kN) == 0, "key tile must be a whole number of microkernel passes");

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

}  // namespace
}  // namespace fal::cpu::FAL_CPU_NS
