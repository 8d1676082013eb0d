// isa_ns.h -- translation units compiled with ISA-specific flags (csrc/cpu/simd, FAL_SIMD_*) see
// the shared inline helpers (numeric.h, attn_math.h, tile_io.h) inside an inline namespace named
// after the ISA. Source code still says fal::Visibility etc., but the symbols differ per ISA, so
// the linker can never hand an AVX-512 copy of a helper to the portable path (weak symbols are
// emitted whenever a helper is not inlined, e.g. in the sanitizer build).
#pragma once
#if defined(FAL_SIMD_AVX512)
#define FAL_ISA_NS_BEGIN inline namespace simd_avx512 {
#define FAL_ISA_NS_END }
#elif defined(FAL_SIMD_AVX2)
#define FAL_ISA_NS_BEGIN inline namespace simd_avx2 {
#define FAL_ISA_NS_END }
#else
#define FAL_ISA_NS_BEGIN
#define FAL_ISA_NS_END
#endif
