// numeric.h -- storage types and conversions shared by host and device code, torch-free.
// bf16 / fp16 are carried as raw 16-bit patterns on the host; conversions round to nearest even.
#pragma once
#include "flashattn_lite/isa_ns.h"
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FAL_HD __host__ __device__ __forceinline__
#else
#define FAL_HD inline
#endif

namespace fal {
FAL_ISA_NS_BEGIN

struct bf16_t {
  uint16_t bits;
};
struct fp16_t {
  uint16_t bits;
};

FAL_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
FAL_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

FAL_HD float to_float(bf16_t x) { return bits_to_float(uint32_t(x.bits) << 16); }

FAL_HD bf16_t to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                                  // round to nearest even
  return bf16_t{uint16_t(u >> 16)};
}

FAL_HD float to_float(fp16_t x) {
  const uint32_t h = x.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    // subnormal: value = man * 2^-24
    float f = float(man) * 5.9604644775390625e-08f;
    return sign ? -f : f;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

FAL_HD fp16_t to_fp16(float f) {
  uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return fp16_t{uint16_t(sign | 0x7e00u)};   // nan
  if (u >= 0x477ff000u) return fp16_t{uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: inf
  if (u < 0x38800000u) {  // below the smallest normal (2^-14): subnormal or zero
    // value in units of 2^-24, rounded to nearest even
    const float a = bits_to_float(u) * 16777216.0f;  // exact scaling by 2^24
    uint32_t m = uint32_t(a);
    const float rem = a - float(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
    return fp16_t{uint16_t(sign | m)};
  }
  // normal: rebias exponent 127 -> 15, round mantissa 23 -> 10 bits (nearest even)
  uint32_t r = u - 0x38000000u;  // exponent - 112
  r += 0xfffu + ((r >> 13) & 1u);
  return fp16_t{uint16_t(sign | (r >> 13))};
}

// Load/store helpers used by kernels templated on the storage type.
FAL_HD float load_as_float(const float* p) { return *p; }
FAL_HD float load_as_float(const bf16_t* p) { return to_float(*p); }
FAL_HD float load_as_float(const fp16_t* p) { return to_float(*p); }
FAL_HD double load_as_double(const double* p) { return *p; }

template <typename T>
struct StoreFrom;
template <>
struct StoreFrom<float> {
  FAL_HD static float cvt(float x) { return x; }
};
template <>
struct StoreFrom<double> {
  FAL_HD static double cvt(double x) { return x; }
};
template <>
struct StoreFrom<bf16_t> {
  FAL_HD static bf16_t cvt(float x) { return to_bf16(x); }
};
template <>
struct StoreFrom<fp16_t> {
  FAL_HD static fp16_t cvt(float x) { return to_fp16(x); }
};

FAL_ISA_NS_END
}  // namespace fal
