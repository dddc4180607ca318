#include "napi/async.h"

#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace tierlm {
namespace {

struct Job {
  std::function<void()> work;
  Napi::Promise::Deferred deferred;
  std::vector<Napi::Reference<Napi::Value>> keep;
  Napi::ThreadSafeFunction done;
  std::string error;
  bool failed = false;
  explicit Job(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

class Dispatcher {
 public:
  static Dispatcher& instance() {
    static Dispatcher* d = new Dispatcher();  // never destroyed: the thread lives for the process
    return *d;
  }
  void submit(Job* job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(job);
    }
    cv_.notify_one();
  }

 private:
  Dispatcher() {
    std::thread([this] { loop(); }).detach();
  }
  void loop() {
    for (;;) {
      Job* job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty(); });
        job = queue_.front();
        queue_.pop_front();
      }
      try {
        job->work();
      } catch (const std::exception& e) {
        job->failed = true;
        job->error = e.what();
      } catch (...) {
        job->failed = true;
        job->error = "unknown native error";
      }
      Napi::ThreadSafeFunction done = job->done;
      done.BlockingCall(job, [](Napi::Env env, Napi::Function, Job* j) {
        std::unique_ptr<Job> owned(j);
        if (j->failed) {
          j->deferred.Reject(Napi::Error::New(env, j->error).Value());
        } else {
          j->deferred.Resolve(env.Undefined());
        }
      });
      done.Release();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job*> queue_;
};

}  // namespace

Napi::Promise run_async(Napi::Env env, std::function<void()> work, std::initializer_list<Napi::Value> keep) {
  auto* job = new Job(env);
  job->work = std::move(work);
  for (const Napi::Value& v : keep) {
    if (!v.IsUndefined() && !v.IsNull()) job->keep.push_back(Napi::Persistent(v));
  }
  Napi::Promise promise = job->deferred.Promise();
  job->done = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}),
                                            "tierlm-compute", 0, 1);
  Dispatcher::instance().submit(job);
  return promise;
}

}  // namespace tierlm
