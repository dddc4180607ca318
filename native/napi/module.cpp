// The addon's entry point: each area registers its own exports. The list of exports stays short;
// src/backend/cpu wraps every one of them with argument validation.
#include <napi.h>

#include "napi/register.h"

namespace tierlm {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  register_core(env, exports);
  register_gemm(env, exports);
  register_rowwise(env, exports);
  register_attention(env, exports);
  register_io(env, exports);
  register_lock(env, exports);
  register_grad(env, exports);
  register_optim(env, exports);
  register_membw(env, exports);
  return exports;
}

}  // namespace tierlm

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return tierlm::Init(env, exports); }

NODE_API_MODULE(tierlm_addon, InitAddon)
