// Runs heavy calls off the JavaScript thread and settles a Promise when they finish.
//
// Jobs go to one dispatcher thread (not libuv's pool, which Node's own file I/O needs), which runs
// them one after another on the compute thread pool. The JavaScript objects a job reads or writes
// are kept referenced until its Promise settles.
#pragma once

#include <napi.h>

#include <functional>
#include <initializer_list>

namespace tierlm {

// `work` runs on the dispatcher thread; an exception it throws rejects the Promise with its
// message. Every value in `keep` stays alive until the Promise settles.
Napi::Promise run_async(Napi::Env env, std::function<void()> work, std::initializer_list<Napi::Value> keep);

}  // namespace tierlm
