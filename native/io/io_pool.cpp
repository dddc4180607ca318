#include "io/io_pool.h"

#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

namespace tierlm {
namespace io {
namespace {

constexpr int kDefaultThreads = 4;
constexpr uint64_t kAlign = 4096;

int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

int clock_index(Op op) { return op == Op::Read ? 0 : 1; }

void record_failure(Request* r, const char* syscall, int err, bool eof, uint64_t offset) {
  Group* g = r->group;
  std::lock_guard<std::mutex> lock(g->failure_mu);
  if (g->failed.load()) return;  // keep the first
  g->failure.err = err;
  g->failure.eof = eof;
  g->failure.op = r->op;
  g->failure.syscall = syscall;
  g->failure.offset = offset;
  g->failure.request_offset = r->offset;
  g->failure.request_length = r->length;
  g->failure.path = r->file->path;
  g->failed.store(true);
}

}  // namespace

IoPool& IoPool::instance() {
  static IoPool* pool = new IoPool();  // never destroyed: its threads live for the process
  return *pool;
}

IoPool::IoPool() { set_threads(kDefaultThreads); }

void IoPool::set_threads(int n) {
  n = std::max(1, std::min(64, n));
  std::lock_guard<std::mutex> lock(mu_);
  while (static_cast<int>(workers_.size()) > n) {
    workers_.back()->stop.store(true);
    workers_.pop_back();
  }
  while (static_cast<int>(workers_.size()) < n) {
    auto w = std::make_shared<Worker>();
    workers_.push_back(w);
    std::thread([this, w] { loop(w); }).detach();
  }
  cv_.notify_all();  // stopped workers wake up and leave
}

int IoPool::threads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(workers_.size());
}

void IoPool::set_chunk_bytes(uint64_t bytes) {
  bytes = std::max<uint64_t>(64 << 10, bytes / kAlign * kAlign);
  bytes = std::min<uint64_t>(bytes, 1u << 30);
  chunk_bytes_.store(bytes);
}

void IoPool::submit(Group* g) {
  const uint64_t chunk = chunk_bytes_.load();
  g->pending.store(static_cast<uint32_t>(g->count));
  uint64_t bytes = 0;
  for (size_t i = 0; i < g->count; i++) {
    Request& r = g->requests[i];
    r.group = g;
    uint64_t n = r.op == Op::Sync || r.length == 0 ? 1 : (r.length + chunk - 1) / chunk;
    r.chunk_size = chunk;
    r.chunks = static_cast<uint32_t>(n);
    r.next_chunk = 0;
    r.remaining.store(r.chunks);
    r.file->pending.fetch_add(1);
    bytes += r.length;
  }
  g->bytes = bytes;
  requests_.fetch_add(g->count);
  groups_.fetch_add(1);
  clock_start(g->op);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& q = queue_[static_cast<int>(g->priority)];
    for (size_t i = 0; i < g->count; i++) q.push_back(&g->requests[i]);
  }
  cv_.notify_all();
}

void IoPool::loop(std::shared_ptr<Worker> self) {
  for (;;) {
    Request* r;
    uint32_t chunk;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return self->stop.load() || !queue_[0].empty() || !queue_[1].empty(); });
      if (self->stop.load()) return;
      auto& q = queue_[0].empty() ? queue_[1] : queue_[0];
      r = q.front();
      chunk = r->next_chunk++;
      if (r->next_chunk == r->chunks) q.pop_front();
      // Chunks are left: another thread can take the next one now.
      if (!queue_[0].empty() || !queue_[1].empty()) cv_.notify_one();
    }
    run_chunk(r, chunk);
    if (r->remaining.fetch_sub(1) == 1) finish_request(r);
  }
}

void IoPool::run_chunk(Request* r, uint32_t chunk) {
  FileInfo& f = *r->file;
  if (r->op == Op::Sync) {
    int rc;
    do rc = fsync(f.fd);
    while (rc != 0 && errno == EINTR);
    if (rc != 0) record_failure(r, "fsync", errno, false, 0);
    return;
  }
  if (r->group->failed.load()) return;  // the group already failed: skip the rest
  const uint64_t begin = static_cast<uint64_t>(chunk) * r->chunk_size;
  const uint64_t end = std::min<uint64_t>(r->length, begin + r->chunk_size);
  uint8_t* p = r->data + begin;
  const uint64_t off0 = r->offset + begin;
  const uint64_t len = end - begin;
  if (len == 0) return;
  const char* call = r->op == Op::Read ? "pread" : "pwrite";
  uint64_t done = 0;
  while (done < len) {
    ssize_t n;
    size_t want = static_cast<size_t>(len - done);
    off_t at = static_cast<off_t>(off0 + done);
    if (r->op == Op::Read) {
      n = pread(f.fd, p + done, want, at);
    } else {
      n = pwrite(f.fd, p + done, want, at);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      record_failure(r, call, errno, false, off0 + done);
      return;
    }
    if (n == 0) {
      if (r->op == Op::Read) {
        record_failure(r, call, 0, true, off0 + done);
      } else {
        record_failure(r, call, ENOSPC, false, off0 + done);  // a write that makes no progress
      }
      return;
    }
    done += static_cast<uint64_t>(n);
    // O_DIRECT only returns a short, unaligned count at the end of the file; asking again from an
    // unaligned offset would fail with EINVAL, so name it as what it is.
    if (f.direct && r->op == Op::Read && done < len && (static_cast<uint64_t>(n) % kAlign) != 0) {
      record_failure(r, call, 0, true, off0 + done);
      return;
    }
  }
  if (!f.direct) {
    // Keep the page cache out of it: later reads of this range must come from the disk. A failure
    // here is a failure of the transfer: sync_file_range reports write-back errors (EIO, ENOSPC on
    // a thin or network filesystem) that the pwrite itself did not.
    if (r->op == Op::Write) {
      int rc;
      do rc = sync_file_range(f.fd, static_cast<off_t>(off0), static_cast<off_t>(len),
                              SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
      while (rc != 0 && errno == EINTR);
      if (rc != 0) {
        record_failure(r, "sync_file_range", errno, false, off0);
        return;
      }
    }
    // posix_fadvise returns the error number instead of setting errno.
    int err = posix_fadvise(f.fd, static_cast<off_t>(off0), static_cast<off_t>(len), POSIX_FADV_DONTNEED);
    if (err != 0) {
      record_failure(r, "posix_fadvise", err, false, off0);
      return;
    }
  }
  if (r->op == Op::Read) {
    bytes_read_.fetch_add(len);
  } else {
    bytes_written_.fetch_add(len);
  }
}

void IoPool::finish_request(Request* r) {
  r->file->pending.fetch_sub(1);
  Group* g = r->group;
  if (g->pending.fetch_sub(1) == 1) {
    clock_stop(g->op);
    g->on_done(g);
  }
}

void IoPool::clock_start(Op op) {
  int i = clock_index(op);
  std::lock_guard<std::mutex> lock(clock_mu_);
  if (active_[i]++ == 0) since_ns_[i] = now_ns();
}

void IoPool::clock_stop(Op op) {
  int i = clock_index(op);
  std::lock_guard<std::mutex> lock(clock_mu_);
  if (--active_[i] == 0) busy_ns_[i] += now_ns() - since_ns_[i];
}

Stats IoPool::stats() const {
  Stats s;
  s.bytes_read = bytes_read_.load();
  s.bytes_written = bytes_written_.load();
  s.requests = requests_.load();
  s.groups = groups_.load();
  {
    std::lock_guard<std::mutex> lock(clock_mu_);
    int64_t now = now_ns();
    int64_t busy[2];
    for (int i = 0; i < 2; i++) busy[i] = busy_ns_[i] + (active_[i] > 0 ? now - since_ns_[i] : 0);
    s.read_seconds = static_cast<double>(busy[0]) * 1e-9;
    s.write_seconds = static_cast<double>(busy[1]) * 1e-9;
  }
  s.threads = threads();
  s.chunk_bytes = chunk_bytes_.load();
  return s;
}

}  // namespace io
}  // namespace tierlm
