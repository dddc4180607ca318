// Aligned allocations for kernels and direct (O_DIRECT) disk I/O, with a running total so the
// engine can account for memory that lives outside the JavaScript heap.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tierlm {

constexpr size_t kIoAlignment = 4096;

// Returns nullptr when the allocation fails. Memory is zero-filled when `zero` is set.
void* aligned_alloc_tracked(size_t bytes, size_t alignment, bool zero);
void aligned_free_tracked(void* p, size_t bytes);
// Bytes currently held by aligned_alloc_tracked.
int64_t tracked_bytes();

}  // namespace tierlm
