#include "core/aligned.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace tierlm {
namespace {
std::atomic<int64_t> g_tracked{0};
}

bool huge_pages_for(size_t bytes) {
  const char* e = std::getenv("TIERLM_HUGE_PAGES");
  return bytes >= kHugePageMin && !(e && std::strcmp(e, "0") == 0);
}

size_t advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t b = (a + kHugePage - 1) & ~uintptr_t(kHugePage - 1), e = (a + bytes) & ~uintptr_t(kHugePage - 1);
  if (e <= b || madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE) != 0) return 0;
  return e - b;
#else
  (void)p;
  (void)bytes;
  return 0;
#endif
}

void* aligned_alloc_tracked(size_t bytes, size_t alignment, bool zero) {
  void* p = nullptr;
  size_t size = bytes == 0 ? alignment : bytes;
  // (a large buffer starts on a huge page, so none of it is lost to a partial one at its start)
  const bool huge = huge_pages_for(size);
  if (huge && alignment < kHugePage) alignment = kHugePage;
  if (posix_memalign(&p, alignment, size) != 0) return nullptr;
  if (huge) advise_huge_pages(p, size);
  if (zero) std::memset(p, 0, size);
  g_tracked.fetch_add(static_cast<int64_t>(bytes), std::memory_order_relaxed);
  return p;
}

void aligned_free_tracked(void* p, size_t bytes) {
  if (!p) return;
  std::free(p);
  g_tracked.fetch_sub(static_cast<int64_t>(bytes), std::memory_order_relaxed);
}

int64_t tracked_bytes() { return g_tracked.load(std::memory_order_relaxed); }

}  // namespace tierlm
