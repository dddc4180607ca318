// Greedy sampling's argmax over a vocabulary runs natively (AVX-512: a max pass, then the first
// index holding it): it must give the scalar scan's answer on every input, at every ISA level —
// ties to the first, NaN never larger (a NaN first value wins), +0 and -0 equal, infinities.
import { afterAll, describe, expect, it } from 'vitest';
import { argmaxF32, isaInfo, setIsa, type Isa } from '../src/backend/index.js';
import { NATIVE_ARGMAX_MIN, argmax } from '../src/engine/sampling.js';
import { rng } from './helpers/random.js';

const ALL: Isa[] = ['scalar', 'avx2', 'avx512', 'avx512bf16'];
const detected = isaInfo().detected as Isa;
afterAll(() => setIsa(detected));

/** The plain scan: keep the first value greater than the best so far. */
function scan(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

const SIZES = [1, 2, 15, 16, 17, 31, 32, 33, 47, 100, 2047, 2048, 50273];

function cases(n: number, seed: number): [string, Float32Array][] {
  const r = rng(seed);
  const rand = () => Float32Array.from({ length: n }, () => (r() - 0.5) * 20);
  const at = () => Math.floor(r() * n);
  const out: [string, Float32Array][] = [['random', rand()]];
  const ties = rand();
  const top = Math.max(...ties) + 1;
  for (let j = 0; j < 3; j++) ties[at()] = top;
  out.push(['ties of the largest', ties]);
  const nan = rand();
  for (let j = 0; j < Math.max(1, n >> 3); j++) nan[at()] = NaN;
  out.push(['NaN among them', nan]);
  const nanFirst = rand();
  nanFirst[0] = NaN;
  nanFirst[n - 1] = 1e30;
  out.push(['NaN first', nanFirst]);
  out.push(['all NaN', new Float32Array(n).fill(NaN)]);
  out.push(['zeros of both signs', Float32Array.from({ length: n }, () => (r() < 0.5 ? -0 : 0))]);
  const negZeroFirst = new Float32Array(n).fill(-1);
  negZeroFirst[0] = -0;
  negZeroFirst[n - 1] = 0;
  out.push(['-0 before +0', negZeroFirst]);
  out.push(['all -Infinity', new Float32Array(n).fill(-Infinity)]);
  const inf = rand();
  inf[at()] = Infinity;
  inf[at()] = Infinity;
  out.push(['+Infinity twice', inf]);
  const last = rand();
  last[n - 1] = 1e9;
  out.push(['largest last (the tail)', last]);
  const big = rand();
  big[at()] = 3.4e38;
  big[at()] = -3.4e38;
  out.push(['extremes', big]);
  return out;
}

describe('argmax', () => {
  for (const isa of ALL.slice(0, ALL.indexOf(detected) + 1)) {
    it(`${isa}: the native scan gives the plain scan's index on every input`, () => {
      setIsa(isa);
      let seed = 1;
      for (const n of SIZES) {
        for (const [what, x] of cases(n, seed++)) {
          expect(argmaxF32(x), `${what}, ${n}`).toBe(scan(x));
          expect(argmax(x), `${what}, ${n}`).toBe(scan(x));
        }
      }
      // A view into a larger buffer scans only its own values.
      const buf = new Float32Array(5000).fill(0);
      buf[10] = 100;
      buf[4000] = 5;
      expect(argmaxF32(buf.subarray(3000, 4500))).toBe(1000);
    });
  }

  it('sampling scans a vocabulary natively and a short row in JavaScript, alike', () => {
    expect(NATIVE_ARGMAX_MIN).toBeGreaterThan(16);
    expect(NATIVE_ARGMAX_MIN).toBeLessThanOrEqual(32000);
    expect(() => argmaxF32(new Float32Array(0))).toThrow(/argmax: x is empty/);
  });
});
