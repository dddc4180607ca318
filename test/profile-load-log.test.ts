// A saved hardware profile whose kernel choices a model load cannot use (not valid JSON, or
// measured on another CPU or instruction set) is said in the load's log, once, naming the file
// and why; the load still succeeds. No profile, or one without kernel choices, says nothing.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { isaInfo } from '../src/backend/index.js';
import { loadModel } from '../src/engine/model.js';
import { cli } from './helpers/cli.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';

const opt = path.join(fixturesDir, 'opt-tiny');
const fixture = fs.readFileSync(path.join(fixturesDir, 'hardware-profile.json'), 'utf8');
let dir: string;
const saved = process.env.TIERLM_PROFILE;

/** The fixture profile as measured on `cpu` with `isa`, with a bf16 kernel choice. */
function profileOf(cpu: string, isa: string): string {
  const p = JSON.parse(fixture);
  p.machine.cpu_model = cpu;
  p.machine.isa.active = isa;
  return JSON.stringify({ ...p, kernels: { bf16: 'fma' } });
}

/** What loading opt-tiny with the profile `file` logs. */
async function loadLog(file: string): Promise<string[]> {
  process.env.TIERLM_PROFILE = file;
  const lines: string[] = [];
  const m = await loadModel(opt, { log: (l) => lines.push(l) });
  await m.close();
  return lines;
}

beforeAll(() => {
  dir = tmpDir('profile-log');
});

afterAll(() => {
  process.env.TIERLM_PROFILE = saved;
});

describe('a saved profile whose kernel choices are not used is said at load', () => {
  const here = () => [os.cpus()[0]?.model.trim() || 'unknown', isaInfo().active] as const;

  it('a profile that is not valid JSON (cut short)', async () => {
    const file = path.join(dir, 'trunc.json');
    fs.writeFileSync(file, fixture.slice(0, 600));
    const lines = await loadLog(file);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^hardware profile ${file}: is not valid JSON: .*its kernel choices are not used$`));
  });

  it('a profile measured on another CPU, or with another instruction set active', async () => {
    const [cpu, isa] = here();
    const other = path.join(dir, 'other-cpu.json');
    fs.writeFileSync(other, profileOf('Another CPU 9000', isa));
    expect(await loadLog(other)).toEqual([`hardware profile ${other}: kernel choices not used (measured on Another CPU 9000, isa ${isa}; ` +
      `this process: ${cpu}, ${isa}); run \`tierlm profile\` here to measure them`]);
    const otherIsa = isa === 'scalar' ? 'avx2' : 'scalar';
    fs.writeFileSync(other, profileOf(cpu, otherIsa));
    expect(await loadLog(other)).toEqual([`hardware profile ${other}: kernel choices not used (measured on ${cpu}, isa ${otherIsa}; ` +
      `this process: ${cpu}, ${isa}); run \`tierlm profile\` here to measure them`]);
  });

  it('says nothing for no profile, one of this machine, or one without kernel choices', async () => {
    const [cpu, isa] = here();
    expect(await loadLog(path.join(dir, 'missing.json'))).toEqual([]);
    const file = path.join(dir, 'here.json');
    fs.writeFileSync(file, profileOf(cpu, isa));
    expect(await loadLog(file)).toEqual([]);
    expect(await loadLog(path.join(fixturesDir, 'hardware-profile.json'))).toEqual([]);
  });

  it('without a log the line goes to stderr (and the CLI shows it)', async () => {
    const file = path.join(dir, 'trunc.json');
    fs.writeFileSync(file, fixture.slice(0, 600));
    process.env.TIERLM_PROFILE = file;
    const write = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      await (await loadModel(opt)).close();
      expect(write.mock.calls.map((c) => String(c[0]))).toEqual([expect.stringMatching(new RegExp(`^tierlm: hardware profile ${file}: is not valid JSON: .*not used\\n$`))]);
    } finally {
      write.mockRestore();
    }
    // (a placement given: --policy auto would plan from the profile, and refuse it)
    const prompts = path.join(dir, 'prompts.jsonl');
    fs.writeFileSync(prompts, '{"id": "a", "prompt_token_ids": [2, 100, 200]}\n');
    const r = cli(['generate', '--model', opt, '--prompts', prompts, '--out', path.join(dir, 'out.jsonl'), '--max-new-tokens', '2',
      '--percent', '0', '100', '0', '100', '0', '100'], { TIERLM_PROFILE: file });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(new RegExp(`tierlm: hardware profile ${file}: is not valid JSON: .*its kernel choices are not used\\n`));
  });

  it('a bf16 training run says it too', () => {
    const file = path.join(dir, 'trunc.json');
    fs.writeFileSync(file, fixture.slice(0, 600));
    const data = path.join(dir, 'train.jsonl');
    fs.writeFileSync(data, '{"token_ids": [1, 5, 9, 20, 30, 40, 50, 60]}\n{"token_ids": [1, 7, 8, 9, 10, 11, 12]}\n');
    const r = cli(['train', '--model', path.join(fixturesDir, 'llama-tiny'), '--data', data, '--out', path.join(dir, 'trained'),
      '--precision', 'bf16', '--max-steps', '1', '--batch-size', '1', '--seq-len', '16'], { TIERLM_PROFILE: file });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(new RegExp(`tierlm: hardware profile ${file}: is not valid JSON: .*its kernel choices are not used\\n`));
  });
});
