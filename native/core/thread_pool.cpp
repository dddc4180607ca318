#include "core/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace tierlm {

namespace {
thread_local bool t_in_pool_job = false;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

inline void prefetch_line(const char* p) {
#if defined(__GNUC__)
  __builtin_prefetch(p, 0, 2);  // into L2 (and, as L2 evicts, the shared L3)
#else
  (void)p;
#endif
}
}  // namespace

int hardware_threads() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

struct ThreadPool::State {
  std::mutex job_mutex;  // one job at a time
  std::mutex mu;
  std::condition_variable wake;
  std::vector<std::thread> workers;
  const std::function<void(int, int)>* job = nullptr;
  std::atomic<uint64_t> generation{0};
  std::atomic<int> pending{0};
  int nthreads = 1;
  bool stopping = false;
  // Idle prefetch hint (prefetch_while_idle): a range, its slices, and a serial number that a
  // worker compares with the last one it took.
  std::atomic<uint64_t> hint_serial{0};
  std::atomic<const char*> hint_ptr{nullptr};
  std::atomic<int64_t> hint_bytes{0};
  std::atomic<int> hint_slices{1};
  std::atomic<int64_t> idle_bytes{ThreadPool::kIdlePrefetchBytes};  // TIERLM_IDLE_PREFETCH_MB overrides (0: off)
  std::atomic<int64_t> spin_us{ThreadPool::kSpinMicros};  // TIERLM_POOL_SPIN_US overrides (0: sleep at once)

  // Prefetches worker `index`'s share of the hint in 4 KiB steps until a new job arrives.
  void idle_prefetch(int index, uint64_t seen, uint64_t& hint_seen) {
    const uint64_t serial = hint_serial.load(std::memory_order_acquire);
    if (serial == hint_seen) return;
    hint_seen = serial;
    const char* p = hint_ptr.load(std::memory_order_relaxed);
    const int64_t bytes = hint_bytes.load(std::memory_order_relaxed);
    const int slices = std::max(1, hint_slices.load(std::memory_order_relaxed));
    if (!p || bytes <= 0) return;
    // Worker i covers slices i-1, i-1+workers, ...; 4 KiB of each in turn, so every slice's
    // first rows come first. A slice starts where the GEMV's thread of that index starts.
    const int workers = nthreads - 1;
    const int64_t per = std::min<int64_t>(bytes / slices, idle_bytes.load(std::memory_order_relaxed) / slices);
    for (int64_t o = 0; o < per; o += 4096) {
      if (generation.load(std::memory_order_acquire) != seen) return;
      const int64_t e = std::min<int64_t>(per - o, 4096);
      for (int sl = index - 1; sl < slices; sl += workers) {
        const char* b = p + bytes / slices * sl + o;
        for (int64_t l = 0; l < e; l += 64) prefetch_line(b + l);
      }
    }
  }

  // `seen` starts at the generation current when the worker was created, so a worker started by
  // resize() does not rerun the last (finished) job.
  void worker_loop(int index, uint64_t seen) {
    uint64_t hint_seen = hint_serial.load(std::memory_order_acquire);
    for (;;) {
      // Spin before sleeping (spin_micros, checking the clock every 64 pauses): decode issues
      // kernels back to back with the calling thread's small ops between them, and a sleeping
      // worker's wake-up costs tens to hundreds of microseconds (more under a hypervisor, which
      // deschedules an idle virtual CPU). 1 ms rather than ~50 µs (the 2000 pauses before): OPT-1.3B
      // decode at batch 16 took 0.93 of the time, batch 32 0.98, batch-1 Llama 0.99 (docs/benchmarks.md).
      uint64_t gen = generation.load(std::memory_order_acquire);
      const auto spin_for = std::chrono::microseconds(spin_us.load(std::memory_order_relaxed));
      const auto spin_start = std::chrono::steady_clock::now();
      for (int spin = 0; gen == seen; spin++) {
        idle_prefetch(index, seen, hint_seen);
        cpu_relax();
        gen = generation.load(std::memory_order_acquire);
        if ((spin & 63) == 0 && std::chrono::steady_clock::now() - spin_start >= spin_for) break;
      }
      if (gen == seen) {
        std::unique_lock<std::mutex> lock(mu);
        wake.wait(lock, [&] { return stopping || generation.load(std::memory_order_acquire) != seen; });
        if (stopping) return;
        gen = generation.load(std::memory_order_acquire);
      }
      seen = gen;
      t_in_pool_job = true;
      (*job)(index, nthreads);
      t_in_pool_job = false;
      pending.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  void start(int n) {
    nthreads = std::max(1, n);
    stopping = false;
    const uint64_t gen = generation.load(std::memory_order_acquire);
    for (int i = 1; i < nthreads; i++) workers.emplace_back([this, i, gen] { worker_loop(i, gen); });
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping = true;
    }
    wake.notify_all();
    for (auto& t : workers) t.join();
    workers.clear();
  }
};

ThreadPool& ThreadPool::instance() {
  static ThreadPool pool;
  return pool;
}

ThreadPool::ThreadPool() : s_(new State) {
  int n = hardware_threads();
  if (const char* env = std::getenv("TIERLM_THREADS")) {
    int v = std::atoi(env);
    if (v > 0) n = v;
  }
  if (const char* env = std::getenv("TIERLM_IDLE_PREFETCH_MB")) s_->idle_bytes.store(int64_t(std::atoi(env)) << 20);
  if (const char* env = std::getenv("TIERLM_POOL_SPIN_US")) {
    // A count of microseconds, or the default (nothing here can report an error).
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    if (end != env && *end == '\0' && v >= 0 && v <= kMaxSpinMicros) s_->spin_us.store(v);
  }
  s_->start(n);
}

ThreadPool::~ThreadPool() {
  s_->stop();
  delete s_;
}

int ThreadPool::size() const { return s_->nthreads; }

void ThreadPool::resize(int n) {
  std::lock_guard<std::mutex> job_lock(s_->job_mutex);
  s_->stop();
  s_->start(n);
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
  if (t_in_pool_job || s_->nthreads == 1) {
    fn(0, 1);
    return;
  }
  std::lock_guard<std::mutex> job_lock(s_->job_mutex);
  s_->job = &fn;
  s_->pending.store(s_->nthreads - 1, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(s_->mu);
    s_->generation.fetch_add(1, std::memory_order_acq_rel);
  }
  s_->wake.notify_all();
  t_in_pool_job = true;
  fn(0, s_->nthreads);
  t_in_pool_job = false;
  while (s_->pending.load(std::memory_order_acquire) != 0) cpu_relax();
  s_->job = nullptr;
}

int64_t ThreadPool::idle_prefetch_bytes() const { return s_->idle_bytes.load(std::memory_order_relaxed); }

void ThreadPool::set_idle_prefetch_bytes(int64_t bytes) { s_->idle_bytes.store(bytes, std::memory_order_relaxed); }

int64_t ThreadPool::spin_micros() const { return s_->spin_us.load(std::memory_order_relaxed); }

void ThreadPool::set_spin_micros(int64_t us) { s_->spin_us.store(std::max<int64_t>(0, us), std::memory_order_relaxed); }

void ThreadPool::prefetch_while_idle(const void* p, int64_t bytes, int slices) {
  if (s_->nthreads == 1 || s_->idle_bytes.load(std::memory_order_relaxed) <= 0) return;
  s_->hint_ptr.store(static_cast<const char*>(p), std::memory_order_relaxed);
  s_->hint_bytes.store(bytes, std::memory_order_relaxed);
  s_->hint_slices.store(slices, std::memory_order_relaxed);
  s_->hint_serial.fetch_add(1, std::memory_order_release);
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (n <= grain || t_in_pool_job || s_->nthreads == 1) {
    fn(0, n);
    return;
  }
  // Chunks: several per thread so uneven work balances, none smaller than grain.
  int64_t chunk = std::max<int64_t>(grain, n / (static_cast<int64_t>(s_->nthreads) * 4));
  std::atomic<int64_t> next{0};
  run([&](int, int) {
    for (;;) {
      int64_t begin = next.fetch_add(chunk, std::memory_order_relaxed);
      if (begin >= n) break;
      fn(begin, std::min(n, begin + chunk));
    }
  });
}

}  // namespace tierlm
