// Activation backward bodies compiled with the AVX-512 flags (grad_act_impl.h).
#include <cstdint>

#include "kernels/grad.h"

namespace tierlm {
namespace grad_act {
namespace isa512 {
#include "kernels/grad_act_impl.h"
}  // namespace isa512
}  // namespace grad_act
}  // namespace tierlm
