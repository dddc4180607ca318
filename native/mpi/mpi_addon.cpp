// tierlm_mpi.node: collectives over OpenMPI for data-parallel training (src/dist wraps it).
// Built only when OpenMPI's development files are present (binding.gyp, native/mpi/probe.mjs).
//
// Every MPI call runs on one communication thread, in the order JavaScript asked for them, so
// that a collective proceeds while the JavaScript thread computes (the trainer gathers layer j+1
// while layer j runs). The thread starts each collective non-blocking and polls it with short,
// growing sleeps (10 µs to 200 µs) instead of MPI's busy wait: ranks usually share a machine's
// cores with their compute threads, and a spinning wait would take a core from them. Each request returns an id; wait(id) blocks only until that request (and
// the ones before it: they complete in order) is done. The caller keeps the typed arrays alive
// until then (src/dist/comm.ts holds them in the pending request). MPI's default error handler
// aborts the whole job on a failed collective, so no rank waits forever for a dead peer.
#include <dlfcn.h>
#include <mpi.h>
#include <napi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <time.h>

namespace {

class CommThread {
 public:
  void start() {
    std::unique_lock<std::mutex> lock(mu_);
    thread_ = std::thread([this] { loop(); });
    cv_.wait(lock, [&] { return ready_; });
  }
  uint64_t submit(std::function<void()> op) {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(op));
    cv_.notify_all();
    return ++submitted_;
  }
  void wait(uint64_t id) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return completed_ >= id; });
  }
  bool test(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    return completed_ >= id;
  }
  void finish() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    thread_.join();
  }
  int rank = 0, size = 1;
  bool started() const { return thread_.joinable(); }

 private:
  void loop() {
    // Node loads addons without RTLD_GLOBAL; Open MPI's plugins (loaded by MPI_Init) resolve
    // symbols of libmpi, so make it global first.
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&MPI_Init), &info) && info.dli_fname) dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready_ = true;
      cv_.notify_all();
    }
    for (;;) {
      std::function<void()> op;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) break;
        op = std::move(queue_.front());
        queue_.pop_front();
      }
      op();
      std::lock_guard<std::mutex> lock(mu_);
      completed_++;
      cv_.notify_all();
    }
    MPI_Finalize();
  }
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  uint64_t submitted_ = 0, completed_ = 0;
  bool ready_ = false, stop_ = false;
};

// Completes a non-blocking request, sleeping between tests (each test also drives its progress).
void complete(MPI_Request req) {
  long ns = 10000;
  for (;;) {
    int done = 0;
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (done) return;
    timespec t{0, ns};
    nanosleep(&t, nullptr);
    ns = ns < 200000 ? ns * 2 : 200000;
  }
}

CommThread& comm() {
  static CommThread* c = new CommThread();  // lives for the process
  return *c;
}

void need_started(Napi::Env env) {
  if (!comm().started()) throw Napi::Error::New(env, "tierlm_mpi: init() first");
}

struct View {
  void* data;
  size_t bytes;
  size_t count;
  MPI_Datatype type;
};

View view(const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a typed array");
  auto a = v.As<Napi::TypedArray>();
  MPI_Datatype t;
  switch (a.TypedArrayType()) {
    case napi_float32_array: t = MPI_FLOAT; break;
    case napi_float64_array: t = MPI_DOUBLE; break;
    case napi_int32_array: t = MPI_INT32_T; break;
    case napi_uint32_array: t = MPI_UINT32_T; break;
    case napi_uint16_array: t = MPI_UINT16_T; break;
    case napi_uint8_array: t = MPI_UINT8_T; break;
    default: throw Napi::TypeError::New(v.Env(), std::string(what) + ": unsupported element type");
  }
  auto* base = static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset();
  return {base, a.ByteLength(), a.ElementLength(), t};
}

int checked_int(Napi::Env env, size_t n, const char* what) {
  if (n > static_cast<size_t>(INT_MAX)) throw Napi::RangeError::New(env, std::string(what) + ": more than 2^31-1 elements in one collective");
  return static_cast<int>(n);
}

Napi::Value Id(Napi::Env env, uint64_t id) { return Napi::Number::New(env, static_cast<double>(id)); }

Napi::Value Init(const Napi::CallbackInfo& info) {
  if (!comm().started()) comm().start();
  auto o = Napi::Object::New(info.Env());
  o.Set("rank", comm().rank);
  o.Set("size", comm().size);
  return o;
}

// allGather(send, recv): recv = the send arrays of ranks 0..size-1, one after another.
Napi::Value AllGather(const Napi::CallbackInfo& info) {
  need_started(info.Env());
  View s = view(info[0], "send"), r = view(info[1], "recv");
  if (r.bytes != s.bytes * comm().size) throw Napi::RangeError::New(info.Env(), "allGather: recv must be size times send");
  int n = checked_int(info.Env(), s.count, "allGather");
  return Id(info.Env(), comm().submit([s, r, n] {
    MPI_Request q;
    MPI_Iallgather(s.data, n, s.type, r.data, n, s.type, MPI_COMM_WORLD, &q);
    complete(q);
  }));
}

// Bytes of send (over all ranks' blocks) one reduce-scatter piece takes: Open MPI 4.1's
// reduce_scatter_block (libnbc) reduces the whole send buffer to rank 0 and scatters it, so rank 0
// allocated temporaries of 1.5-2.5 times the whole buffer (+701 MiB for 300 MiB at 3 ranks), which
// no memory plan counts. In pieces, every rank's temporaries stay a few pieces.
// TIERLM_MPI_PIECE_BYTES overrides (tests make pieces small).
size_t piece_bytes() {
  static const size_t bytes = [] {
    const char* e = std::getenv("TIERLM_MPI_PIECE_BYTES");
    const long long v = e ? std::atoll(e) : 0;
    return v > 0 ? static_cast<size_t>(v) : size_t(4) << 20;
  }();
  return bytes;
}

// reduceScatter(send, recv): recv = the sum over ranks of this rank's block of send. Run in pieces
// of piece_bytes(): each takes the same range of every block through a staging buffer (a sum of
// one element over the ranks is the same whatever else is in the call).
Napi::Value ReduceScatter(const Napi::CallbackInfo& info) {
  need_started(info.Env());
  View s = view(info[0], "send"), r = view(info[1], "recv");
  if (s.type != r.type || s.bytes != r.bytes * comm().size) throw Napi::RangeError::New(info.Env(), "reduceScatter: send must be size times recv, of the same type");
  int n = checked_int(info.Env(), r.count, "reduceScatter");
  return Id(info.Env(), comm().submit([s, r, n] {
    const size_t ranks = static_cast<size_t>(comm().size), es = r.count > 0 ? r.bytes / r.count : 1;
    const size_t per = std::max<size_t>(1, piece_bytes() / (es * ranks));  // elements of each block a piece
    MPI_Request q;
    if (static_cast<size_t>(n) <= per) {
      MPI_Ireduce_scatter_block(s.data, r.data, n, s.type, MPI_SUM, MPI_COMM_WORLD, &q);
      complete(q);
      return;
    }
    std::vector<uint8_t> stage(per * ranks * es);
    const auto* src = static_cast<const uint8_t*>(s.data);
    auto* dst = static_cast<uint8_t*>(r.data);
    for (size_t off = 0; off < static_cast<size_t>(n); off += per) {
      const size_t k = std::min(per, static_cast<size_t>(n) - off);
      for (size_t b = 0; b < ranks; b++) std::memcpy(stage.data() + b * k * es, src + (b * n + off) * es, k * es);
      MPI_Ireduce_scatter_block(stage.data(), dst + off * es, static_cast<int>(k), s.type, MPI_SUM, MPI_COMM_WORLD, &q);
      complete(q);
    }
  }));
}

// allReduce(buf, op): buf = op over ranks of buf, in place; op is "sum", "max" or "min".
Napi::Value AllReduce(const Napi::CallbackInfo& info) {
  need_started(info.Env());
  View b = view(info[0], "buf");
  std::string name = info[1].As<Napi::String>().Utf8Value();
  MPI_Op op = name == "sum" ? MPI_SUM : name == "max" ? MPI_MAX : name == "min" ? MPI_MIN : MPI_OP_NULL;
  if (op == MPI_OP_NULL) throw Napi::RangeError::New(info.Env(), "allReduce: op must be sum, max or min");
  int n = checked_int(info.Env(), b.count, "allReduce");
  return Id(info.Env(), comm().submit([b, n, op] {
    MPI_Request q;
    MPI_Iallreduce(MPI_IN_PLACE, b.data, n, b.type, op, MPI_COMM_WORLD, &q);
    complete(q);
  }));
}

// broadcast(buf, root): every rank's buf = root's.
Napi::Value Broadcast(const Napi::CallbackInfo& info) {
  need_started(info.Env());
  View b = view(info[0], "buf");
  int root = info[1].As<Napi::Number>().Int32Value();
  if (root < 0 || root >= comm().size) throw Napi::RangeError::New(info.Env(), "broadcast: root out of range");
  int n = checked_int(info.Env(), b.count, "broadcast");
  return Id(info.Env(), comm().submit([b, n, root] {
    MPI_Request q;
    MPI_Ibcast(b.data, n, b.type, root, MPI_COMM_WORLD, &q);
    complete(q);
  }));
}

Napi::Value Barrier(const Napi::CallbackInfo& info) {
  need_started(info.Env());
  return Id(info.Env(), comm().submit([] {
    MPI_Request q;
    MPI_Ibarrier(MPI_COMM_WORLD, &q);
    complete(q);
  }));
}

Napi::Value Wait(const Napi::CallbackInfo& info) {
  comm().wait(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()));
  return info.Env().Undefined();
}

Napi::Value Test(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), comm().test(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value())));
}

// Ends every rank of the job (after an error on this one, so that the others do not wait for it).
Napi::Value Abort(const Napi::CallbackInfo& info) {
  MPI_Abort(MPI_COMM_WORLD, info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

// Finishes the queued requests, then MPI_Finalize.
Napi::Value Finalize(const Napi::CallbackInfo& info) {
  if (comm().started()) comm().finish();
  return info.Env().Undefined();
}

Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  exports.Set("init", Napi::Function::New(env, Init));
  exports.Set("allGather", Napi::Function::New(env, AllGather));
  exports.Set("reduceScatter", Napi::Function::New(env, ReduceScatter));
  exports.Set("allReduce", Napi::Function::New(env, AllReduce));
  exports.Set("broadcast", Napi::Function::New(env, Broadcast));
  exports.Set("barrier", Napi::Function::New(env, Barrier));
  exports.Set("wait", Napi::Function::New(env, Wait));
  exports.Set("test", Napi::Function::New(env, Test));
  exports.Set("abort", Napi::Function::New(env, Abort));
  exports.Set("finalize", Napi::Function::New(env, Finalize));
  return exports;
}

}  // namespace

NODE_API_MODULE(tierlm_mpi, InitAddon)
