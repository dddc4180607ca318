// The disk tier's I/O engine: a persistent pool of threads that run positional reads and writes
// (pread/pwrite, usually on O_DIRECT descriptors) off the JavaScript thread.
//
// A caller submits a Group: one or more Requests {fd, buffer, length, offset, read|write|sync} that
// complete together. Each request is cut into chunks of `chunk_bytes` (4 MiB by default) that the
// threads claim one by one, so a large request has several chunks in flight at once and a batch
// of small ones runs side by side. Chunks are not separate objects: a request carries a claim
// counter and a countdown, so nothing is allocated per chunk.
//
// When the last chunk of the last request finishes, the group's `on_done` runs on the I/O thread
// that finished it (napi/io.cpp hands the group to the JavaScript thread from there).
//
// Two priorities: a thread takes the next chunk of an urgent request before any chunk of a
// background one. The zig-zag schedule prefetches the next layer's weights (hundreds of MiB) in
// the background while the KV cache blocks of the next batch (a few MiB, needed within one batch's
// compute) are urgent; first come, first served made every cache read wait behind the weights.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tierlm {
namespace io {

enum class Op : uint8_t { Read, Write, Sync };

enum class Priority : uint8_t { Urgent = 0, Background = 1 };

// What the pool knows about an open file: its path (for error messages) and whether it was opened
// with O_DIRECT. A buffered file's reads drop the pages they read (posix_fadvise DONTNEED) and its
// writes are flushed and dropped, so that later reads never come from the page cache either way.
struct FileInfo {
  int fd = -1;
  std::string path;
  bool direct = false;
  std::atomic<int> pending{0};  // requests in flight on this file (close refuses while > 0)
};

struct Group;

struct Request {
  Group* group = nullptr;
  std::shared_ptr<FileInfo> file;
  Op op = Op::Read;
  uint8_t* data = nullptr;
  uint64_t length = 0;
  uint64_t offset = 0;  // in the file
  // Set by the pool on submit.
  uint64_t chunk_size = 0;
  uint32_t chunks = 0;
  uint32_t next_chunk = 0;            // guarded by the pool's queue lock
  std::atomic<uint32_t> remaining{0};  // chunks not yet finished
};

// The first failure of a group, with enough detail to name it: errno (0 for end of file), the
// system call that failed, the file offset where it started (for end of file: where the file's
// data ended) and the range the request asked for.
struct Failure {
  int err = 0;
  bool eof = false;
  Op op = Op::Read;
  const char* syscall = "";  // "pread", "pwrite", "fsync", "sync_file_range", "posix_fadvise"
  uint64_t offset = 0;
  uint64_t request_offset = 0;
  uint64_t request_length = 0;
  std::string path;
};

struct Group {
  std::unique_ptr<Request[]> requests;  // filled before submit
  size_t count = 0;
  std::atomic<uint32_t> pending{0};
  std::atomic<bool> failed{false};
  std::mutex failure_mu;
  Failure failure;
  Op op = Op::Read;  // the kind of work, for the stats clock (a group holds one kind)
  Priority priority = Priority::Urgent;
  uint64_t bytes = 0;
  void (*on_done)(Group*) = nullptr;
  void* user = nullptr;  // owned by napi/io.cpp
};

struct Stats {
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  double read_seconds = 0;   // wall time with at least one read group in flight
  double write_seconds = 0;  // same for writes (and syncs)
  uint64_t requests = 0;
  uint64_t groups = 0;
  int threads = 0;
  uint64_t chunk_bytes = 0;
};

class IoPool {
 public:
  static IoPool& instance();  // created on first use with 4 threads; never destroyed

  // Queues every request of `g`. `g` must have at least one request and stay alive until on_done.
  void submit(Group* g);

  void set_threads(int n);  // 1..64; shrinking lets the extra threads finish their chunk first
  int threads() const;
  void set_chunk_bytes(uint64_t bytes);  // a multiple of 4096, >= 64 KiB
  uint64_t chunk_bytes() const { return chunk_bytes_.load(); }
  Stats stats() const;

 private:
  IoPool();
  struct Worker {
    std::atomic<bool> stop{false};
  };
  void loop(std::shared_ptr<Worker> self);
  void run_chunk(Request* r, uint32_t chunk);
  void finish_request(Request* r);
  void clock_start(Op op);
  void clock_stop(Op op);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Request*> queue_[2];  // by Priority
  std::vector<std::shared_ptr<Worker>> workers_;
  std::atomic<uint64_t> chunk_bytes_{4u << 20};

  // Stats.
  std::atomic<uint64_t> bytes_read_{0}, bytes_written_{0}, requests_{0}, groups_{0};
  mutable std::mutex clock_mu_;
  int active_[2] = {0, 0};
  int64_t since_ns_[2] = {0, 0};
  int64_t busy_ns_[2] = {0, 0};
};

}  // namespace io
}  // namespace tierlm
