// `tierlm demo` does the whole job: a model larger than its RAM limit, a plan, a batch generated
// under the limit, and a report of throughput, peak memory and where the time went.
import { describe, expect, it } from 'vitest';
import { cli } from './helpers/cli.js';
import { tmpDir } from './helpers/fixtures.js';

describe('tierlm demo', () => {
  it('runs end to end under its RAM limit (small model for the test)', () => {
    const r = cli(['demo', '--dir', tmpDir('demo'), '--config', 'opt-offload-test', '--ram', '64MiB', '--prompt-len', '16', '--gen-len', '4']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/model [\d.]+ MiB of weights, RAM limit 64\.0 MiB \([\d.]+× smaller\)/);
    expect(r.stdout).toMatch(/plan: \d+ sequences × \d+ batches; weights [\d.]+% in RAM/);
    expect(r.stdout).toMatch(/throughput {2}[\d.]+ generated tok\/s \(predicted [\d.]+\)/);
    expect(r.stdout).toMatch(/memory {6}peak RSS [\d.]+ MiB for a 64\.0 MiB limit/);
    expect(r.stdout).toMatch(/time {8}prefill [\d.]+ s \+ decode [\d.]+ s: compute [\d.]+ s, waiting for the disk [\d.]+ s/);
  });
});
