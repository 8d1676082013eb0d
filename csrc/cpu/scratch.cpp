// scratch.cpp -- the kernels' scratch allocation (cpu_kernels.h): huge pages for large buffers.
#include <cstdlib>
#include <new>

#include "cpu/cpu_kernels.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fal::cpu {

namespace {
constexpr size_t kHugePage = size_t(2) << 20;
}

void* alloc_scratch(size_t bytes) {
  const size_t align = bytes >= kHugePage ? kHugePage : 64;
  const size_t size = (bytes + align - 1) / align * align;
  void* p = nullptr;
  if (posix_memalign(&p, align, size == 0 ? align : size) != 0) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
  if (align == kHugePage) madvise(p, size, MADV_HUGEPAGE);  // advice only: a failure changes nothing
#endif
  return p;
}

void free_scratch(void* p) { std::free(p); }

}  // namespace fal::cpu
