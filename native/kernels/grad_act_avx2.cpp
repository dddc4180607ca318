// Activation backward bodies compiled with the AVX2 + FMA flags (grad_act_impl.h).
#include <cstdint>

#include "kernels/grad.h"

namespace tierlm {
namespace grad_act {
namespace isa2 {
#include "kernels/grad_act_impl.h"
}  // namespace isa2
}  // namespace grad_act
}  // namespace tierlm
