// Training attention bodies compiled with the AVX2 + FMA flags (attention_train_impl.h).
#include <cstdint>

#include "kernels/attention_train.h"

namespace tierlm {
namespace attn_train {
namespace isa2 {
#include "kernels/attention_train_impl.h"
}  // namespace isa2
}  // namespace attn_train
}  // namespace tierlm
