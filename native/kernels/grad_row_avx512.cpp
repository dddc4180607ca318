// Row-wise backward bodies compiled with the AVX-512 flags (grad_row_impl.h).
#include <cstdint>

#include "kernels/grad.h"

namespace tierlm {
namespace grad_row {
namespace isa512 {
#include "kernels/grad_row_impl.h"
}  // namespace isa512
}  // namespace grad_row
}  // namespace tierlm
