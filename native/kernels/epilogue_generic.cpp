// Epilogue::apply (kernels/epilogue.h) over the row-wise ops' single-thread spans.
#include "kernels/epilogue.h"

#include "kernels/rowwise.h"

namespace tierlm {

void Epilogue::apply(float* y, int64_t ldy, int64_t r0, int64_t rows, int64_t c0, int64_t c1) const {
  const int64_t len = c1 - c0;
  if (len <= 0) return;
  for (int64_t i = r0; i < r0 + rows; i++) {
    float* yr = y + i * ldy + c0;
    switch (act) {
      case Act::Relu: relu_span(yr, len, yr); break;
      case Act::Gelu: gelu_span(yr, len, yr, false); break;
      case Act::GeluTanh: gelu_span(yr, len, yr, true); break;
      case Act::None: break;
    }
    if (add_to) {
      float* ar = add_to + i * ldy + c0;
      add_span(ar, yr, len, ar);
    }
  }
}

}  // namespace tierlm
