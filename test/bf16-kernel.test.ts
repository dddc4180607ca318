// bf16 mode's GEMM kernel is chosen by measuring both on the machine at hand (vdpbf16ps is twice
// the FMA rate on one CPU of ours and half on another), once per machine: the first measurement is
// kept in a file every later process reads, since the two kernels round differently and a rerun
// must compute as the run did. TIERLM_BF16_DOT decides instead; a saved choice (a resumed training
// run's) wins over both.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type Isa, isaInfo, loadModel, setIsa } from '../src/index.js';
import { fasterBf16Kernel, keptBf16Kernel, machineKey, selectBf16Kernel } from '../src/backend/cpu/bf16-kernel.js';
import { gemmBf16Dot, gemmBf16Kernel } from '../src/backend/cpu/gemm.js';
import { fixturesDir, tmpDir } from './helpers/fixtures.js';
import { measureProfile, saveProfile } from '../src/policy/profile.js';

const shape = { rows: 64, n: 4096, k: 4096 };
/** Whether vdpbf16ps runs here (AVX512_BF16 at the active level): elsewhere 'dot' runs as 'fma'. */
const dotRuns = () => isaInfo().active === 'avx512bf16';
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
    if (dotRuns()) {
      expect(selectBf16Kernel(shape)).toBe('dot');
      expect(gemmBf16Dot()).toBe(true);
    } else expect(() => selectBf16Kernel(shape)).toThrow(/TIERLM_BF16_DOT=1: vdpbf16ps needs AVX512_BF16/);
    process.env.TIERLM_BF16_DOT = '0';
    expect(selectBf16Kernel(shape)).toBe('fma');
    expect(selectBf16Kernel(shape, 'dot', null, { log: () => {} })).toBe(dotRuns() ? 'dot' : 'fma');
    expect(gemmBf16Dot()).toBe(dotRuns());
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
    if (dotRuns()) {
      expect(selectBf16Kernel(shape)).toBe('dot');
      expect(gemmBf16Kernel()).toBe('dot');
    } else expect(() => selectBf16Kernel(shape)).toThrow(/TIERLM_BF16_KERNEL=dot: vdpbf16ps needs AVX512_BF16 and this process runs at/);
    process.env.TIERLM_BF16_KERNEL = 'vnni';
    expect(() => selectBf16Kernel(shape)).toThrow(/TIERLM_BF16_KERNEL must be one of fma, dot, amx, got "vnni"/);
    process.env.TIERLM_BF16_KERNEL = 'amx';
    if (isaInfo().amx) expect(selectBf16Kernel(shape)).toBe('amx');
    else expect(() => selectBf16Kernel(shape)).toThrow(/TIERLM_BF16_KERNEL=amx: this CPU or OS does not let the process run AMX-BF16 tiles/);
    // A saved choice still wins; a saved 'amx' where AMX cannot run computes as vdpbf16ps, which
    // rounds as AMX does (or, without AVX512_BF16, as FMA), and says so.
    const runs = isaInfo().amx ? 'amx' : dotRuns() ? 'dot' : 'fma';
    expect(selectBf16Kernel(shape, 'amx', null, { log: () => {} })).toBe(runs);
    expect(gemmBf16Kernel()).toBe(runs);
  });

  it('a saved, profiled or checkpointed kernel that cannot run here is replaced by the one that runs, with a note; the environment\'s is refused', () => {
    // (a CPU without AVX512_BF16 as this process sees it: the highest level below it that this one has)
    const detected = isaInfo().detected as Isa;
    const below: Isa = detected === 'avx512bf16' ? 'avx512' : detected;
    delete process.env.TIERLM_BF16_DOT;
    delete process.env.TIERLM_BF16_KERNEL;
    const notes: string[] = [];
    const log = (m: string) => void notes.push(m);
    expect(setIsa(below)).toBe(true);
    try {
      expect(selectBf16Kernel(shape, 'dot', null, { savedFrom: 'checkpoint /c/training-state/state.json (options.bf16_kernel)', log })).toBe('fma');
      expect(gemmBf16Kernel()).toBe('fma');
      expect(notes).toEqual([`checkpoint /c/training-state/state.json (options.bf16_kernel) names bf16 kernel 'dot', which cannot run here (vdpbf16ps needs AVX512_BF16 and this process runs at ${below}, isaInfo().active); running 'fma' instead, which rounds differently, so results will not match bit for bit those computed with it`]);
      expect(selectBf16Kernel(shape, 'amx', null, { log })).toBe('fma');
      expect(notes[1]).toMatch(/^the saved choice names bf16 kernel 'amx', which cannot run here \(.*\); running 'fma' instead, which rounds differently/);
      expect(selectBf16Kernel(shape, null, 'dot', { log })).toBe('fma');
      expect(notes[2]).toMatch(/^the hardware profile \(kernels\.bf16\) names bf16 kernel 'dot', which cannot run here/);
      expect(selectBf16Kernel(shape, 'fma', 'dot', { log })).toBe('fma');
      expect(notes.length, 'a kernel that runs says nothing').toBe(3);
      process.env.TIERLM_BF16_KERNEL = 'dot';
      expect(() => selectBf16Kernel(shape, null, null, { log })).toThrow(RangeError);
      delete process.env.TIERLM_BF16_KERNEL;
      process.env.TIERLM_BF16_DOT = '1';
      expect(() => selectBf16Kernel(shape, null, null, { log })).toThrow(/TIERLM_BF16_DOT=1: vdpbf16ps needs AVX512_BF16/);
    } finally {
      setIsa(detected);
    }
  });

  it('a bf16 model load selects it; fp32 leaves the setting alone', async () => {
    const dir = path.join(fixturesDir, 'llama-tiny');
    process.env.TIERLM_BF16_DOT = '0';
    gemmBf16Kernel('amx-emulated'); // (a setting any CPU takes, and no load chooses)
    await (await loadModel(dir, { precision: 'fp32' })).close();
    expect(gemmBf16Kernel()).toBe('amx-emulated');
    await (await loadModel(dir, { precision: 'bf16' })).close();
    expect(gemmBf16Kernel()).toBe('fma');
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
        gemmBf16Kernel(k === 'dot' ? 'fma' : 'amx-emulated');
        // (a profile's 'dot' where vdpbf16ps cannot run: FMA, with a note)
        await (await loadModel(dir, { precision: 'bf16' })).close();
        expect(gemmBf16Kernel()).toBe(k === 'dot' && dotRuns() ? 'dot' : 'fma');
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
