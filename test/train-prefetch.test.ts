// The overlap-centric prefetcher (src/train/offload/prefetch.ts): the first pass records the order
// units are fetched in, later passes read ahead along it, at a depth computed from measured read
// and compute times, and a changed order is noticed, dropped and traced again.
import { describe, expect, it } from 'vitest';
import { Prefetcher } from '../src/train/offload/prefetch.js';
import type { Loaded } from '../src/train/offload/store.js';

/** A prefetcher over fake reads that land at once, each "taking" readMs, and a fake clock that each
 *  unit's compute advances by computeMs; logs what it read ahead. */
function harness(maxDepth: number, readMs: number, buffers = 8) {
  const started: number[] = [];
  let free = buffers;
  let clock = 1;
  const loaded = (unit: number): Loaded => ({ unit, lease: null, start: 0, done: Promise.resolve(), bytes: 1, readMs });
  const p = new Prefetcher(maxDepth, (u) => {
    if (free === 0) return null;
    free--;
    started.push(u);
    return loaded(u);
  }, () => free++, () => clock);
  /** One pass over `order` (unit, backward) as the store drives it; returns the units found read ahead. */
  const pass = async (order: [number, boolean][], kind: 'train' | 'eval' = 'train', computeMs = 0, last = false) => {
    const hits: number[] = [];
    p.beginPass(kind, last);
    for (const [u, back] of order) {
      const l = p.take(u, back);
      if (l) {
        hits.push(u);
        free++;
      }
      p.sample(l ?? loaded(u));
      p.ahead();
      clock += computeMs;
    }
    p.endPass();
    return hits;
  };
  return { p, pass, started };
}

const L = 4;
const train: [number, boolean][] = [[L, true], ...Array.from({ length: L }, (_, j) => [j, false] as [number, boolean]),
  ...Array.from({ length: L }, (_, j) => [L - 1 - j, true] as [number, boolean])];

describe('prefetch along a recorded trace', () => {
  it('records the first pass, then reads ahead along it', async () => {
    const h = harness(4, 5);
    expect(await h.pass(train)).toEqual([]);
    expect(h.p.traces).toBe(1);
    expect(h.started).toEqual([]);
    const hits = await h.pass(train);
    // Every unit but the first was read ahead (the first is read ahead by the previous pass's end).
    expect(hits).toEqual(train.slice(1).map(([u]) => u));
    const third = await h.pass(train);
    expect(third).toEqual(train.map(([u]) => u));
    expect(h.p.traces).toBe(1);
  });

  it('notices a changed order, stops reading ahead along the old one, and traces the new one', async () => {
    const h = harness(2, 5);
    await h.pass(train);
    await h.pass(train);
    // A different order: the layers' backward in forward order.
    const changed: [number, boolean][] = [[L, true], ...train.slice(1, L + 1), ...Array.from({ length: L }, (_, j) => [j, true] as [number, boolean])];
    const before = h.started.length;
    await h.pass(changed);
    expect(h.p.traces).toBe(1);
    // The next pass of the kind records the new order, and the one after follows it.
    expect(await h.pass(changed)).toEqual([]);
    expect(h.p.traces).toBe(2);
    expect(await h.pass(changed)).toEqual(changed.map(([u]) => u).slice(1));
    expect(h.started.length).toBeGreaterThan(before);
    // An evaluation pass has its own trace: it does not disturb the training one (what it read
    // ahead for its own next pass is dropped, so the first unit is read on demand).
    await h.pass(train.slice(0, L + 1).map(([u]) => [u, false] as [number, boolean]), 'eval');
    expect(h.p.traces).toBe(3);
    expect(await h.pass(changed)).toEqual(changed.map(([u]) => u).slice(1));
    expect(h.p.traces).toBe(3);
  });

  it("reads ahead into the next micro-batch's pass, but nothing past a step's last pass", async () => {
    const h = harness(3, 5);
    const units = train.map(([u]) => u);
    await h.pass(train);
    await h.pass(train);
    expect(h.p.depth).toBe(3);
    // An accumulation pass reads its own units from the fourth on, then the next pass's first three.
    let before = h.started.length;
    expect(await h.pass(train)).toEqual(units);
    expect(h.started.slice(before)).toEqual([...units.slice(3), ...units.slice(0, 3)]);
    // The step's last pass: only its own.
    before = h.started.length;
    expect(await h.pass(train, 'train', 0, true)).toEqual(units);
    expect(h.started.slice(before)).toEqual(units.slice(3));
    // So the next step's first unit is read on demand.
    expect(await h.pass(train)).toEqual(units.slice(1));
  });

  it('reads as deep as read time over compute time calls for, within the planned bound', async () => {
    const slowDisk = harness(6, 20);
    await slowDisk.pass(train, 'train', 2);
    await slowDisk.pass(train, 'train', 2);
    expect(slowDisk.p.depth).toBe(6);
    const fastDisk = harness(6, 0.5);
    await fastDisk.pass(train, 'train', 4);
    expect(fastDisk.p.depth).toBe(2);
    const mid = harness(6, 10);
    await mid.pass(train, 'train', 4);
    expect(mid.p.depth).toBe(4); // ⌈10 / 4⌉ + 1
  });
});
