// A persistent pool of compute threads, created once and reused by every kernel call.
//
// One job runs at a time (jobs from the main thread and the async dispatcher take turns); the
// calling thread works as thread 0, so a pool of n threads starts n - 1 workers. A kernel called
// from inside a pool job runs inline on the calling thread, so nesting never deadlocks.
#pragma once

#include <cstdint>
#include <functional>

namespace tierlm {

class ThreadPool {
 public:
  static ThreadPool& instance();

  // Total threads, the caller included. Defaults to the machine's cores.
  int size() const;
  // Stops the workers and starts n - 1 new ones; waits for a running job first.
  void resize(int n);

  // Calls fn(thread, nthreads) once on each of the pool's threads and returns when all are done.
  void run(const std::function<void(int thread, int nthreads)>& fn);

  // Splits [0, n) into chunks of at least `grain` and calls fn(begin, end) for each, on all
  // threads, chunks handed out dynamically. Small ranges run inline.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn);

  // While they wait for the next job, the workers read [p, p + bytes) into the cache (software
  // prefetch: it never faults, so a range freed meanwhile is harmless): the start of each of
  // `slices` equal parts of it (a GEMV hands thread i the i-th part of its rows), at most
  // idle_prefetch_bytes() in all; the next job stops them. A batch-1 decode step leaves the memory
  // idle while the calling thread runs the small ops between two GEMVs; the next GEMV then finds
  // its first rows in cache. Replaces a hint not yet taken.
  // idle_prefetch_bytes: kIdlePrefetchBytes unless TIERLM_IDLE_PREFETCH_MB (at start-up) or
  // set_idle_prefetch_bytes says otherwise; 0 turns the prefetch off.
  void prefetch_while_idle(const void* p, int64_t bytes, int slices);
  static constexpr int64_t kIdlePrefetchBytes = int64_t(12) << 20;
  int64_t idle_prefetch_bytes() const;
  void set_idle_prefetch_bytes(int64_t bytes);

  // How long an idle worker spins before it sleeps, in microseconds: kSpinMicros unless
  // TIERLM_POOL_SPIN_US (at start-up) or set_spin_micros says otherwise; 0 sleeps at once. Results
  // never depend on it; a shared machine may want less (a spinning worker holds its core).
  static constexpr int64_t kSpinMicros = 1000;
  static constexpr int64_t kMaxSpinMicros = 10000000;  // what TIERLM_POOL_SPIN_US and poolSpin() accept
  int64_t spin_micros() const;
  void set_spin_micros(int64_t us);

  ~ThreadPool();

 private:
  ThreadPool();
  struct State;
  State* s_;
};

// Cores available to this process (sched_getaffinity), at least 1.
int hardware_threads();

}  // namespace tierlm
