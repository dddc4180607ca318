// Decode's in-stream prefetch walk, shared by the per-ISA decode cores (attention_avx512.cpp,
// attention_avx2.cpp): included inside each file's anonymous namespace (its copy internal to that
// object); _mm_prefetch is SSE, in every x86-64 level. The includer includes <immintrin.h> first.
#pragma once

// The rows one core call reads, in the order it reads them (each block's keys, then the block's
// values), for the in-stream prefetch. reach(p0, vphase, j), called as row j of block p0's keys (or
// values) is read, prefetches every row up to `ahead` rows further along that the earlier calls did
// not (so a row is prefetched once, none skipped). The order is a chain of contiguous segments (a
// block's keys, its values, the next block's keys, ...) walked by a cursor, one prefetch a line:
// the row-at-a-time walk it replaces cost more than the item's arithmetic on OPT's 128-byte rows.
// With v null the stream is the n key rows alone (sparse decode's score pass).
struct PfStream {
  const char* k;
  const char* v;
  int64_t rb, n, ahead;
  int64_t next = 0;                        // stream rows prefetched
  int64_t seg_p0 = 0, seg_row = 0, seg_nb; // the segment holding row `next`: its block, first row, rows
  bool seg_v = false;                      // ... and whether it is the block's values
  PfStream(const char* k_, const char* v_, int64_t rb_, int64_t n_, int64_t ahead_)
      : k(k_), v(v_), rb(rb_), n(n_), ahead(ahead_), seg_nb(n_ < kAttnBlock ? n_ : kAttnBlock) {}
  inline void reach(int64_t p0, bool vphase, int64_t j) {
    if (!v) {
      // Keys only (sparse decode's scores pass): one contiguous run of n rows.
      int64_t to = p0 + j + 1 + ahead;
      if (to > n) to = n;
      if (next >= to) return;
      const uintptr_t a0 = reinterpret_cast<uintptr_t>(k + next * rb) & ~uintptr_t(63);
      const uintptr_t a1 = reinterpret_cast<uintptr_t>(k + to * rb);
      for (uintptr_t a = a0; a < a1; a += 64) _mm_prefetch(reinterpret_cast<const char*>(a), _MM_HINT_T2);
      next = to;
      return;
    }
    const int64_t nb = n - p0 < kAttnBlock ? n - p0 : kAttnBlock;
    int64_t to = 2 * p0 + (vphase ? nb : 0) + j + 1 + ahead;
    if (to > 2 * n) to = 2 * n;
    while (next < to) {
      if (next == seg_row + seg_nb) {
        seg_row += seg_nb;
        if (!seg_v) {
          seg_v = true;
        } else {
          seg_v = false;
          seg_p0 += kAttnBlock;
          seg_nb = n - seg_p0 < kAttnBlock ? n - seg_p0 : kAttnBlock;
        }
      }
      const int64_t upto = to < seg_row + seg_nb ? to : seg_row + seg_nb;
      const char* base = (seg_v ? v : k) + seg_p0 * rb;
      const uintptr_t a0 = reinterpret_cast<uintptr_t>(base + (next - seg_row) * rb) & ~uintptr_t(63);
      const uintptr_t a1 = reinterpret_cast<uintptr_t>(base + (upto - seg_row) * rb);
      for (uintptr_t a = a0; a < a1; a += 64) _mm_prefetch(reinterpret_cast<const char*>(a), _MM_HINT_T2);
      next = upto;
    }
  }
};
