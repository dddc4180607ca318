// DIR/metrics.jsonl: one line per step, and a resume leaves it equal to an uninterrupted run's.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { METRICS_FILE, MetricsWriter, type StepMetrics } from '../src/train/metrics.js';
import { readJsonl, tmpDir } from './helpers/fixtures.js';

const step = (n: number, extra: Partial<StepMetrics> = {}): StepMetrics =>
  ({ step: n, loss: 10 / n, lr: 1e-3, gradNorm: 2 * n, tokens: 64, tokensPerSecond: 100 + n, ...extra });

function run(dir: string, from: number, to: number, resumed = from - 1): void {
  const w = MetricsWriter.open(dir, resumed);
  for (let n = from; n <= to; n++) w.write(step(n, n % 3 === 0 ? { evalLoss: Math.log(4) } : {}));
  w.close();
}

describe('MetricsWriter', () => {
  it('writes one line per step with the documented fields; eval steps add loss and perplexity', () => {
    const dir = tmpDir('metrics');
    const w = MetricsWriter.open(dir);
    w.write(step(1));
    // Each line is on disk as soon as it is written.
    expect(readJsonl(path.join(dir, METRICS_FILE))).toEqual([{ step: 1, loss: 10, lr: 1e-3, grad_norm: 2, tokens: 64, tokens_per_second: 101 }]);
    w.write(step(2, { evalLoss: Math.log(5), loss: NaN }));
    w.close();
    const lines = fs.readFileSync(path.join(dir, METRICS_FILE), 'utf8').trim().split('\n');
    expect(Object.keys(JSON.parse(lines[1]!))).toEqual(['step', 'loss', 'lr', 'grad_norm', 'tokens', 'tokens_per_second', 'eval_loss', 'eval_perplexity']);
    expect(JSON.parse(lines[1]!).loss).toBeNull();
    expect(JSON.parse(lines[1]!).eval_perplexity).toBeCloseTo(5, 12);
    expect(() => MetricsWriter.open(dir, 2).write(step(2))).toThrow(/steps must increase/);
  });

  it('a resume drops the lines after the resumed step and a torn last line: the file equals an uninterrupted run', () => {
    const whole = tmpDir('metrics-whole');
    run(whole, 1, 8);
    const broken = tmpDir('metrics-broken');
    run(broken, 1, 6);
    // Killed in the middle of step 7's line; the checkpoint is from step 4.
    fs.appendFileSync(path.join(broken, METRICS_FILE), '{"step":7,"lo');
    run(broken, 5, 8, 4);
    expect(fs.readFileSync(path.join(broken, METRICS_FILE), 'utf8')).toBe(fs.readFileSync(path.join(whole, METRICS_FILE), 'utf8'));
    // A fresh run (resumed step 0) starts the file anew.
    run(broken, 1, 2, 0);
    expect(readJsonl<{ step: number }>(path.join(broken, METRICS_FILE)).map((l) => l.step)).toEqual([1, 2]);
  });

  it('a line that is not a metrics line stops the resume and leaves the file as it was', () => {
    const dir = tmpDir('metrics-bad');
    run(dir, 1, 3);
    const file = path.join(dir, METRICS_FILE);
    fs.appendFileSync(file, 'garbage\n{"step": 5}\n');
    const before = fs.readFileSync(file, 'utf8');
    expect(() => MetricsWriter.open(dir, 2)).toThrow(new RegExp(`${file}:4: is not a metrics line`));
    expect(fs.readFileSync(file, 'utf8')).toBe(before);
  });
});
