// Training attention (flash-style forward with log-sum-exp, and its backward): native at every ISA
// level and 1/2 threads against the float64 reference; the forward also against the inference
// prefill, on ragged batches with GQA and block-crossing lengths.
import { describe, expect, it } from 'vitest';
import { Tensor } from '../src/tensor/tensor.js';
import { cpu, expectClose, randomF32, ref } from './helpers/harness.js';
import { atEveryIsa, restoreSettingsAfterAll } from './helpers/isa.js';

restoreSettingsAfterAll();
const C = cpu(), R = ref();
let seed = 900;

// [sequence lengths, hq, hkv, d]
const CASES: [number[], number, number, number][] = [
  [[1], 1, 1, 1], [[5, 3], 2, 1, 7], [[70], 4, 2, 16], [[63, 1, 130], 3, 3, 33], [[200, 65], 8, 2, 64],
  [[33, 90], 4, 1, 80], [[129], 2, 2, 128],
];

function batch(lens: number[], hq: number, hkv: number, d: number) {
  const t = lens.reduce((a, b) => a + b, 0);
  const starts = Tensor.i32([0, ...lens.map((_, i) => lens.slice(0, i + 1).reduce((a, b) => a + b, 0))]);
  return { t, starts, q: randomF32([t, hq, d], seed++), k: randomF32([t, hkv, d], seed++), v: randomF32([t, hkv, d], seed++),
    dout: randomF32([t, hq, d], seed++), scale: 1 / Math.sqrt(d) * 1.7 };
}

describe('training attention', () => {
  for (const [lens, hq, hkv, d] of CASES) {
    it(`forward and backward, lengths ${lens.join('+')}, ${hq}/${hkv} heads, d=${d}`, () => {
      const b = batch(lens, hq, hkv, d);
      const want = R.train.attentionForward(b.q, b.k, b.v, b.starts, b.scale);
      expectClose(want.out.data, R.attentionPrefill(b.q, b.k, b.v, b.starts, b.scale).data, 1e-12, 'reference vs prefill');
      const wantGrad = R.train.attentionBackward({ ...b, seqStarts: b.starts, out: want.out, lse: want.lse });
      atEveryIsa((what) => {
        const got = C.train.attentionForward(b.q, b.k, b.v, b.starts, b.scale);
        expectClose(got.out.data, want.out.data, 1e-5, `${what} out`);
        expectClose(got.lse.data, want.lse.data, 1e-5, `${what} lse`);
        const g = C.train.attentionBackward({ ...b, seqStarts: b.starts, out: got.out, lse: got.lse });
        expectClose(g.dq.data, wantGrad.dq.data, 2e-5, `${what} dq`);
        expectClose(g.dk.data, wantGrad.dk.data, 2e-5, `${what} dk`);
        expectClose(g.dv.data, wantGrad.dv.data, 2e-5, `${what} dv`);
      });
    });
  }

  it('rejects bad shapes and sequence starts', () => {
    const b = batch([4], 4, 2, 8);
    expect(() => C.train.attentionForward(b.q, randomF32([4, 3, 8], 1), randomF32([4, 3, 8], 2), b.starts, 1)).toThrow(/4 query heads cannot be grouped over 3/);
    expect(() => C.train.attentionForward(b.q, b.k, b.v, Tensor.i32([0, 3]), 1)).toThrow(/seqStarts must run from 0 to 4/);
    const f = C.train.attentionForward(b.q, b.k, b.v, b.starts, 1);
    expect(() => C.train.attentionBackward({ ...b, seqStarts: b.starts, out: f.out, lse: randomF32([4, 2], 3), scale: 1 }))
      .toThrow(/lse has shape \[4, 2\], expected \[4, 4\]/);
  });
});
