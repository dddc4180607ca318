// Training attention bodies compiled with the AVX-512 flags (attention_train_impl.h).
#include <cstdint>

#include "kernels/attention_train.h"

namespace tierlm {
namespace attn_train {
namespace isa512 {
#include "kernels/attention_train_impl.h"
}  // namespace isa512
}  // namespace attn_train
}  // namespace tierlm
