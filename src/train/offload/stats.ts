// Per-step statistics of an offloaded run: bytes each state kind read from and wrote to disk, and
// per phase (forward, backward, optimizer) how long transfers were in flight and how long the
// compute stood waiting for them. The I/O hidden under compute is in-flight time not waited for
// (the union of each phase's transfer intervals, so overlapping transfers count once).

export interface PhaseStats {
  /** Seconds during which at least one of the phase's transfers was in flight (synchronous ones,
   *  weight tiles, added as they are: IoCounter.counted). */
  ioSeconds: number;
  /** Seconds the compute waited for the phase's transfers. */
  waitSeconds: number;
  /** Share of the I/O time hidden under compute: 1 − wait / io (1 when there was no I/O). */
  hidden: number;
}

export interface OffloadStepStats {
  /** Bytes read from / written to the disk tier, per state kind ('act': activation checkpoints). */
  read: Record<string, number>;
  written: Record<string, number>;
  phases: Record<'forward' | 'backward' | 'optimizer', PhaseStats>;
  /** Prefetch depth (units read ahead) the last pass used, and traces recorded so far. */
  prefetchDepth: number;
  traces: number;
}

export type Phase = 'forward' | 'backward' | 'optimizer';

export class IoCounter {
  private read: Record<string, number> = {};
  private written: Record<string, number> = {};
  private intervals: Record<string, [number, number][]> = {};
  private waits: Record<string, number> = {};
  /** Milliseconds of synchronous transfers, per phase (see counted). */
  private sync: Record<string, number> = {};

  /** Counts a transfer. The promise returned is marked handled: a transfer read ahead or written
   *  behind may fail before anyone awaits it, and its error must reach that await (an I/O error
   *  naming the file), not end the process as an unhandled rejection. */
  track(phase: string, kind: string, dir: 'read' | 'write', bytes: number, p: Promise<void>): Promise<void> {
    const t0 = performance.now();
    const tally = dir === 'read' ? this.read : this.written;
    tally[kind] = (tally[kind] ?? 0) + bytes;
    const out = p.finally(() => (this.intervals[phase] ??= []).push([t0, performance.now()]));
    out.catch(() => {});
    return out;
  }

  /** Counts a synchronous transfer of [t0, t1] (ms, performance.now()): all of it waited for. Its
   *  time adds to the phase's I/O time as it is, not as an interval (weight tiles make one per
   *  tile: a 50272-row table in 4 KiB gradient tiles kept hundreds of thousands a step, 100 MiB
   *  over the RAM limit); so an asynchronous transfer in flight beside it counts its overlap
   *  twice, and ioSeconds is at most the phase's time with a transfer in flight. */
  counted(phase: string, kind: string, dir: 'read' | 'write', bytes: number, t0: number, t1: number): void {
    const tally = dir === 'read' ? this.read : this.written;
    tally[kind] = (tally[kind] ?? 0) + bytes;
    this.sync[phase] = (this.sync[phase] ?? 0) + t1 - t0;
    this.waits[phase] = (this.waits[phase] ?? 0) + t1 - t0;
  }

  /** Awaits p, counting the time as the compute waiting in `phase`. */
  async wait<T>(phase: string, p: Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      return await p;
    } finally {
      this.waits[phase] = (this.waits[phase] ?? 0) + performance.now() - t0;
    }
  }

  /** The counts since the last take(), which resets them. */
  take(extra: { prefetchDepth: number; traces: number }): OffloadStepStats {
    const phase = (name: Phase): PhaseStats => {
      const io = (union(this.intervals[name] ?? []) + (this.sync[name] ?? 0)) / 1000;
      const wait = Math.min(io, (this.waits[name] ?? 0) / 1000);
      return { ioSeconds: io, waitSeconds: wait, hidden: io > 0 ? 1 - wait / io : 1 };
    };
    const out = { read: this.read, written: this.written, phases: { forward: phase('forward'), backward: phase('backward'), optimizer: phase('optimizer') }, ...extra };
    this.read = {};
    this.written = {};
    this.intervals = {};
    this.waits = {};
    this.sync = {};
    return out;
  }
}

/** Milliseconds covered by the union of the intervals. */
function union(iv: [number, number][]): number {
  const s = [...iv].sort((a, b) => a[0] - b[0]);
  let total = 0, end = -Infinity;
  for (const [a, b] of s) {
    if (b <= end) continue;
    total += b - Math.max(a, end);
    end = b;
  }
  return total;
}
