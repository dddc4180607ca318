// A generation block that stays open for continuous batching: its cache rows are slots that
// sequences take and give back between steps. Each step runs the runner's schedule (zig-zag over
// the batches given, or one batch at a time for the row-by-row schedule) over the steps the
// engine built; the ordering of loads and stores is the runner's (src/schedule/runner.ts), with
// one addition: a batch's cache load waits for the stores of the step that last computed that
// batch, which is the step before or one already finished (every store of a step has finished
// when the step returns).

import type { CacheDType } from '../backend/index.js';
import type { Step } from '../models/transformer.js';
import type { Tensor } from '../tensor/tensor.js';
import type { BlockRunner, BlockState } from './runner.js';

export interface RunningShape {
  /** Rows (slots) per batch, and batches. */
  rows: number;
  batches: number;
  /** Positions per cache row. */
  capacity: number;
  /** Tokens one batch may hold in a step (activation buffers). */
  maxTokens: number;
  cacheDtype: CacheDType;
}

export class RunningBlock {
  /** Steps run so far (the token index of the schedule's transfers). */
  private i = 0;
  private readonly logits: (Tensor<'f32'> | null)[] = [];
  private failed: unknown = null;

  constructor(
    private readonly runner: BlockRunner,
    private readonly state: BlockState,
    private readonly rowByRow: boolean,
  ) {}

  /** Positions filled in each row of each batch. */
  get lengths(): Int32Array[] {
    return this.state.cache.lengths;
  }

  /** Runs one step: steps[k] for every batch k that has one (null: nothing to compute there).
   *  Then each row's length grows by its tokens; returns each batch's logits (a row per
   *  sequence of its step, in order). On failure the block cannot be used any more. */
  async step(steps: (Step | null)[]): Promise<(Tensor<'f32'> | null)[]> {
    if (this.failed) throw this.failed;
    const live = steps.flatMap((s, k) => (s ? [k] : []));
    const { acts, transfers } = this.state;
    const i = this.i++;
    for (const k of live) acts.tokens[k] = steps[k]!.ids.length;
    transfers.forgetBefore(i - 1);
    const out: (Tensor<'f32'> | null)[] = steps.map(() => null);
    try {
      const groups = this.rowByRow ? live.map((k) => [k]) : [live];
      for (const g of groups) await this.runner.zigzag(i, g, steps as Step[], this.state, this.logits, false);
    } catch (e) {
      this.failed = e;
      throw e;
    }
    for (const k of live) {
      this.state.computedAt[k] = i;
      const step = steps[k]!;
      const len = this.lengths[k]!;
      for (let s = 0; s + 1 < step.seqStarts.length; s++) {
        len[step.rows[s]!] = step.positions[step.seqStarts[s]!]! + step.seqStarts[s + 1]! - step.seqStarts[s]!;
      }
      out[k] = this.logits[k]!;
    }
    return out;
  }

  /** Empties row r of batch k for the next sequence (its stale positions are never read: a row
   *  reads only the positions its own sequence filled). */
  release(k: number, r: number): void {
    this.lengths[k]![r] = 0;
  }

  /** Waits for every transfer still in flight (the files may be closed after). */
  async close(): Promise<void> {
    await this.runner.finish(this.state, this.failed !== null);
  }
}
