// Row-wise backward bodies compiled with the AVX2 + FMA flags (grad_row_impl.h).
#include <cstdint>

#include "kernels/grad.h"

namespace tierlm {
namespace grad_row {
namespace isa2 {
#include "kernels/grad_row_impl.h"
}  // namespace isa2
}  // namespace grad_row
}  // namespace tierlm
