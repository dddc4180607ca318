// Disk tier exports: files opened with O_DIRECT and asynchronous positional reads and writes on
// the I/O thread pool (io/io_pool.h). src/tensor/disk/io.ts wraps them.
//
//   ioOpen(path, 'r'|'rw'|'w', direct = true) -> {fd, direct}
//   ioClose(fd), ioSize(fd) -> bytes, ioTruncate(fd, bytes), ioAllocate(fd, bytes) -> bool
//   ioSync(fd) -> Promise<void>
//   ioRead(fd, typedArray, offset, background = false) / ioWrite(...) -> Promise<void>
//   ioReadv(fd, typedArrays[], offsets[], background = false) / ioWritev(...) -> Promise<void>, settles once
//   (background: queued behind every urgent transfer, see io/io_pool.h)
//   ioSetThreads(n, chunkBytes?), ioStats() -> {...}
//
// Promises settle through one ThreadSafeFunction per JavaScript environment, not through the
// compute dispatcher (napi/async.cpp), so disk transfers never wait behind kernels. The function
// is unref'd while nothing is in flight, so an idle pool does not keep the process alive.
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <napi.h>

#include "core/aligned.h"
#include "io/io_pool.h"
#include "napi/args.h"
#include "napi/os_error.h"
#include "napi/register.h"

namespace tierlm {
namespace {

using io::FileInfo;
using io::Group;
using io::IoPool;
using io::Op;
using io::Request;

constexpr uint64_t kAlign = kIoAlignment;
constexpr int64_t kMaxOffset = INT64_C(1) << 52;

const char* op_verb(Op op) { return op == Op::Read ? "reading" : op == Op::Write ? "writing" : "syncing"; }

// ---- open files -------------------------------------------------------------------------------

struct OpenFile {
  std::shared_ptr<FileInfo> info;
  bool writable = false;
  bool readable = true;
};

std::mutex files_mu;
std::unordered_map<int, OpenFile>& files() {
  static auto* m = new std::unordered_map<int, OpenFile>();
  return *m;
}

OpenFile lookup(const Napi::CallbackInfo& info, const char* fn) {
  int fd = static_cast<int>(int_arg(info, 0, "fd", 0, INT32_MAX));
  std::lock_guard<std::mutex> lock(files_mu);
  auto it = files().find(fd);
  if (it == files().end()) {
    throw Napi::Error::New(info.Env(), std::string(fn) + ": fd " + std::to_string(fd) +
                                           " is not a file opened with ioOpen (or it was closed)");
  }
  return it->second;
}

// ---- per-environment completion -----------------------------------------------------------------

struct EnvCtx;
struct Call;
void settle(Napi::Env env, Napi::Function, EnvCtx* ctx, Group* g);
using Tsfn = Napi::TypedThreadSafeFunction<EnvCtx, Group, settle>;

struct EnvCtx {
  Tsfn tsfn;
  int js_inflight = 0;  // JavaScript thread only: Ref while > 0
  std::mutex mu;
  std::condition_variable cv;
  int running = 0;  // groups whose buffers the I/O threads may still touch
  bool closed = false;
};

struct Call {
  Group group;
  Napi::Promise::Deferred deferred;
  std::vector<Napi::Reference<Napi::Value>> keep;
  EnvCtx* ctx = nullptr;
  explicit Call(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

std::mutex envs_mu;
std::unordered_map<napi_env, EnvCtx*>& envs() {
  static auto* m = new std::unordered_map<napi_env, EnvCtx*>();
  return *m;
}

// On environment teardown (a worker thread ending, the process exiting), wait for the I/O threads
// to finish with this environment's buffers before V8 frees them. Contexts are never freed: an
// I/O thread may still hold a pointer to one.
void env_cleanup(EnvCtx* ctx) {
  std::unique_lock<std::mutex> lock(ctx->mu);
  ctx->closed = true;
  ctx->cv.wait(lock, [&] { return ctx->running == 0; });
}

EnvCtx* env_ctx(Napi::Env env) {
  std::lock_guard<std::mutex> lock(envs_mu);
  auto it = envs().find(env);
  if (it != envs().end()) return it->second;
  auto* ctx = new EnvCtx();
  ctx->tsfn = Tsfn::New(env, "tierlm-io", 0, 1, ctx);
  ctx->tsfn.Unref(env);
  env.AddCleanupHook(env_cleanup, ctx);
  envs()[env] = ctx;
  return ctx;
}

// I/O thread: the group is done with its buffers.
void on_done(Group* g) {
  Call* call = static_cast<Call*>(g->user);
  EnvCtx* ctx = call->ctx;
  std::lock_guard<std::mutex> lock(ctx->mu);
  if (!ctx->closed) ctx->tsfn.NonBlockingCall(g);  // an unbounded queue: this does not fail
  // else: the environment is gone; the call and its references are leaked on purpose.
  ctx->running--;
  ctx->cv.notify_all();
}

Napi::Value failure_error(Napi::Env env, const io::Failure& f) {
  std::string where = std::string(op_verb(f.op)) + " " + f.path;
  Napi::Error e = Napi::Error::New(env, "");
  if (f.eof) {
    e = Napi::Error::New(env, "EOF " + where + " at offset " + std::to_string(f.offset) +
                                  ": the file ends there (requested " + std::to_string(f.request_length) +
                                  " bytes at offset " + std::to_string(f.request_offset) + ")");
    e.Set("code", Napi::String::New(env, "EOF"));
  } else if (f.op == Op::Sync) {
    e = os_error(env, f.err, where + " (" + f.syscall + ")");
  } else {
    e = os_error(env, f.err, where + " at offset " + std::to_string(f.offset) + " (" + f.syscall + ")");
  }
  e.Set("path", Napi::String::New(env, f.path));
  e.Set("syscall", Napi::String::New(env, f.syscall));
  e.Set("offset", Napi::Number::New(env, static_cast<double>(f.offset)));
  return e.Value();
}

// JavaScript thread.
void settle(Napi::Env env, Napi::Function, EnvCtx* ctx, Group* g) {
  if (env == nullptr) return;  // tearing down: nothing to settle
  std::unique_ptr<Call> call(static_cast<Call*>(g->user));
  if (g->failed.load()) {
    call->deferred.Reject(failure_error(env, g->failure));
  } else {
    call->deferred.Resolve(env.Undefined());
  }
  if (--ctx->js_inflight == 0) ctx->tsfn.Unref(env);
}

Napi::Promise submit(Napi::Env env, std::unique_ptr<Call> call) {
  EnvCtx* ctx = env_ctx(env);
  call->ctx = ctx;
  call->group.user = call.get();
  call->group.on_done = on_done;
  Napi::Promise promise = call->deferred.Promise();
  if (call->group.count == 0) {
    call->deferred.Resolve(env.Undefined());
    return promise;
  }
  if (ctx->js_inflight++ == 0) ctx->tsfn.Ref(env);
  {
    std::lock_guard<std::mutex> lock(ctx->mu);
    ctx->running++;
  }
  IoPool::instance().submit(&call.release()->group);
  return promise;
}

// ---- argument checks ------------------------------------------------------------------------------

void check_transfer(Napi::Env env, const char* fn, const OpenFile& f, Op op, const Bytes& b, int64_t offset,
                    size_t index, bool batch) {
  const FileInfo& info = *f.info;
  std::string what = std::string(fn) + ": ";
  if (batch) what += "request " + std::to_string(index) + ": ";
  if (op == Op::Write && !f.writable) {
    throw Napi::Error::New(env, what + "cannot write " + info.path + ": it was opened read-only ('r')");
  }
  if (op == Op::Read && !f.readable) {
    throw Napi::Error::New(env, what + "cannot read " + info.path + ": it was opened write-only");
  }
  if (!info.direct) return;
  std::string tail = " (" + info.path + " is opened with O_DIRECT; allocate buffers with alignedBuffer)";
  if (reinterpret_cast<uintptr_t>(b.data) % kAlign != 0) {
    throw Napi::RangeError::New(env, what + "buffer address is not a multiple of 4096" + tail);
  }
  if (b.length % kAlign != 0) {
    throw Napi::RangeError::New(env, what + "length " + std::to_string(b.length) + " is not a multiple of 4096" + tail);
  }
  if (static_cast<uint64_t>(offset) % kAlign != 0) {
    throw Napi::RangeError::New(env, what + "file offset " + std::to_string(offset) + " is not a multiple of 4096" + tail);
  }
}

int64_t offset_value(Napi::Env env, const Napi::Value& v, const std::string& what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(env, what + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  // Range first: converting a double outside int64 (or NaN) to an integer is undefined behaviour.
  if (!(d >= 0 && d <= static_cast<double>(kMaxOffset)) || d != std::trunc(d)) {
    throw Napi::RangeError::New(env, what + " must be a non-negative integer up to 2^52, got " + std::to_string(d));
  }
  return static_cast<int64_t>(d);
}

io::Priority priority_arg(const Napi::CallbackInfo& info, size_t i) {
  if (i >= info.Length() || info[i].IsUndefined()) return io::Priority::Urgent;
  if (!info[i].IsBoolean()) throw Napi::TypeError::New(info.Env(), "background must be a boolean");
  return info[i].As<Napi::Boolean>().Value() ? io::Priority::Background : io::Priority::Urgent;
}

void add_request(Call& call, const OpenFile& f, Op op, const Bytes& b, int64_t offset) {
  Request& r = call.group.requests[call.group.count++];
  r.file = f.info;
  r.op = op;
  r.data = b.data;
  r.length = b.length;
  r.offset = static_cast<uint64_t>(offset);
}

// ---- exports --------------------------------------------------------------------------------------

Napi::Value IoOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "ioOpen: path must be a string");
  std::string path = info[0].As<Napi::String>();
  std::string mode = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  bool want_direct = info.Length() < 3 || info[2].IsUndefined() || info[2].ToBoolean().Value();
  int flags;
  OpenFile f;
  if (mode == "r") {
    flags = O_RDONLY;
  } else if (mode == "rw") {
    flags = O_RDWR | O_CREAT;
    f.writable = true;
  } else if (mode == "w") {
    flags = O_RDWR | O_CREAT | O_TRUNC;
    f.writable = true;
  } else {
    throw Napi::TypeError::New(env, "ioOpen: mode must be 'r', 'rw' or 'w', got '" + mode + "'");
  }
  flags |= O_CLOEXEC;
  int fd = -1;
  bool direct = false;
  if (want_direct) {
    do fd = open(path.c_str(), flags | O_DIRECT, 0644);
    while (fd < 0 && errno == EINTR);
    direct = fd >= 0;
    // EINVAL: this filesystem does not do O_DIRECT. Fall back to a buffered descriptor.
    if (fd < 0 && errno != EINVAL) {
      throw os_error(env, errno, std::string("opening ") + path + (f.writable ? " for writing" : " for reading"));
    }
  }
  if (fd < 0) {
    do fd = open(path.c_str(), flags, 0644);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) throw os_error(env, errno, std::string("opening ") + path + (f.writable ? " for writing" : " for reading"));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    throw os_error(env, err, "opening " + path + " (fstat)");
  }
  if (S_ISDIR(st.st_mode)) {
    close(fd);
    throw os_error(env, EISDIR, std::string("opening ") + path);
  }
  f.info = std::make_shared<FileInfo>();
  f.info->fd = fd;
  f.info->path = path;
  f.info->direct = direct;
  {
    std::lock_guard<std::mutex> lock(files_mu);
    files()[fd] = f;
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("fd", fd);
  o.Set("direct", direct);
  return o;
}

Napi::Value IoClose(const Napi::CallbackInfo& info) {
  OpenFile f = lookup(info, "ioClose");
  int pending = f.info->pending.load();
  if (pending > 0) {
    throw Napi::Error::New(info.Env(), "ioClose: cannot close " + f.info->path + " while " + std::to_string(pending) +
                                           " requests on it are in flight");
  }
  {
    std::lock_guard<std::mutex> lock(files_mu);
    files().erase(f.info->fd);
  }
  if (close(f.info->fd) != 0 && errno != EINTR) throw os_error(info.Env(), errno, "closing " + f.info->path);
  return info.Env().Undefined();
}

Napi::Value IoSize(const Napi::CallbackInfo& info) {
  OpenFile f = lookup(info, "ioSize");
  struct stat st;
  if (fstat(f.info->fd, &st) != 0) throw os_error(info.Env(), errno, "reading the size of " + f.info->path);
  return Napi::Number::New(info.Env(), static_cast<double>(st.st_size));
}

Napi::Value IoTruncate(const Napi::CallbackInfo& info) {
  OpenFile f = lookup(info, "ioTruncate");
  int64_t bytes = int_arg(info, 1, "bytes", 0, kMaxOffset);
  if (!f.writable) throw Napi::Error::New(info.Env(), "ioTruncate: " + f.info->path + " was opened read-only ('r')");
  int rc;
  do rc = ftruncate(f.info->fd, static_cast<off_t>(bytes));
  while (rc != 0 && errno == EINTR);
  if (rc != 0) throw os_error(info.Env(), errno, "truncating " + f.info->path + " to " + std::to_string(bytes) + " bytes");
  return info.Env().Undefined();
}

// Reserves blocks for the first `bytes` bytes (and grows the file to that size) so that later
// writes cannot run out of space. Returns false where the filesystem cannot preallocate; the file
// is then only grown with ftruncate.
Napi::Value IoAllocate(const Napi::CallbackInfo& info) {
  OpenFile f = lookup(info, "ioAllocate");
  int64_t bytes = int_arg(info, 1, "bytes", 0, kMaxOffset);
  if (!f.writable) throw Napi::Error::New(info.Env(), "ioAllocate: " + f.info->path + " was opened read-only ('r')");
  if (bytes == 0) return Napi::Boolean::New(info.Env(), true);
  int rc;
  do rc = fallocate(f.info->fd, 0, 0, static_cast<off_t>(bytes));
  while (rc != 0 && errno == EINTR);
  if (rc == 0) return Napi::Boolean::New(info.Env(), true);
  int err = errno;
  if (err != EOPNOTSUPP && err != ENOSYS) {
    throw os_error(info.Env(), err, "preallocating " + std::to_string(bytes) + " bytes for " + f.info->path);
  }
  struct stat st;
  if (fstat(f.info->fd, &st) != 0) throw os_error(info.Env(), errno, "reading the size of " + f.info->path);
  if (st.st_size < bytes) {
    if (ftruncate(f.info->fd, static_cast<off_t>(bytes)) != 0) {
      throw os_error(info.Env(), errno, "growing " + f.info->path + " to " + std::to_string(bytes) + " bytes");
    }
  }
  return Napi::Boolean::New(info.Env(), false);
}

Napi::Value IoSync(const Napi::CallbackInfo& info) {
  OpenFile f = lookup(info, "ioSync");
  auto call = std::make_unique<Call>(info.Env());
  call->group.op = Op::Sync;
  call->group.requests.reset(new Request[1]);
  add_request(*call, f, Op::Sync, Bytes{}, 0);
  return submit(info.Env(), std::move(call));
}

Napi::Value transfer(const Napi::CallbackInfo& info, Op op, const char* fn) {
  Napi::Env env = info.Env();
  OpenFile f = lookup(info, fn);
  if (info.Length() < 2) throw Napi::TypeError::New(env, std::string(fn) + ": buffer must be a TypedArray");
  Bytes b = typed_bytes(info[1], (std::string(fn) + ": buffer").c_str());
  if (info.Length() < 3) throw Napi::TypeError::New(env, std::string(fn) + ": offset must be a number");
  int64_t offset = offset_value(env, info[2], std::string(fn) + ": offset");
  check_transfer(env, fn, f, op, b, offset, 0, false);
  auto call = std::make_unique<Call>(env);
  call->group.op = op;
  call->group.priority = priority_arg(info, 3);
  call->group.requests.reset(new Request[1]);
  if (b.length > 0) add_request(*call, f, op, b, offset);
  call->keep.push_back(Napi::Persistent(info[1]));
  return submit(env, std::move(call));
}

Napi::Value transfer_batch(const Napi::CallbackInfo& info, Op op, const char* fn) {
  Napi::Env env = info.Env();
  OpenFile f = lookup(info, fn);
  if (info.Length() < 3 || !info[1].IsArray() || !info[2].IsArray()) {
    throw Napi::TypeError::New(env, std::string(fn) + ": expected (fd, buffers[], offsets[])");
  }
  Napi::Array bufs = info[1].As<Napi::Array>();
  Napi::Array offs = info[2].As<Napi::Array>();
  if (bufs.Length() != offs.Length()) {
    throw Napi::RangeError::New(env, std::string(fn) + ": " + std::to_string(bufs.Length()) + " buffers but " +
                                         std::to_string(offs.Length()) + " offsets");
  }
  auto call = std::make_unique<Call>(env);
  call->group.op = op;
  call->group.priority = priority_arg(info, 3);
  call->group.requests.reset(new Request[bufs.Length() > 0 ? bufs.Length() : 1]);
  call->keep.reserve(bufs.Length());
  for (uint32_t i = 0; i < bufs.Length(); i++) {
    Napi::Value v = bufs.Get(i);
    std::string what = std::string(fn) + ": buffers[" + std::to_string(i) + "]";
    Bytes b = typed_bytes(v, what.c_str());
    int64_t offset = offset_value(env, offs.Get(i), std::string(fn) + ": offsets[" + std::to_string(i) + "]");
    check_transfer(env, fn, f, op, b, offset, i, true);
    if (b.length > 0) add_request(*call, f, op, b, offset);
    call->keep.push_back(Napi::Persistent(v));
  }
  return submit(env, std::move(call));
}

Napi::Value IoRead(const Napi::CallbackInfo& info) { return transfer(info, Op::Read, "ioRead"); }
Napi::Value IoWrite(const Napi::CallbackInfo& info) { return transfer(info, Op::Write, "ioWrite"); }
Napi::Value IoReadv(const Napi::CallbackInfo& info) { return transfer_batch(info, Op::Read, "ioReadv"); }
Napi::Value IoWritev(const Napi::CallbackInfo& info) { return transfer_batch(info, Op::Write, "ioWritev"); }

Napi::Value IoSetThreads(const Napi::CallbackInfo& info) {
  int n = static_cast<int>(int_arg(info, 0, "threads", 1, 64));
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    int64_t chunk = int_arg(info, 1, "chunkBytes", 64 << 10, INT64_C(1) << 30);
    if (chunk % static_cast<int64_t>(kAlign) != 0) {
      throw Napi::RangeError::New(info.Env(), "chunkBytes must be a multiple of 4096");
    }
    IoPool::instance().set_chunk_bytes(static_cast<uint64_t>(chunk));
  }
  IoPool::instance().set_threads(n);
  return info.Env().Undefined();
}

Napi::Value IoStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  io::Stats s = IoPool::instance().stats();
  Napi::Object o = Napi::Object::New(env);
  o.Set("bytesRead", Napi::Number::New(env, static_cast<double>(s.bytes_read)));
  o.Set("bytesWritten", Napi::Number::New(env, static_cast<double>(s.bytes_written)));
  o.Set("readSeconds", Napi::Number::New(env, s.read_seconds));
  o.Set("writeSeconds", Napi::Number::New(env, s.write_seconds));
  o.Set("requests", Napi::Number::New(env, static_cast<double>(s.requests)));
  o.Set("calls", Napi::Number::New(env, static_cast<double>(s.groups)));
  o.Set("threads", Napi::Number::New(env, s.threads));
  o.Set("chunkBytes", Napi::Number::New(env, static_cast<double>(s.chunk_bytes)));
  return o;
}

}  // namespace

void register_io(Napi::Env env, Napi::Object exports) {
  exports.Set("ioOpen", Napi::Function::New(env, IoOpen));
  exports.Set("ioClose", Napi::Function::New(env, IoClose));
  exports.Set("ioSize", Napi::Function::New(env, IoSize));
  exports.Set("ioTruncate", Napi::Function::New(env, IoTruncate));
  exports.Set("ioAllocate", Napi::Function::New(env, IoAllocate));
  exports.Set("ioSync", Napi::Function::New(env, IoSync));
  exports.Set("ioRead", Napi::Function::New(env, IoRead));
  exports.Set("ioWrite", Napi::Function::New(env, IoWrite));
  exports.Set("ioReadv", Napi::Function::New(env, IoReadv));
  exports.Set("ioWritev", Napi::Function::New(env, IoWritev));
  exports.Set("ioSetThreads", Napi::Function::New(env, IoSetThreads));
  exports.Set("ioStats", Napi::Function::New(env, IoStats));
}

}  // namespace tierlm
