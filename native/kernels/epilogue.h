// What a GEMM does to its output as each part of it is finished, while that part is still in
// cache: an activation on y, then y added onto another array (a residual stream). The values are
// those of the separate ops, bit for bit (rw_relu / rw_gelu on y, then rw_add(add_to, y, add_to)),
// so fusing changes no result; it saves the passes that would read y back afterwards (and a call
// each). On the CI kind of machine the saving was below what paired runs resolve (docs/benchmarks.md).
#pragma once

#include <cstdint>

namespace tierlm {

enum class Act : int { None = 0, Relu = 1, Gelu = 2, GeluTanh = 3 };

struct Epilogue {
  Act act = Act::None;
  // [m, n] like y, overlapping none of x, bias and y: add_to += act(y).
  float* add_to = nullptr;

  bool any() const { return act != Act::None || add_to != nullptr; }
  // Rows r0..r0+rows and columns c0..c1 of y (row stride ldy; add_to laid out as y). Called by
  // the thread that computed them, each element once, after its last k block.
  void apply(float* y, int64_t ldy, int64_t r0, int64_t rows, int64_t c0, int64_t c1) const;
};

}  // namespace tierlm
