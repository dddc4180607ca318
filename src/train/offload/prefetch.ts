// ZeRO-Infinity's overlap-centric prefetcher. The first pass of each kind (training: forward then
// backward; evaluation: forward only) records the order in which units (layers, globals) are
// fetched; later passes follow that trace and start reading the next units while the current one
// computes, as deep as the measured read time per unit over the measured compute time per unit
// calls for (plus one), up to the depth the RAM plan allows. A fetch that differs from the trace
// is noticed: the prefetched units are dropped and the next pass records a new trace.
//
// The trace is cyclic: after a pass's last unit come the next pass's first ones (gradient
// accumulation's next micro-batch), except after a step's last pass, whose successor reads what
// the optimizer has changed: nothing is read ahead past its end (such reads were only dropped).
// Before the optimizer changes the parameters, drop() discards everything read ahead.

import type { Loaded } from './store.js';

type Pass = 'train' | 'eval';

export class Prefetcher {
  private readonly byPass = new Map<Pass, string[]>();
  private recording: string[] | null = null;
  private trace: string[] | null = null;
  private pos = 0;
  private kind: Pass = 'train';
  /** Whether the pass reads ahead into the next one (see beginPass). */
  private wraps = true;
  private readonly pending = new Map<string, Loaded>();
  /** Units read ahead of use, as last computed. */
  depth = 1;
  /** Traces recorded (a changed order records another). */
  private recorded = 0;
  private computeStart = 0;
  private computeMs = 0;
  private events = 0;
  private readMs = 0;
  private reads = 0;

  constructor(
    private readonly maxDepth: number,
    private readonly tryRead: (unit: number) => Loaded | null,
    private readonly release: (l: Loaded) => void,
    /** Milliseconds clock for the compute time between fetches (a test gives its own). */
    private readonly now: () => number = () => performance.now(),
  ) {}

  get traces(): number {
    return this.recorded;
  }

  /** `last`: the pass is the last before the parameters change (a step's last micro-batch), so
   *  nothing past its end is read ahead. */
  beginPass(kind: Pass, last = false): void {
    this.wraps = !last;
    // What the other kind of pass read ahead would hold buffers this one waits for.
    if (kind !== this.kind) void this.drop();
    this.trace = this.byPass.get(kind) ?? null;
    this.recording = this.trace ? null : [];
    this.kind = kind;
    this.pos = 0;
  }

  /** The unit's read started ahead, if any; records or checks the event against the trace. */
  take(unit: number, backward: boolean): Loaded | undefined {
    if (this.computeStart > 0) {
      this.computeMs += this.now() - this.computeStart;
      this.events++;
    }
    const key = `${unit}${backward ? 'b' : 'f'}`;
    if (this.recording) this.recording.push(key);
    else if (this.trace) {
      if (this.trace[this.pos] !== key) {
        // The order changed: forget this trace; the next pass of this kind records a new one.
        this.byPass.delete(this.kind);
        this.trace = null;
        void this.drop();
      } else this.pos++;
    }
    const l = this.pending.get(key);
    this.pending.delete(key);
    return l;
  }

  /** A read that has landed, for the bandwidth estimate. */
  sample(l: Loaded): void {
    if (l.bytes === 0) return;
    this.readMs += l.readMs;
    this.reads++;
  }

  /** Starts reads of the next units of the trace (those not started yet, while buffers last). */
  ahead(): void {
    this.computeStart = this.now();
    if (!this.trace) return;
    for (let d = 0; d < this.depth; d++) {
      if (!this.wraps && this.pos + d >= this.trace.length) break;
      const key = this.trace[(this.pos + d) % this.trace.length]!;
      if (this.pending.has(key)) continue;
      const l = this.tryRead(Number.parseInt(key, 10));
      if (!l) break;
      this.pending.set(key, l);
    }
  }

  endPass(): void {
    this.computeStart = 0;
    if (this.recording) {
      this.byPass.set(this.kind, this.recording);
      this.recorded++;
      this.recording = null;
    }
    // Depth from what was measured: a unit's read time over a unit's compute time, plus one.
    if (this.events > 0 && this.reads > 0) {
      const perCompute = this.computeMs / this.events;
      const perRead = this.readMs / this.reads;
      this.depth = Math.max(1, Math.min(this.maxDepth, Math.ceil(perRead / Math.max(perCompute, 1e-3)) + 1));
    }
  }

  /** Discards every read started ahead (waiting for each to land before its buffer is reused). */
  async drop(): Promise<void> {
    const all = [...this.pending.values()];
    this.pending.clear();
    await Promise.all(all.map((l) => l.done.catch(() => {}).then(() => this.release(l))));
  }
}
