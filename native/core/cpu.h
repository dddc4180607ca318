// CPU feature detection and the instruction-set level kernels dispatch on.
#pragma once

namespace tierlm {

// Ordered: each level implies the ones before it.
enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3 };

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512bf16 = false, avx512vnni = false;
  bool amx_tile = false, amx_bf16 = false;  // CPUID: the CPU has AMX tiles and their bf16 dot product
};

const CpuFeatures& cpu_features();
// The best level this CPU supports.
Isa detected_isa();
// The level kernels use now: detected_isa() unless lowered by set_isa() (tests use that to
// exercise every path on one machine) or by the TIERLM_ISA environment variable.
Isa active_isa();
// Returns false (and changes nothing) when the CPU lacks the level asked for.
bool set_isa(Isa isa);
const char* isa_name(Isa isa);
// Whether this process may run AMX-BF16 tile instructions: the CPU has them, the OS saves their
// state (XCR0 bits 17-18) and, on Linux, granted this process the tile data state
// (arch_prctl ARCH_REQ_XCOMP_PERM, asked for once, on the first call). AMX is not an ISA level: it
// is one of bf16 mode's GEMM kernels (kernels/gemm.h, Bf16Kernel), chosen by measurement.
bool amx_usable();
bool parse_isa(const char* name, Isa* out);

}  // namespace tierlm
