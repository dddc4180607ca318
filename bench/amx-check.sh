#!/usr/bin/env bash
# Checks and times bf16 mode's AMX GEMM kernel on a machine whose CPU has AMX-BF16 (Intel Sapphire
# Rapids or later), e.g. a lent Xeon: no machine of ours without AMX can run it, and the tests
# there check only its emulation. Run from the repository root after `npm install` (or with
# build/ and node_modules copied from a machine that built them). Fails where AMX cannot run.
set -euo pipefail
node -e "const i=require('./build/Release/tierlm.node').getIsa(); console.log('isa', i.active, 'amx usable', i.amx, JSON.stringify(i.features))"
# The real kernel against the reference, exact small-integer sums, batched = unbatched, the
# epilogue, the training products, every thread count (TIERLM_REQUIRE_AMX: no AMX is a failure).
TIERLM_REQUIRE_AMX=1 npx vitest run test/gemm-amx.test.ts test/bf16-kernel.test.ts test/grad.test.ts
# Rates of every bf16 kernel side by side (bf16-amx, bf16-dot, bf16 = widening + FMA).
threads="${AMX_CHECK_THREADS:-1,$(nproc)}"
node --import tsx bench/kernels.ts --quick --threads "$threads" --m 1,16,64,512
