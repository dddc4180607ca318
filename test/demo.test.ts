// `tierlm demo` does the whole job: a model larger than its RAM limit, a plan, a batch generated
// under the limit, and a report of throughput, peak memory and where the time went.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { RUNTIME_OVERHEAD_BYTES } from '../src/policy/memory.js';
import { cli } from './helpers/cli.js';
import { tmpDir } from './helpers/fixtures.js';

const MiB = 2 ** 20;

describe('tierlm demo', () => {
  // A first run on a fresh machine: no saved hardware profile (HOME is empty and TIERLM_PROFILE,
  // which the suite sets, is cleared), so the demo measures one, in a child process, before it
  // plans. The measurement uses the tiny sizes to keep the test short: the path is the same as a
  // quick profile's. The model is a small shape (opt-offload-test, 206 MB) under a 64 MiB limit.
  it('runs end to end on a first run, with peak RSS within its RAM limit plus the runtime overhead', () => {
    const home = tmpDir('demo-home');
    const r = cli(['demo', '--dir', path.join(home, 'demo'), '--config', 'opt-offload-test', '--ram', '64MiB', '--prompt-len', '16', '--gen-len', '4'],
      { HOME: home, TIERLM_PROFILE: '', TIERLM_PROFILE_SIZES: 'tiny' }, [], true);
    expect(r.code, r.stderr).toBe(0);
    const saved = path.join(home, '.cache', 'tierlm', 'hardware.json');
    expect(r.stdout).toContain(`no hardware profile at ${saved}; measuring this machine (quick), once, in a separate process`);
    expect(r.stdout).toMatch(/the measuring process peaked at [\d.]+ MiB RSS/);
    expect(fs.existsSync(saved)).toBe(true);
    expect(r.stdout).toMatch(/model [\d.]+ MiB of weights, RAM limit 64\.0 MiB \([\d.]+× smaller\)/);
    expect(r.stdout).toMatch(/plan: \d+ sequences × \d+ batches; weights [\d.]+% in RAM/);
    expect(r.stdout).toMatch(/throughput {2}[\d.]+ generated tok\/s \(predicted [\d.]+\)/);
    expect(r.stdout).toMatch(/time {8}prefill [\d.]+ s \+ decode [\d.]+ s: compute [\d.]+ s, waiting for the disk [\d.]+ s/);
    const peak = /memory {6}peak RSS ([\d.]+) MiB for a 64\.0 MiB limit/.exec(r.stdout);
    expect(peak, r.stdout).not.toBeNull();
    expect(Number(peak![1]) * MiB).toBeLessThanOrEqual(64 * MiB + RUNTIME_OVERHEAD_BYTES);
  });
});
