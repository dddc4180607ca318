// bf16 mode's GEMM kernel is chosen by measuring both on the machine at hand (vdpbf16ps is twice
// the FMA rate on one CPU of ours and half on another), once per machine: the first measurement is
// kept in a file every later process reads, since the two kernels round differently and a rerun
// must compute as the run did. TIERLM_BF16_DOT decides instead; a saved choice (a resumed training
// run's) wins over both.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { isaInfo, loadModel } from '../src/index.js';
import { fasterBf16Kernel, keptBf16Kernel, machineKey, selectBf16Kernel } from '../src/backend/cpu/bf16-kernel.js';
import { gemmBf16Dot, gemmBf16Kernel } from '../src/backend/cpu/gemm.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';
import { measureProfile, saveProfile } from '../src/policy/profile.js';

const shape = { rows: 64, n: 4096, k: 4096 };
const saved = process.env.TIERLM_BF16_DOT;
const savedKernel = process.env.TIERLM_BF16_KERNEL;
afterEach(() => {
  if (saved === undefined) delete process.env.TIERLM_BF16_DOT;
  else process.env.TIERLM_BF16_DOT = saved;
  if (savedKernel === undefined) delete process.env.TIERLM_BF16_KERNEL;
  else process.env.TIERLM_BF16_KERNEL = savedKernel;
});

describe('the bf16 GEMM kernel', () => {
  it('is measured once per process, then kept; the environment and a saved choice override it', () => {
    delete process.env.TIERLM_BF16_DOT;
    const first = selectBf16Kernel(shape);
    expect(['dot', 'fma']).toContain(first);
    if (isaInfo().active !== 'avx512bf16') expect(first).toBe('fma');
    for (let i = 0; i < 3; i++) expect(selectBf16Kernel({ rows: 1, n: 64, k: 64 })).toBe(first);
    expect(gemmBf16Dot()).toBe(first === 'dot');
    process.env.TIERLM_BF16_DOT = '1';
    expect(selectBf16Kernel(shape)).toBe('dot');
    expect(gemmBf16Dot()).toBe(true);
    process.env.TIERLM_BF16_DOT = '0';
    expect(selectBf16Kernel(shape)).toBe('fma');
    expect(selectBf16Kernel(shape, 'dot')).toBe('dot');
    expect(gemmBf16Dot()).toBe(true);
  });

  it('the first measurement on a machine is kept, and later processes take it without measuring', () => {
    const dir = tmpDir('bf16-kept');
    const file = path.join(dir, 'sub', 'kernels.json');
    const first = keptBf16Kernel(shape, file);
    const kept = JSON.parse(fs.readFileSync(file, 'utf8'));
    expect(kept[machineKey()].bf16).toBe(first);
    if (isaInfo().active === 'avx512bf16') {
      expect(kept[machineKey()].dot_ms).toBeGreaterThan(0);
      expect(fasterBf16Kernel({ dot: kept[machineKey()].dot_ms, fma: kept[machineKey()].fma_ms })).toBe(first);
    } else expect(first).toBe('fma');
    // What the file keeps wins over a measurement: either value is returned as kept, and the
    // file is left as it was.
    for (const k of ['dot', 'fma'] as const) {
      const text = JSON.stringify({ ...kept, [machineKey()]: { bf16: k } });
      fs.writeFileSync(file, text);
      expect(keptBf16Kernel(shape, file)).toBe(k);
      expect(fs.readFileSync(file, 'utf8')).toBe(text);
    }
    // Another machine's entry (a shared home directory) is kept beside this one's.
    // (Measuring again may choose otherwise where the rates are close: what is kept is what was
    // returned.)
    fs.writeFileSync(file, JSON.stringify({ 'Other CPU | avx2': { bf16: 'dot' } }));
    const again = keptBf16Kernel(shape, file);
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toMatchObject({ 'Other CPU | avx2': { bf16: 'dot' }, [machineKey()]: { bf16: again } });
    // A damaged file, an entry of no known kernel, or 'amx' where this process cannot run AMX
    // (another kernel version on the same CPU), is measured over.
    const bads = ['{"trunc', '[1,2]', JSON.stringify({ [machineKey()]: { bf16: 'vnni' } }), ...(isaInfo().amx ? [] : [JSON.stringify({ [machineKey()]: { bf16: 'amx' } })])];
    for (const bad of bads) {
      fs.writeFileSync(file, bad);
      const k = keptBf16Kernel(shape, file);
      expect(JSON.parse(fs.readFileSync(file, 'utf8'))[machineKey()].bf16).toBe(k);
    }
    // A place that cannot be written still gives a choice.
    fs.writeFileSync(path.join(dir, 'plain'), 'x');
    expect(['dot', 'fma']).toContain(keptBf16Kernel(shape, path.join(dir, 'plain', 'kernels.json')));
  });

  it('takes vdpbf16ps only when it is clearly faster: close rates give the FMA kernel', () => {
    expect(fasterBf16Kernel({ dot: 5, fma: 10 })).toBe('dot');
    expect(fasterBf16Kernel({ dot: 8.9, fma: 10 })).toBe('dot');
    expect(fasterBf16Kernel({ dot: 9.5, fma: 10 })).toBe('fma');
    expect(fasterBf16Kernel({ dot: 10, fma: 10 })).toBe('fma');
    expect(fasterBf16Kernel({ dot: 20, fma: 10 })).toBe('fma');
    expect(fasterBf16Kernel({ dot: Infinity, fma: 0 })).toBe('fma');
    // AMX, where timed: under the margin of FMA's time and under vdpbf16ps's
    expect(fasterBf16Kernel({ dot: 5, fma: 10, amx: 2 })).toBe('amx');
    expect(fasterBf16Kernel({ dot: 5, fma: 10, amx: 6 })).toBe('dot');
    expect(fasterBf16Kernel({ dot: 20, fma: 10, amx: 8 })).toBe('amx');
    expect(fasterBf16Kernel({ dot: 20, fma: 10, amx: 9.5 })).toBe('fma');
    expect(fasterBf16Kernel({ dot: Infinity, fma: 10, amx: Infinity })).toBe('fma');
  });

  it('TIERLM_BF16_KERNEL names one (over TIERLM_BF16_DOT); a bad name, or amx where it cannot run, is refused', () => {
    process.env.TIERLM_BF16_DOT = '1';
    process.env.TIERLM_BF16_KERNEL = 'fma';
    expect(selectBf16Kernel(shape)).toBe('fma');
    expect(gemmBf16Kernel()).toBe('fma');
    process.env.TIERLM_BF16_KERNEL = 'dot';
    expect(selectBf16Kernel(shape)).toBe('dot');
    expect(gemmBf16Kernel()).toBe('dot');
    process.env.TIERLM_BF16_KERNEL = 'vnni';
    expect(() => selectBf16Kernel(shape)).toThrow(/TIERLM_BF16_KERNEL must be one of fma, dot, amx, got "vnni"/);
    process.env.TIERLM_BF16_KERNEL = 'amx';
    if (isaInfo().amx) expect(selectBf16Kernel(shape)).toBe('amx');
    else expect(() => selectBf16Kernel(shape)).toThrow(/TIERLM_BF16_KERNEL=amx: this CPU or OS does not let the process run AMX-BF16 tiles/);
    // A saved choice still wins; a saved 'amx' where AMX cannot run computes as vdpbf16ps, which
    // rounds as AMX does, and says so.
    expect(selectBf16Kernel(shape, 'amx')).toBe(isaInfo().amx ? 'amx' : 'dot');
    expect(gemmBf16Kernel()).toBe(isaInfo().amx ? 'amx' : 'dot');
  });

  it('a bf16 model load selects it; fp32 leaves the setting alone', async () => {
    const dir = path.join(fixturesDir, 'llama-tiny');
    process.env.TIERLM_BF16_DOT = '0';
    gemmBf16Dot(true);
    await (await loadModel(dir, { precision: 'fp32' })).close();
    expect(gemmBf16Dot()).toBe(true);
    await (await loadModel(dir, { precision: 'bf16' })).close();
    expect(gemmBf16Dot()).toBe(false);
  });

  it("a bf16 model load takes the saved profile's choice, unless the environment forces one", async () => {
    const dir = path.join(fixturesDir, 'llama-tiny');
    const tmp = tmpDir('bf16-profile');
    const file = path.join(tmp, 'hardware.json');
    const p = await measureProfile({ quick: true, diskDir: tmp, sizes: 'tiny' });
    const envProfile = process.env.TIERLM_PROFILE;
    process.env.TIERLM_PROFILE = file;
    try {
      delete process.env.TIERLM_BF16_DOT;
      for (const k of ['dot', 'fma'] as const) {
        saveProfile({ ...p, kernels: { bf16: k } }, file);
        gemmBf16Dot(k !== 'dot');
        await (await loadModel(dir, { precision: 'bf16' })).close();
        expect(gemmBf16Dot()).toBe(k === 'dot');
      }
      process.env.TIERLM_BF16_DOT = '0';
      saveProfile({ ...p, kernels: { bf16: 'dot' } }, file);
      await (await loadModel(dir, { precision: 'bf16' })).close();
      expect(gemmBf16Dot()).toBe(false);
    } finally {
      if (envProfile === undefined) delete process.env.TIERLM_PROFILE;
      else process.env.TIERLM_PROFILE = envProfile;
    }
  });
});
