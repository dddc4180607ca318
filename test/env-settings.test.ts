// The native kernels read their TIERLM_* variables laxly (atoi; an unknown name is the default) and
// cannot report an error, so the addon's loader checks them first: a bad value is refused naming
// the variable, the value and what is accepted; more threads than the hardware has only warns.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { KERNEL_ENV_VARS, checkKernelEnv } from '../src/backend/cpu/env.js';
import { repoRoot } from './helpers/fixtures.js';

/** checkKernelEnv on a machine with AVX-512 (no BF16), 8 hardware threads and no AMX. */
const check = (env: Record<string, string>, isa = 'avx512', threads = 8, amx = false) => checkKernelEnv(env, isa, threads, amx);

describe('kernel environment variables', () => {
  it('every variable the native code reads is checked', () => {
    expect([...KERNEL_ENV_VARS].sort()).toEqual([
      'TIERLM_ATTN_PREFETCH', 'TIERLM_BF16_DOT', 'TIERLM_BF16_KERNEL', 'TIERLM_GEMM_ONE_PASS', 'TIERLM_GEMM_WIDEN', 'TIERLM_HUGE_PAGES',
      'TIERLM_IDLE_PREFETCH_MB', 'TIERLM_ISA', 'TIERLM_MPI_PIECE_BYTES', 'TIERLM_POOL_SPIN_US', 'TIERLM_THREADS',
    ]);
  });

  // [variable, accepted values, refused values, what the error says is accepted]
  const cases: [string, string[], string[], string][] = [
    ['TIERLM_ISA', ['scalar', 'avx2', 'avx512', ''], ['foo', 'generic', 'AVX2', ' avx2'], 'one of scalar, avx2, avx512, avx512bf16'],
    ['TIERLM_THREADS', ['1', '8', ''], ['0', 'abc', '-3', '2x', '1025', '5000'], 'an integer in [1, 1024]'],
    ['TIERLM_POOL_SPIN_US', ['0', '250', '10000000', ''], ['-5', 'abc', '10000001', '1.5'], 'an integer of microseconds in [0, 10000000]'],
    ['TIERLM_IDLE_PREFETCH_MB', ['0', '12', '953674'], ['-5', '99999999999', 'abc', ''], 'an integer of MiB in [0, 953674]'],
    ['TIERLM_ATTN_PREFETCH', ['0', '8192', '1000000000'], ['-1', 'abc', '1000000001', ''], 'an integer of bytes in [0, 1000000000]'],
    ['TIERLM_GEMM_ONE_PASS', ['0', '9', '15', ''], ['abc', '99', '16', '-1'], 'an integer mask in [0, 15]'],
    ['TIERLM_GEMM_WIDEN', ['0', '2', '4', '6'], ['abc', '-1', '1', '15', ''], 'one of 0, 2, 4, 6 (bits: 2 f16, 4 bf16)'],
    // (dot, and TIERLM_BF16_DOT=1, only where vdpbf16ps runs: the next tests)
    ['TIERLM_BF16_KERNEL', ['fma', ''], ['vnni', 'FMA', 'amx-emulated'], 'one of fma, dot, amx'],
    ['TIERLM_BF16_DOT', ['0', ''], ['yes', '2', 'true'], 'one of 0, 1'],
    ['TIERLM_HUGE_PAGES', ['0', '1', ''], ['abc', 'off'], 'one of 0, 1'],
    ['TIERLM_MPI_PIECE_BYTES', ['1', '4096', ''], ['0', '-1', 'abc'], 'an integer of bytes in [1, 9007199254740991]'],
  ];
  for (const [name, good, bad, accepts] of cases) {
    it(`${name}: accepts ${good.map((v) => JSON.stringify(v)).join(' ')}; refuses the rest naming the value`, () => {
      for (const v of good) expect(check({ [name]: v }), v).toEqual([]);
      for (const v of bad) expect(() => check({ [name]: v }), v).toThrow(new RangeError(`${name}=${JSON.stringify(v)}: must be ${accepts}`));
    });
  }

  it('refuses an ISA level above the CPU\'s, naming the detected one', () => {
    expect(() => check({ TIERLM_ISA: 'avx512bf16' })).toThrow(/^TIERLM_ISA="avx512bf16": above this CPU's level, avx512; accepted here: scalar, avx2, avx512$/);
    expect(() => check({ TIERLM_ISA: 'avx512' }, 'avx2')).toThrow(/above this CPU's level, avx2/);
    expect(check({ TIERLM_ISA: 'avx512bf16' }, 'avx512bf16')).toEqual([]);
    expect(check({ TIERLM_ISA: 'scalar' }, 'scalar')).toEqual([]);
  });

  it('refuses amx where AMX cannot run', () => {
    expect(() => check({ TIERLM_BF16_KERNEL: 'amx' })).toThrow(/TIERLM_BF16_KERNEL="amx": this CPU or OS does not let the process run AMX-BF16 tiles/);
    expect(check({ TIERLM_BF16_KERNEL: 'amx' }, 'avx512bf16', 8, true)).toEqual([]);
  });

  it('refuses dot (vdpbf16ps) below AVX512_BF16, which native would run as the FMA kernel while reporting dot', () => {
    expect(() => check({ TIERLM_BF16_KERNEL: 'dot' }, 'avx2')).toThrow(RangeError);
    expect(() => check({ TIERLM_BF16_KERNEL: 'dot' }, 'avx2')).toThrow(/^TIERLM_BF16_KERNEL="dot": vdpbf16ps needs AVX512_BF16 and this CPU's level is avx2 \(isaInfo\(\).active\); accepted here: fma$/);
    expect(() => check({ TIERLM_BF16_KERNEL: 'dot' })).toThrow(/this CPU's level is avx512 /);
    expect(() => check({ TIERLM_BF16_DOT: '1' }, 'avx2')).toThrow(/^TIERLM_BF16_DOT="1": vdpbf16ps needs AVX512_BF16 and this CPU's level is avx2 .*; accepted here: 0$/);
    // a level lowered by TIERLM_ISA runs FMA too (amx as well)
    expect(() => check({ TIERLM_ISA: 'avx512', TIERLM_BF16_KERNEL: 'dot' }, 'avx512bf16')).toThrow(/TIERLM_ISA="avx512" runs below avx512bf16/);
    expect(() => check({ TIERLM_ISA: 'avx2', TIERLM_BF16_KERNEL: 'amx' }, 'avx512bf16', 8, true)).toThrow(/^TIERLM_BF16_KERNEL="amx": AMX needs AVX512_BF16 and TIERLM_ISA="avx2" runs below/);
    expect(check({ TIERLM_BF16_KERNEL: 'dot' }, 'avx512bf16')).toEqual([]);
    expect(check({ TIERLM_BF16_DOT: '1' }, 'avx512bf16')).toEqual([]);
    expect(check({ TIERLM_ISA: 'avx512bf16', TIERLM_BF16_KERNEL: 'dot' }, 'avx512bf16')).toEqual([]);
    // TIERLM_BF16_KERNEL decides over TIERLM_BF16_DOT (native ignores the latter then)
    expect(check({ TIERLM_BF16_KERNEL: 'fma', TIERLM_BF16_DOT: '1' }, 'avx2')).toEqual([]);
    // without AMX, what is accepted depends on the level
    expect(() => check({ TIERLM_BF16_KERNEL: 'amx' }, 'avx2')).toThrow(/isaInfo\(\).amx is false\); accepted here: fma$/);
    expect(() => check({ TIERLM_BF16_KERNEL: 'amx' }, 'avx512bf16')).toThrow(/accepted here: fma, dot$/);
  });

  it('warns, once, for more threads than the hardware has', () => {
    expect(check({ TIERLM_THREADS: '8' })).toEqual([]);
    expect(check({ TIERLM_THREADS: '9' })).toEqual(["TIERLM_THREADS=9 is more than this machine's 8 hardware threads; compute slows down when threads outnumber them"]);
  });

  // The check runs when the addon loads, before any kernel reads a variable (each caches its value).
  const load = (env: Record<string, string>) => {
    const vars: Record<string, string | undefined> = { ...process.env, ...env };
    const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', "import('./src/backend/index.ts').then((m) => console.log(m.isaInfo().active))"], {
      cwd: repoRoot, encoding: 'utf8', env: vars, timeout: 60_000,
    });
    return { status: r.status, stdout: r.stdout.trim(), stderr: r.stderr };
  };

  it('loading the addon refuses a bad value and warns for too many threads', () => {
    const bad = load({ TIERLM_ISA: 'generic' });
    expect(bad.status).not.toBe(0);
    expect(bad.stdout).toBe('');
    expect(bad.stderr).toContain('RangeError: TIERLM_ISA="generic": must be one of scalar, avx2, avx512, avx512bf16');

    const many = load({ TIERLM_ISA: 'scalar', TIERLM_THREADS: '1024' });
    expect(many.status, many.stderr).toBe(0);
    expect(many.stdout).toBe('scalar');
    const warned = many.stderr.match(/TIERLM_THREADS=1024 is more than this machine's \d+ hardware threads/g) ?? [];
    expect(warned.length).toBe(1);
  });
});
