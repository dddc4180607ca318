// AdamW and sum of squares compiled with the AVX2 + FMA flags (the bodies: optim_impl.h).
#include <cstdint>

#include "kernels/optim.h"

namespace tierlm {
namespace optim {
namespace isa2 {
#include "kernels/optim_impl.h"
}  // namespace isa2
}  // namespace optim
}  // namespace tierlm
