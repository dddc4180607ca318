// stringifyInPieces: the text of JSON.stringify, in pieces, for any value a result line may hold
// (and the ones JSON.stringify treats specially: undefined, functions, toJSON, class instances).
import { describe, expect, it } from 'vitest';
import { stringifyInPieces } from '../src/formats/json-pieces.js';
import { rng } from './helpers/random.js';

function pieces(v: unknown, size: number): string[] {
  const out: string[] = [];
  stringifyInPieces(v, (p) => out.push(p), size);
  return out;
}

// A random value: containers up to `depth` deep, some of them (near the top: children of a large
// one are small) large enough to be walked.
function randomValue(r: () => number, depth: number): unknown {
  const pick = Math.floor(r() * (depth > 0 ? 14 : 9));
  const text = () => Array.from({ length: Math.floor(r() * 6) }, () => ['a', '"', '\\', '\n', 'é', '🦙', '\u2028', '\ud800', '\u0001'][Math.floor(r() * 9)]).join('');
  switch (pick) {
    case 0: return null;
    case 1: return r() < 0.5;
    case 2: return Math.floor(r() * 2000) - 1000;
    case 3: return [(r() - 0.5) * 1e-3, -0, NaN, Infinity, 1e21, Math.fround(r())][Math.floor(r() * 6)];
    case 4: return text();
    case 5: return undefined;
    case 6: return () => 1;
    case 7: return new Date(Math.floor(r() * 1e12));
    case 8: return new Float32Array([r(), 2]);
    case 9:
    case 10: {
      const big = depth >= 3 && r() < 0.2;
      return Array.from({ length: Math.floor(r() * (big ? 6000 : 6)) }, () => randomValue(r, depth - (big ? 2 : 1)));
    }
    case 11:
    case 12: {
      const o: Record<string, unknown> = {};
      const big = depth >= 3 && r() < 0.2;
      const n = Math.floor(r() * (big ? 6000 : 6));
      for (let i = 0; i < n; i++) o[r() < 0.1 ? String(i) : `${text()}${i}`] = randomValue(r, depth - (big ? 2 : 1));
      return o;
    }
    default: {
      const inner = randomValue(r, depth - 1);
      return { toJSON: (key: string) => (r() < 0.3 ? key : inner) };
    }
  }
}

describe('stringifyInPieces', () => {
  it('joins to JSON.stringify of random values, whatever the piece size (seeded)', () => {
    let walkedBig = 0;
    for (let seed = 1; seed <= 100; seed++) {
      // toJSON may draw from r: each run gets the same stream from a fresh generator. Odd seeds
      // give a line's shape (an object of several random values), even ones any value.
      const value = (s: number) => {
        const r = rng(s);
        return s % 2 === 0 ? randomValue(r, 4) : { id: `r${s}`, a: randomValue(r, 4), b: [randomValue(r, 4), randomValue(r, 4)], c: randomValue(r, 4) };
      };
      const want = JSON.stringify(value(seed));
      for (const size of [1, 7, 4096, 1 << 20]) {
        const got = pieces(value(seed), size);
        expect(got.join(''), `seed ${seed}, pieces of ${size}`).toBe(want ?? '');
        if (want === undefined) expect(got).toEqual([]);
        if (size === 4096 && got.length > 1) walkedBig++;
      }
    }
    expect(walkedBig).toBeGreaterThan(5);
  });

  it('keeps a line of tens of MB in pieces of about the size asked', () => {
    // 2000 tokens × 20 alternatives, 12 samples: the shape of a large result line.
    const sample = { token_ids: Array.from({ length: 2000 }, (_, i) => i), top_logprobs: Array.from({ length: 2000 }, (_, i) =>
      Array.from({ length: 20 }, (_, j) => ({ token: i + j, logprob: -j / 7 }))), finish_reason: 'length' };
    const line = { id: 'big', prompt_tokens: 3, samples: Array.from({ length: 12 }, () => sample) };
    const got = pieces(line, 1 << 20);
    const want = JSON.stringify(line);
    expect(want.length).toBeGreaterThan(20e6);
    expect(got.join('')).toBe(want);
    // Each piece passes the size by at most one small container's text (a token's alternatives).
    for (const p of got.slice(0, -1)) expect(p.length).toBeLessThan((1 << 20) + 4096);
    expect(got.length).toBeGreaterThanOrEqual(Math.floor(want.length / ((1 << 20) + 4096)));
  });

  it('leaves out what JSON.stringify leaves out, and writes null where it does', () => {
    const v = { a: undefined, b: () => 1, c: Symbol('s'), d: [undefined, () => 1, Symbol('t')], e: { toJSON: () => undefined }, f: 1 };
    expect(pieces(v, 1).join('')).toBe(JSON.stringify(v));
    expect(pieces(undefined, 1)).toEqual([]);
    expect(pieces({ toJSON: () => undefined }, 1)).toEqual([]);
  });
});
