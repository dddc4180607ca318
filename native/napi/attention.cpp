#include <napi.h>

#include "napi/register.h"

namespace tierlm {
void register_attention(Napi::Env, Napi::Object) {}
}  // namespace tierlm
