#include <napi.h>

#include "napi/register.h"

namespace tierlm {
void register_gemm(Napi::Env, Napi::Object) {}
}  // namespace tierlm
