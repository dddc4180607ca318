// The compute pool's idle spin (poolSpin, TIERLM_POOL_SPIN_US): how long a worker spins before it
// sleeps. It changes when a worker notices the next job, never what the job computes, so products
// and attention come out bit for bit the same whether the workers spin or sleep between calls
// (including a worker woken from sleep for every call), and the setting is checked.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cpuBackend, Tensor } from '../src/index.js';
import { getThreads, poolSpin, setThreads } from '../src/backend/index.js';
import { repoRoot } from './helpers/fixtures.js';
import { randomF32 } from './helpers/random.js';

const cpu = cpuBackend();
const startThreads = getThreads();
const startSpin = poolSpin();
afterAll(() => {
  setThreads(startThreads);
  poolSpin(startSpin);
});

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A GEMM over the pool (synchronous and async), decode attention and a layer norm, with a pause
 *  before each so that a worker with a short spin has gone to sleep when the call comes. */
async function work(pauseMs: number): Promise<Float32Array[]> {
  const [m, k, n, hq, d, cap] = [5, 301, 257, 6, 37, 41];
  const w = cpu.packWeight(randomF32([n, k], 1), 'fp32');
  const x = randomF32([m, k], 2);
  const q = randomF32([m, hq, d], 3);
  const kc = randomF32([m, hq, cap, d], 4);
  const vc = randomF32([m, hq, cap, d], 5);
  const rows = Tensor.i32([0, 1, 2, 3, 4]);
  const lens = Tensor.i32([1, 9, 17, 40, 41]);
  const big = randomF32([40, 1031], 6);
  const gamma = randomF32([1031], 7);
  const out: Float32Array[] = [];
  for (let i = 0; i < 3; i++) {
    await pause(pauseMs);
    out.push(cpu.matmul(x, w).data);
    await pause(pauseMs);
    out.push((await cpu.matmulAsync(x, w)).data);
    await pause(pauseMs);
    out.push(cpu.attentionCached(q, kc, vc, rows, lens, 0.2).data);
    await pause(pauseMs);
    out.push(cpu.layerNorm(big, gamma, null, 1e-5).data);
  }
  return out;
}

describe('the compute pool idle spin', () => {
  it('defaults to 1000 µs and takes an integer count of microseconds', () => {
    expect(startSpin).toBe(1000);
    expect(poolSpin(0)).toBe(0);
    expect(poolSpin(250)).toBe(250);
    expect(poolSpin()).toBe(250);
    for (const bad of [-1, 1.5, Number.NaN, 1e8]) expect(() => poolSpin(bad), String(bad)).toThrow(/micros must be an integer in \[0, 1e7\]/);
    expect(poolSpin()).toBe(250);
    poolSpin(startSpin);
  });

  it('gives the same results whether the workers spin or sleep between calls', async () => {
    for (const threads of [2, 3]) {
      setThreads(threads);
      poolSpin(startSpin);
      const spinning = await work(0);
      poolSpin(0); // every worker sleeps as soon as it is idle, and is woken for each call
      const sleeping = await work(3);
      poolSpin(50);
      const between = await work(1);
      for (const other of [sleeping, between]) {
        expect(other.length).toBe(spinning.length);
        other.forEach((y, i) => expect(y.every((v, j) => Object.is(v, spinning[i]![j])), `${threads} threads, result ${i}`).toBe(true));
      }
    }
  });

  it('reads TIERLM_POOL_SPIN_US at start-up', () => {
    const addon = path.join(repoRoot, 'build/Release/tierlm.node');
    const read = (env: string | undefined) => {
      const vars = { ...process.env };
      delete vars.TIERLM_POOL_SPIN_US;
      if (env !== undefined) vars.TIERLM_POOL_SPIN_US = env;
      const r = spawnSync(process.execPath, ['-e', `const m = { exports: {} }; process.dlopen(m, ${JSON.stringify(addon)}); console.log(m.exports.poolSpin());`], {
        encoding: 'utf8', env: vars,
      });
      expect(r.status, r.stderr).toBe(0);
      return Number(r.stdout.trim());
    };
    expect(read('250')).toBe(250);
    expect(read('0')).toBe(0);
    expect(read(undefined)).toBe(1000);
    // (not a count of microseconds: the default, as for the pool's other start-up variables)
    for (const bad of ['-5', 'abc', '12x', '']) expect(read(bad), bad).toBe(1000);
  });
});
