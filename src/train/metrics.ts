// DIR/metrics.jsonl: one line per optimizer step, written (and fsynced) as the step ends, so the
// file is the run's record even when it is killed. A resumed run first drops the lines of steps
// after the checkpoint it resumes from (they will be run again), so that the file ends up equal
// to an uninterrupted run's; a line torn by a crash is dropped the same way.

import fs from 'node:fs';
import path from 'node:path';
import { UserError } from '../util/errors.js';
import { writeFileDurable } from '../util/atomic.js';
import { writeFully } from '../util/write-fully.js';

export const METRICS_FILE = 'metrics.jsonl';

export interface StepMetrics {
  /** Optimizer steps count from 1. */
  step: number;
  /** Mean cross-entropy over every target of the step. */
  loss: number;
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Tokens of the step's micro-batches. */
  tokens: number;
  tokensPerSecond: number;
  /** Present on the steps after which the eval data was run; perplexity is exp(evalLoss). */
  evalLoss?: number;
  /** Offloaded runs: disk traffic and the share of I/O time hidden under compute. */
  offload?: {
    read: Record<string, number>;
    written: Record<string, number>;
    phases: Record<string, { hidden: number }>;
  };
}

export class MetricsWriter {
  private constructor(
    readonly file: string,
    private fd: number,
    private lastStep: number,
  ) {}

  /** Opens DIR/metrics.jsonl for appending after step `resumedStep` (0: a fresh run, which
   *  starts the file anew): lines of later steps are dropped with an atomic rewrite. */
  static open(dir: string, resumedStep = 0): MetricsWriter {
    if (!Number.isSafeInteger(resumedStep) || resumedStep < 0) throw new RangeError(`resumedStep must be a non-negative integer, got ${resumedStep}`);
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, METRICS_FILE);
    const kept = keptLines(file, resumedStep);
    if (kept !== null) writeFileDurable(file, kept.map((l) => l + '\n').join(''));
    let fd: number;
    try {
      fd = fs.openSync(file, 'a');
    } catch (e) {
      throw new UserError(`${file}: cannot open for writing (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    return new MetricsWriter(file, fd, resumedStep);
  }

  write(m: StepMetrics): void {
    if (!Number.isSafeInteger(m.step) || m.step <= this.lastStep) throw new RangeError(`metrics for step ${m.step} after step ${this.lastStep}: steps must increase`);
    const line: Record<string, number> = {
      step: m.step, loss: m.loss, lr: m.lr, grad_norm: m.gradNorm, tokens: m.tokens, tokens_per_second: m.tokensPerSecond,
    };
    if (m.evalLoss !== undefined) {
      line.eval_loss = m.evalLoss;
      line.eval_perplexity = Math.exp(m.evalLoss);
    }
    if (m.offload) {
      const sum = (r: Record<string, number>) => Object.values(r).reduce((a, b) => a + b, 0);
      line.disk_read_bytes = sum(m.offload.read);
      line.disk_written_bytes = sum(m.offload.written);
      for (const [phase, p] of Object.entries(m.offload.phases)) line[`io_hidden_${phase}`] = p.hidden;
    }
    // Non-finite numbers are written as null (JSON has no NaN).
    writeFully(this.fd, JSON.stringify(line) + '\n', this.file);
    fs.fsyncSync(this.fd);
    this.lastStep = m.step;
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/** The lines to keep, or null when the file already holds exactly them. A line that is not a
 *  metrics line (other than a torn last one) stops the run with the file untouched. */
function keptLines(file: string, resumedStep: number): string[] | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new UserError(`${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const lines = text.split('\n');
  // With a trailing newline the last element is empty; without one it is a torn line.
  const torn = lines.pop()!;
  const kept: string[] = [];
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    const step = stepOf(line);
    if (step === null) throw new UserError(`${file}:${i + 1}: is not a metrics line (no integer "step"); fix or remove it`);
    if (step <= resumedStep) kept.push(line);
  });
  return kept.length === lines.length && torn === '' ? null : kept;
}

function stepOf(line: string): number | null {
  try {
    const v = JSON.parse(line) as { step?: unknown };
    return typeof v === 'object' && v !== null && Number.isSafeInteger(v.step) ? (v.step as number) : null;
  } catch {
    return null;
  }
}
