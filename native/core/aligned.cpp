#include "core/aligned.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace tierlm {
namespace {
std::atomic<int64_t> g_tracked{0};
}

void* aligned_alloc_tracked(size_t bytes, size_t alignment, bool zero) {
  void* p = nullptr;
  size_t size = bytes == 0 ? alignment : bytes;
  if (posix_memalign(&p, alignment, size) != 0) return nullptr;
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
