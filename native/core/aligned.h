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

// Transparent huge pages for large buffers that are streamed (packed weights, their resident
// stores): on Linux, a buffer of at least kHugePageMin bytes is marked MADV_HUGEPAGE before its
// pages are first touched, so the kernel backs it with 2 MiB pages where it can. A stream then
// crosses a page, and a TLB entry, every 2 MiB instead of every 4 KiB: the hardware prefetchers
// stop at page boundaries, and a core read RAM 10-20% faster through them on the machines of
// docs/benchmarks.md. Off with TIERLM_HUGE_PAGES=0 (read at each allocation). Nothing to do where
// the OS has no such advice.
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kHugePageMin = size_t(4) << 20;
// Whether a buffer of `bytes` gets the advice: large enough, and not turned off.
bool huge_pages_for(size_t bytes);
// Advises the whole 2 MiB pages inside [p, p + bytes); returns the bytes advised (0: none, or
// advice unavailable or refused).
size_t advise_huge_pages(void* p, size_t bytes);

}  // namespace tierlm
