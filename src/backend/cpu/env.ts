// The environment variables the native kernels read (each once, on first use). Native code parses
// them laxly and cannot report an error (atoi: TIERLM_GEMM_WIDEN=abc is 0, =-1 is 6; a name it does
// not know is the default), so a mistyped value silently ran something else: `TIERLM_ISA=generic`
// ran AVX-512. addon() checks them here once, when it loads the addon, before any kernel reads one.

/** ISA levels, lowest first (native/core/cpu.cpp isa_name). */
const ISA_LEVELS = ['scalar', 'avx2', 'avx512', 'avx512bf16'] as const;

interface Rule {
  /** What is accepted, in words (for the error). */
  accepts: string;
  ok: (value: string) => boolean;
  /** Whether native reads '' as if the variable were unset (else '' must pass `ok`). */
  emptyIsUnset: boolean;
}

const oneOf = (values: readonly string[], emptyIsUnset = true): Rule => ({
  accepts: `one of ${values.join(', ')}`, ok: (v) => values.includes(v), emptyIsUnset,
});

/** A decimal integer in [min, max] (digits only: native's atoi would take "12x" as 12). */
const integer = (min: number, max: number, unit: string, emptyIsUnset: boolean): Rule => ({
  accepts: `an integer ${unit}in [${min}, ${max}]`,
  ok: (v) => /^\d{1,16}$/.test(v) && Number(v) >= min && Number(v) <= max,
  emptyIsUnset,
});

// Each range is what the matching setter accepts (native/napi), so the environment and the API agree.
// '' is unset where native's result for it is the default; where atoi turns '' into 0 (off, or a
// mask of nothing) it is refused like any other value that is not a number.
const RULES: Record<string, Rule> = {
  TIERLM_ISA: oneOf(ISA_LEVELS),
  TIERLM_THREADS: integer(1, 1024, '', true), // setThreads' range
  TIERLM_POOL_SPIN_US: integer(0, 1e7, 'of microseconds ', true), // poolSpin's
  TIERLM_IDLE_PREFETCH_MB: integer(0, Math.floor(1e12 / 2 ** 20), 'of MiB ', false), // gemmIdlePrefetch's 1e12 bytes
  TIERLM_ATTN_PREFETCH: integer(0, 1e9, 'of bytes ', false), // attnPrefetch's
  TIERLM_GEMM_ONE_PASS: integer(0, 15, 'mask ', true), // gemmOnePassRows'
  // Only bits 2 (f16) and 4 (bf16) mean anything; native drops the others silently.
  TIERLM_GEMM_WIDEN: { ...oneOf(['0', '2', '4', '6'], false), accepts: 'one of 0, 2, 4, 6 (bits: 2 f16, 4 bf16)' },
  // (the tile code's emulation, 'amx-emulated', is the addon's gemmBf16Kernel() alone: a test aid
  // too slow to run a model with, which runs would save and compare as a kernel of their own)
  TIERLM_BF16_KERNEL: oneOf(['fma', 'dot', 'amx']),
  TIERLM_BF16_DOT: oneOf(['0', '1']),
  TIERLM_HUGE_PAGES: oneOf(['0', '1']),
  TIERLM_MPI_PIECE_BYTES: integer(1, Number.MAX_SAFE_INTEGER, 'of bytes ', true), // 0 would be the default
};

/** The kernel variables the native code reads (for docs and tests). */
export const KERNEL_ENV_VARS: readonly string[] = Object.keys(RULES);

/** Checks the kernels' environment variables in `env` against this machine (its detected ISA level,
 *  hardware threads and whether AMX-BF16 may run). Throws a RangeError naming the first variable
 *  whose value native would ignore or misread; returns warnings for values that are valid but
 *  unwise (more threads than the hardware has). */
export function checkKernelEnv(env: Readonly<Record<string, string | undefined>>, detectedIsa: string, hardwareThreads: number, amx: boolean): string[] {
  for (const [name, rule] of Object.entries(RULES)) {
    const value = env[name];
    if (value === undefined || (value === '' && rule.emptyIsUnset)) continue;
    if (!rule.ok(value)) throw new RangeError(`${name}=${JSON.stringify(value)}: must be ${rule.accepts}`);
  }
  checkIsaLevel(env.TIERLM_ISA, detectedIsa);
  checkBf16Kernel(env, detectedIsa, amx);
  const threads = Number(env.TIERLM_THREADS || 0);
  if (threads > hardwareThreads) {
    return [`TIERLM_THREADS=${threads} is more than this machine's ${hardwareThreads} hardware threads; compute slows down when threads outnumber them`];
  }
  return [];
}

/** A bf16 kernel the process cannot run: native's GEMM would run the FMA kernel (vdpbf16ps and AMX
 *  need AVX512_BF16 at the level the process runs at, AMX also tiles the OS grants) while the
 *  setting, and a training checkpoint, said otherwise. */
function checkBf16Kernel(env: Readonly<Record<string, string | undefined>>, detectedIsa: string, amx: boolean): void {
  const level = env.TIERLM_ISA || detectedIsa;
  const dotRuns = level === 'avx512bf16';
  const where = env.TIERLM_ISA && env.TIERLM_ISA !== detectedIsa ? `TIERLM_ISA=${JSON.stringify(env.TIERLM_ISA)} runs below avx512bf16` : `this CPU's level is ${detectedIsa}`;
  const accepted = dotRuns ? 'fma, dot' : 'fma';
  const named = env.TIERLM_BF16_KERNEL;
  if (named === 'amx' && !amx) {
    throw new RangeError(`TIERLM_BF16_KERNEL="amx": this CPU or OS does not let the process run AMX-BF16 tiles (isaInfo().amx is false); accepted here: ${accepted}`);
  }
  if ((named === 'amx' || named === 'dot') && !dotRuns) {
    throw new RangeError(`TIERLM_BF16_KERNEL=${JSON.stringify(named)}: ${named === 'dot' ? 'vdpbf16ps' : 'AMX'} needs AVX512_BF16 and ${where} (isaInfo().active); accepted here: fma`);
  }
  // (TIERLM_BF16_KERNEL, when set, decides over it: native ignores TIERLM_BF16_DOT then)
  if (!named && env.TIERLM_BF16_DOT === '1' && !dotRuns) {
    throw new RangeError(`TIERLM_BF16_DOT="1": vdpbf16ps needs AVX512_BF16 and ${where} (isaInfo().active); accepted here: 0`);
  }
}

/** Native drops a level above the CPU's and runs the detected one instead. */
function checkIsaLevel(isa: string | undefined, detectedIsa: string): void {
  if (!isa) return;
  const top = ISA_LEVELS.indexOf(detectedIsa as (typeof ISA_LEVELS)[number]);
  if (ISA_LEVELS.indexOf(isa as (typeof ISA_LEVELS)[number]) > top) {
    throw new RangeError(`TIERLM_ISA=${JSON.stringify(isa)}: above this CPU's level, ${detectedIsa}; accepted here: ${ISA_LEVELS.slice(0, top + 1).join(', ')}`);
  }
}
