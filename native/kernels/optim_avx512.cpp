// AdamW and sum of squares compiled with the AVX-512 flags (the bodies: optim_impl.h).
#include <cstdint>

#include "kernels/optim.h"

namespace tierlm {
namespace optim {
namespace isa512 {
#include "kernels/optim_impl.h"
}  // namespace isa512
}  // namespace optim
}  // namespace tierlm
