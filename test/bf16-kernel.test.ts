// bf16 mode's GEMM kernel is chosen by measuring both on the machine at hand (vdpbf16ps is twice
// the FMA rate on one CPU of ours and half on another), once per process; TIERLM_BF16_DOT decides
// instead; a saved choice (a resumed training run's) wins over both.
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { isaInfo, loadModel } from '../src/index.js';
import { selectBf16Kernel } from '../src/backend/cpu/bf16-kernel.js';
import { gemmBf16Dot } from '../src/backend/cpu/gemm.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';
import { measureProfile, saveProfile } from '../src/policy/profile.js';

const shape = { rows: 64, n: 4096, k: 4096 };
const saved = process.env.TIERLM_BF16_DOT;
afterEach(() => {
  if (saved === undefined) delete process.env.TIERLM_BF16_DOT;
  else process.env.TIERLM_BF16_DOT = saved;
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
