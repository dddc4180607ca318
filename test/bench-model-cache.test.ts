// Runs sharing a model cache make a dummy model one at a time (under `DIR.lock`) and publish it
// whole (renamed in from a temporary sibling): a second `tierlm bench --config` on the same cache
// deleted the first one's model while it was being written, and one of them failed on a truncated
// model.safetensors.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { dummyModel } from '../src/engine/bench.js';
import { loadModel } from '../src/engine/model.js';
import { FileLock } from '../src/tensor/disk/lock.js';
import { repoRoot, tmpDir } from './helpers/fixtures.js';

interface Child {
  stderr: () => string;
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

function startCli(args: string[]): Child {
  const p = spawn(process.execPath, ['--import', 'tsx', path.join(repoRoot, 'src/cli/run.ts'), ...args], { cwd: repoRoot, env: process.env });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  return { stderr: () => stderr, done };
}

async function until(what: string, cond: () => boolean, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('the dummy-model cache', () => {
  it('two runs making the same model at once both succeed on the same complete model', async () => {
    const cache = tmpDir('models');
    const dir = path.join(cache, 'opt-offload-test-l6-f16');
    // Hold the lock ourselves until both runs wait for it, so that they start making it together.
    const held = FileLock.tryAcquire(`${dir}.lock`)!;
    expect(held).not.toBeNull();
    const args = ['bench', '--config', 'opt-offload-test', '--layers', '6', '--model-cache', cache, '--prompt-len', '8', '--gen-len', '2', '--json'];
    const runs = [startCli(args), startCli(args)];
    try {
      await until('both runs to wait for the lock', () => runs.every((r) => r.stderr().includes(`waiting for another run that holds ${dir}.lock`)));
      expect(fs.existsSync(dir)).toBe(false);
    } finally {
      held.release();
    }
    const results = await Promise.all(runs.map((r) => r.done));
    for (const r of results) {
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout.trim()).model).toBe(dir);
    }
    expect(fs.existsSync(path.join(dir, 'generation_config.json'))).toBe(true);
    expect(fs.readdirSync(cache).sort()).toEqual(['opt-offload-test-l6-f16', 'opt-offload-test-l6-f16.lock']);
  });

  it('replaces a half-written model and removes a dead maker\'s temporary', async () => {
    const cache = tmpDir('models');
    const fresh = await dummyModel('opt-test', undefined, tmpDir('models'));
    const dir = path.join(cache, 'opt-test-f16');
    // An old maker killed midway: config and part of the weights, no generation_config.json.
    fs.mkdirSync(dir);
    fs.copyFileSync(path.join(fresh, 'config.json'), path.join(dir, 'config.json'));
    fs.writeFileSync(path.join(dir, 'model.safetensors'), fs.readFileSync(path.join(fresh, 'model.safetensors')).subarray(0, 4096));
    const dead = `${dir}.tmp-999999-deadbeef`;
    fs.mkdirSync(dead);
    fs.writeFileSync(path.join(dead, 'model.safetensors'), 'half');
    const logs: string[] = [];
    expect(await dummyModel('opt-test', undefined, cache, (m) => logs.push(m))).toBe(dir);
    expect(logs).toEqual([]); // nobody held the lock
    expect(fs.readdirSync(cache).sort()).toEqual(['opt-test-f16', 'opt-test-f16.lock']);
    for (const f of ['config.json', 'model.safetensors', 'generation_config.json']) {
      expect(fs.readFileSync(path.join(dir, f)).equals(fs.readFileSync(path.join(fresh, f))), f).toBe(true);
    }
    const model = await loadModel(dir);
    await model.close();
    // A complete model is kept as it is.
    const before = fs.statSync(path.join(dir, 'model.safetensors')).mtimeMs;
    expect(await dummyModel('opt-test', undefined, cache)).toBe(dir);
    expect(fs.statSync(path.join(dir, 'model.safetensors')).mtimeMs).toBe(before);
  });
});
