#include <napi.h>

#include "napi/register.h"

namespace tierlm {
void register_rowwise(Napi::Env, Napi::Object) {}
}  // namespace tierlm
