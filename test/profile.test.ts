// The hardware profile: measured with tiny sizes, saved, loaded, validated, interpolated, reused.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getThreads, isaInfo } from '../src/backend/index.js';
import { GEMM_KERNEL_KINDS, gemmBf16Dot, gemmOnePassRows, gemmWidenPanels } from '../src/backend/cpu/gemm.js';
import {
  type HardwareProfile, ProfileFileError, applySavedGemmBlocking, applySavedOnePassRows, attentionDecodeRate, attentionPrefillRate, defaultProfilePath,
  diskReadRate, diskWriteRate, ensureProfile, gemmRate, loadProfile, measureProfile, memcpyRate, profileJson, saveProfile,
  savedBf16Kernel,
} from '../src/policy/profile.js';
import { loadModel } from '../src/engine/model.js';
import { initModel } from '../src/models/init.js';
import { UserError } from '../src/util/errors.js';
import { cli } from './helpers/cli.js';
import { tmpDir } from './helpers/fixtures.js';

/** Every number in the object, with its path. */
function numbers(x: unknown, at = ''): [string, number][] {
  if (typeof x === 'number') return [[at, x]];
  if (Array.isArray(x)) return x.flatMap((v, i) => numbers(v, `${at}[${i}]`));
  if (typeof x === 'object' && x !== null) return Object.entries(x).flatMap(([k, v]) => numbers(v, `${at}.${k}`));
  return [];
}

let dir: string;
let profile: HardwareProfile;

beforeAll(async () => {
  dir = tmpDir('profile');
  profile = await measureProfile({ quick: true, diskDir: dir, sizes: 'tiny' });
});

afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('measureProfile', () => {
  it('measures every rate as a positive finite number, with the machine facts', () => {
    const nums = numbers(profile);
    expect(nums.length).toBeGreaterThan(40);
    for (const [at, v] of nums) expect(Number.isFinite(v) && v > 0, `${at} = ${v}`).toBe(true);
    expect(profile.quick).toBe(true);
    expect(profile.sizes).toBe('tiny');
    expect(profile.machine.threads).toBe(getThreads());
    expect(profile.machine.node).toBe(process.version);
    expect(profile.machine.cpuModel.length).toBeGreaterThan(0);
    expect(Date.parse(profile.createdAt)).toBeGreaterThan(0);
    expect(profile.gpu).toBeUndefined();
    const kinds = profile.gemm.rows.map((r) => `${r.format}/${r.mode}`);
    for (const k of ['f32/fp32', 'f16/fp32', 'bf16/fp32', 'q4/fp32', 'q8/fp32', 'bf16/bf16', 'q4/bf16', 'q8/bf16']) expect(kinds).toContain(k);
    for (const r of profile.gemm.rows) expect(r.flopsPerSecond).toHaveLength(profile.gemm.ms.length);
    expect(new Set(profile.attention.decode.map((e) => e.cacheDtype))).toEqual(new Set(['f32', 'f16']));
    // The bf16 GEMM kernel is chosen by timing (widening + FMA only without AVX512_BF16), and the
    // RAM read rate is measured beside the copy rate.
    expect(['dot', 'fma']).toContain(profile.kernels?.bf16);
    if (isaInfo().active !== 'avx512bf16') expect(profile.kernels?.bf16).toBe('fma');
    expect(profile.memory.readBytesPerSecond).toBeGreaterThan(0);
    // The disk test file is gone.
    expect(fs.readdirSync(dir).filter((f) => f.startsWith('tierlm-profile-'))).toEqual([]);
  });

  it('saves the bf16 kernel choice; it is read back only for this CPU, and measuring restores the setting', async () => {
    const before = gemmBf16Dot();
    const p = await measureProfile({ quick: true, diskDir: dir, sizes: 'tiny' });
    expect(gemmBf16Dot()).toBe(before);
    const file = path.join(dir, 'kernel.json');
    for (const k of ['dot', 'fma', 'amx'] as const) {
      saveProfile({ ...p, kernels: { bf16: k } }, file);
      expect(loadProfile(file)!.kernels).toEqual({ bf16: k });
      expect(savedBf16Kernel(file)).toBe(k);
    }
    saveProfile({ ...p, machine: { ...p.machine, cpuModel: 'another CPU' } }, file);
    expect(savedBf16Kernel(file)).toBeNull();
    const { kernels: _, ...old } = p;
    saveProfile(old, file);
    expect(savedBf16Kernel(file)).toBeNull();
    expect(savedBf16Kernel(path.join(dir, 'missing.json'))).toBeNull();
    fs.writeFileSync(file, profileJson({ ...p, kernels: { bf16: 'vnni' as 'dot' } }));
    expect(() => loadProfile(file)).toThrow(/kernels\.bf16/);
    expect(savedBf16Kernel(file)).toBeNull();
  });

  it('chooses the row blocking of 15-16-row products per kernel on AVX-512, and restores the setting', async () => {
    const before = gemmOnePassRows();
    const p = await measureProfile({ quick: true, diskDir: dir, sizes: 'tiny' });
    expect(gemmOnePassRows()).toEqual(before);
    if (isaInfo().active.startsWith('avx512')) {
      for (const k of p.kernels!.onePassRows!) expect(GEMM_KERNEL_KINDS).toContain(k);
      // (in the file as one_pass_rows)
      expect(JSON.parse(profileJson(p)).kernels.one_pass_rows).toEqual(p.kernels!.onePassRows);
    } else {
      expect(p.kernels!.onePassRows).toBeUndefined();
    }
  });

  it('chooses per kernel whether prefill widens bf16/f16 panel groups once, and restores the setting', async () => {
    const before = gemmWidenPanels();
    const p = await measureProfile({ quick: true, diskDir: dir, sizes: 'tiny' });
    expect(gemmWidenPanels()).toEqual(before);
    if (isaInfo().active !== 'scalar') {
      for (const k of p.kernels!.widenPanels!) expect(['f16', 'bf16']).toContain(k);
      expect(JSON.parse(profileJson(p)).kernels.widen_panels).toEqual(p.kernels!.widenPanels);
    } else {
      expect(p.kernels!.widenPanels).toBeUndefined();
    }
  });

  it('a saved widening choice is applied with the row blocking, for this CPU only; a bad one is named', () => {
    const [startWiden, startOnePass] = [gemmWidenPanels(), gemmOnePassRows()];
    const file = path.join(dir, 'widen.json');
    try {
      saveProfile({ ...profile, kernels: { bf16: 'fma', onePassRows: ['f32'], widenPanels: ['bf16'] } }, file);
      expect(applySavedGemmBlocking(file)).toEqual({ onePassRows: ['f32'], widenPanels: ['bf16'] });
      expect([gemmOnePassRows(), gemmWidenPanels()]).toEqual([['f32'], ['bf16']]);
      saveProfile({ ...profile, kernels: { bf16: 'fma', widenPanels: [] } }, file);
      expect(applySavedGemmBlocking(file)).toEqual({ onePassRows: null, widenPanels: [] });
      expect(gemmWidenPanels()).toEqual([]);
      // TIERLM_GEMM_WIDEN decides instead of the profile
      gemmWidenPanels(startWiden);
      process.env.TIERLM_GEMM_WIDEN = '0';
      expect(applySavedGemmBlocking(file).widenPanels).toBeNull();
      expect(gemmWidenPanels()).toEqual(startWiden);
      delete process.env.TIERLM_GEMM_WIDEN;
      saveProfile({ ...profile, machine: { ...profile.machine, cpuModel: 'another CPU' }, kernels: { bf16: 'fma', widenPanels: [] } }, file);
      expect(applySavedGemmBlocking(file).widenPanels).toBeNull();
      expect(gemmWidenPanels()).toEqual(startWiden);
      const copy = JSON.parse(profileJson(profile));
      copy.kernels = { bf16: 'fma', widen_panels: ['bf16', 'f32'] };
      fs.writeFileSync(file, JSON.stringify(copy));
      expect(() => loadProfile(file)).toThrow(/kernels\.widen_panels\[1\]/);
      copy.kernels = { bf16: 'fma', widen_panels: 'bf16' };
      fs.writeFileSync(file, JSON.stringify(copy));
      expect(() => loadProfile(file)).toThrow(/kernels\.widen_panels/);
    } finally {
      delete process.env.TIERLM_GEMM_WIDEN;
      gemmWidenPanels(startWiden);
      gemmOnePassRows(startOnePass);
    }
  });

  it('a saved row blocking is applied for this CPU only; a bad one is named', () => {
    const start = gemmOnePassRows();
    const file = path.join(dir, 'one-pass.json');
    try {
      saveProfile({ ...profile, kernels: { bf16: 'fma', onePassRows: ['f16', 'bf16'] } }, file);
      expect(applySavedOnePassRows(file)).toEqual(['f16', 'bf16']);
      expect(gemmOnePassRows()).toEqual(['f16', 'bf16']);
      saveProfile({ ...profile, kernels: { bf16: 'fma', onePassRows: [] } }, file);
      expect(applySavedOnePassRows(file)).toEqual([]);
      expect(gemmOnePassRows()).toEqual([]);
      // TIERLM_GEMM_ONE_PASS decides instead of the profile
      process.env.TIERLM_GEMM_ONE_PASS = '15';
      expect(applySavedOnePassRows(file)).toBeNull();
      expect(gemmOnePassRows()).toEqual([]);
      // ...but empty is unset, as native reads it (the profile's choice was skipped)
      process.env.TIERLM_GEMM_ONE_PASS = '';
      saveProfile({ ...profile, kernels: { bf16: 'fma', onePassRows: ['f16'] } }, file);
      expect(applySavedOnePassRows(file)).toEqual(['f16']);
      saveProfile({ ...profile, kernels: { bf16: 'fma', onePassRows: [] } }, file);
      delete process.env.TIERLM_GEMM_ONE_PASS;
      gemmOnePassRows(start);
      for (const p of [{ ...profile, kernels: { bf16: 'fma' as const } }, { ...profile, machine: { ...profile.machine, cpuModel: 'another CPU' }, kernels: { bf16: 'fma' as const, onePassRows: [] } }]) {
        saveProfile(p, file);
        expect(applySavedOnePassRows(file)).toBeNull();
        expect(gemmOnePassRows()).toEqual(start);
      }
      const copy = JSON.parse(profileJson(profile));
      copy.kernels = { bf16: 'fma', one_pass_rows: ['f32', 'q4'] };
      fs.writeFileSync(file, JSON.stringify(copy));
      expect(() => loadProfile(file)).toThrow(/kernels\.one_pass_rows\[1\]/);
      copy.kernels = { bf16: 'fma', one_pass_rows: 'f32' };
      fs.writeFileSync(file, JSON.stringify(copy));
      expect(() => loadProfile(file)).toThrow(/kernels\.one_pass_rows/);
      expect(applySavedOnePassRows(file)).toBeNull();
    } finally {
      delete process.env.TIERLM_GEMM_ONE_PASS;
      gemmOnePassRows(start);
    }
  });

  it('loading a model applies the saved row blocking (TIERLM_PROFILE)', async () => {
    const start = gemmOnePassRows(), startWiden = gemmWidenPanels(), env = process.env.TIERLM_PROFILE;
    const file = path.join(dir, 'model-one-pass.json'), model = path.join(dir, 'model');
    initModel({ config: 'llama-test', out: model, seed: 3 });
    try {
      saveProfile({ ...profile, kernels: { bf16: 'fma', onePassRows: ['f16'], widenPanels: ['f16'] } }, file);
      process.env.TIERLM_PROFILE = file;
      gemmOnePassRows(['f32']);
      const m = await loadModel(model);
      m.close();
      expect(gemmOnePassRows()).toEqual(['f16']);
      expect(gemmWidenPanels()).toEqual(['f16']);
    } finally {
      if (env === undefined) delete process.env.TIERLM_PROFILE;
      else process.env.TIERLM_PROFILE = env;
      gemmOnePassRows(start);
      gemmWidenPanels(startWiden);
    }
  });

  it('measures with the threads asked for and restores the engine setting', async () => {
    const before = getThreads();
    const p = await measureProfile({ quick: true, diskDir: dir, sizes: 'tiny', threads: 1 });
    expect(p.machine.threads).toBe(1);
    expect(getThreads()).toBe(before);
  });

  it('refuses a disk directory that does not exist', async () => {
    await expect(measureProfile({ quick: true, diskDir: path.join(dir, 'missing'), sizes: 'tiny' })).rejects.toThrow(/missing/);
  });
});

describe('saving and loading', () => {
  it('round-trips through a file', () => {
    const file = path.join(dir, 'nested', 'hw.json');
    saveProfile(profile, file);
    expect(loadProfile(file)).toEqual(profile);
  });

  it('returns null for a missing file', () => {
    expect(loadProfile(path.join(dir, 'nope.json'))).toBeNull();
  });

  it('reports a malformed file by name and field', () => {
    const notJson = path.join(dir, 'broken.json');
    fs.writeFileSync(notJson, '{"version": 1, ');
    expect(() => loadProfile(notJson)).toThrow(ProfileFileError);
    expect(() => loadProfile(notJson)).toThrow(notJson);

    const bad = path.join(dir, 'bad-field.json');
    // The file is snake_case, and so are the fields its messages name.
    const copy = JSON.parse(profileJson(profile));
    copy.gemm.rows[1].flops_per_second[0] = -3;
    fs.writeFileSync(bad, JSON.stringify(copy));
    expect(() => loadProfile(bad)).toThrow(new RegExp(`${bad}.*gemm\\.rows\\[1\\]\\.flops_per_second\\[0\\]`));

    const missing = path.join(dir, 'missing-field.json');
    const copy2 = JSON.parse(profileJson(profile));
    delete copy2.disk.read_bytes_per_second;
    fs.writeFileSync(missing, JSON.stringify(copy2));
    expect(() => loadProfile(missing)).toThrow(/disk\.read_bytes_per_second/);

    const old = path.join(dir, 'old.json');
    fs.writeFileSync(old, JSON.stringify({ ...profile, version: 0 }));
    expect(() => loadProfile(old)).toThrow(/version/);
  });

  it('reports a profile missing a GEMM row or a decode cache dtype by name and field', () => {
    // gemmRate and attentionDecodeRate read any of them: a missing one failed a plan later, naming no file.
    const noRow = path.join(dir, 'no-row.json');
    const copy = JSON.parse(profileJson(profile));
    copy.gemm.rows = copy.gemm.rows.filter((r: { format: string; mode: string }) => !(r.format === 'f16' && r.mode === 'fp32'));
    fs.writeFileSync(noRow, JSON.stringify(copy));
    expect(() => loadProfile(noRow)).toThrow(ProfileFileError);
    expect(() => loadProfile(noRow)).toThrow(new RegExp(`${noRow}: field gemm\\.rows must be a list with a row for f16/fp32`));

    const noF16 = path.join(dir, 'no-f16-decode.json');
    const copy2 = JSON.parse(profileJson(profile));
    copy2.attention.decode = copy2.attention.decode.filter((e: { cache_dtype: string }) => e.cache_dtype !== 'f16');
    fs.writeFileSync(noF16, JSON.stringify(copy2));
    expect(() => loadProfile(noF16)).toThrow(ProfileFileError);
    expect(() => loadProfile(noF16)).toThrow(new RegExp(`${noF16}: field attention\\.decode must be a list with an entry for a f16 cache`));
    // saveProfile checks the same
    const { rows } = profile.gemm;
    expect(() => saveProfile({ ...profile, gemm: { ...profile.gemm, rows: rows.filter((r) => r.format !== 'q8') } }, noRow)).toThrow(/gemm\.rows must be a list with a row for q8\/fp32/);
  });

  it('names the file it cannot save to, not a raw Node.js error', () => {
    const file = path.join(dir, 'a-file');
    fs.writeFileSync(file, '');
    const inside = path.join(file, 'hw.json');
    expect(() => saveProfile(profile, inside)).toThrow(UserError);
    expect(() => saveProfile(profile, inside)).toThrow(`cannot save the hardware profile to ${inside}: `);
  });

  it('measures again over a default profile that another version wrote, but refuses a named one', async () => {
    const saved = process.env.TIERLM_PROFILE;
    const stale = path.join(dir, 'stale.json');
    fs.writeFileSync(stale, JSON.stringify({ version: 1, machine: {} }));
    const logs: string[] = [];
    try {
      process.env.TIERLM_PROFILE = stale;
      const p = await ensureProfile({ diskDir: dir, sizes: 'tiny', log: (m) => logs.push(m) });
      expect(logs[0]).toMatch(/from another version of tierlm \(version 1\); measuring again/);
      expect(loadProfile(stale)).toEqual(p);
      fs.writeFileSync(stale, JSON.stringify({ version: 1, machine: {} }));
      await expect(ensureProfile({ file: stale, diskDir: dir, sizes: 'tiny' })).rejects.toThrow(/version/);
    } finally {
      if (saved === undefined) delete process.env.TIERLM_PROFILE;
      else process.env.TIERLM_PROFILE = saved;
    }
  });

  it('defaults to $TIERLM_PROFILE, else ~/.cache/tierlm/hardware.json', () => {
    const saved = process.env.TIERLM_PROFILE;
    try {
      process.env.TIERLM_PROFILE = path.join(dir, 'env.json');
      expect(defaultProfilePath()).toBe(path.join(dir, 'env.json'));
      delete process.env.TIERLM_PROFILE;
      expect(defaultProfilePath()).toMatch(/\.cache[/\\]tierlm[/\\]hardware\.json$/);
    } finally {
      if (saved === undefined) delete process.env.TIERLM_PROFILE;
      else process.env.TIERLM_PROFILE = saved;
    }
  });
});

describe('rates for a cost model', () => {
  // A made-up table: rate ∝ m up to 64, then flat.
  const synthetic: HardwareProfile = {
    ...({} as HardwareProfile),
    gemm: {
      k: 4096, n: 4096, ms: [1, 16, 64, 256],
      rows: [
        { format: 'f32', mode: 'fp32', flopsPerSecond: [1e9, 16e9, 64e9, 64e9] },
        { format: 'bf16', mode: 'bf16', flopsPerSecond: [2e9, 20e9, 80e9, 100e9] },
      ],
    },
  };

  it('interpolates between table points, monotone, exact at them, clamped outside', () => {
    expect(gemmRate(synthetic, 'f32', 'fp32', 1)).toBeCloseTo(1e9, -3);
    expect(gemmRate(synthetic, 'f32', 'fp32', 16)).toBeCloseTo(16e9, -3);
    // Log-log: a power law between points is reproduced.
    expect(gemmRate(synthetic, 'f32', 'fp32', 4) / 4e9).toBeCloseTo(1, 6);
    expect(gemmRate(synthetic, 'f32', 'fp32', 128)).toBeCloseTo(64e9, -3);
    let prev = 0;
    for (let m = 1; m <= 300; m++) {
      const r = gemmRate(synthetic, 'bf16', 'bf16', m);
      expect(r).toBeGreaterThanOrEqual(prev);
      expect(r).toBeGreaterThanOrEqual(2e9);
      expect(r).toBeLessThanOrEqual(100e9);
      prev = r;
    }
    expect(gemmRate(synthetic, 'bf16', 'bf16', 0.5)).toBe(2e9);
    expect(gemmRate(synthetic, 'bf16', 'bf16', 100000)).toBe(100e9);
    // In bf16 mode f32 and f16 weights are packed as bf16.
    expect(gemmRate(synthetic, 'f16', 'bf16', 64)).toBe(80e9);
    expect(() => gemmRate(synthetic, 'q4', 'fp32', 1)).toThrow(/q4/);
    expect(() => gemmRate(synthetic, 'f32', 'fp32', 0)).toThrow(RangeError);
  });

  it('answers every rate from a measured profile', () => {
    for (const r of profile.gemm.rows) {
      for (const m of [1, 3, 16, 40, 64, 1000]) expect(gemmRate(profile, r.format, r.mode, m)).toBeGreaterThan(0);
    }
    for (const v of [attentionDecodeRate(profile, 'f32'), attentionDecodeRate(profile, 'f16'), attentionPrefillRate(profile),
      diskReadRate(profile), diskWriteRate(profile), memcpyRate(profile)]) {
      expect(Number.isFinite(v) && v > 0).toBe(true);
    }
  });
});

describe('ensureProfile', () => {
  it('reuses a saved profile without measuring', async () => {
    const file = path.join(dir, 'saved.json');
    const marked = { ...profile, createdAt: '2001-02-03T04:05:06.000Z' };
    saveProfile(marked, file);
    const mtime = fs.statSync(file).mtimeMs;
    const logs: string[] = [];
    // A disk directory that does not exist: measuring would fail.
    const p = await ensureProfile({ file, diskDir: path.join(dir, 'missing'), log: (m) => logs.push(m) });
    expect(p.createdAt).toBe('2001-02-03T04:05:06.000Z');
    expect(fs.statSync(file).mtimeMs).toBe(mtime);
    expect(logs).toEqual([]);
  });

  it('measures a quick profile once when none is saved, then reuses it', async () => {
    const file = path.join(dir, 'fresh', 'hw.json');
    const logs: string[] = [];
    const p = await ensureProfile({ file, diskDir: dir, sizes: 'tiny', log: (m) => logs.push(m) });
    expect(p.quick).toBe(true);
    expect(logs.some((l) => l.includes('measuring'))).toBe(true);
    expect(loadProfile(file)).toEqual(p);
    const again = await ensureProfile({ file, diskDir: path.join(dir, 'missing'), sizes: 'tiny' });
    expect(again.createdAt).toBe(p.createdAt);
  });

  it('measures in a separate process, says so, and passes its errors on', async () => {
    const logs: string[] = [];
    await ensureProfile({ file: path.join(dir, 'child', 'hw.json'), diskDir: dir, sizes: 'tiny', log: (m) => logs.push(m) });
    expect(logs[0]).toMatch(/in a separate process \(its memory is not part of this run, nor of its --ram limit\)/);
    // The child's own progress lines come through, then its peak RSS.
    expect(logs.some((l) => /^gemm f32\/fp32: /.test(l))).toBe(true);
    expect(logs.at(-1)).toMatch(/the measuring process peaked at [\d.]+ MiB RSS/);
    const missing = path.join(dir, 'no-such-dir');
    await expect(ensureProfile({ file: path.join(dir, 'child', 'never.json'), diskDir: missing, sizes: 'tiny' })).rejects.toThrow(UserError);
    await expect(ensureProfile({ file: path.join(dir, 'child', 'never.json'), diskDir: missing, sizes: 'tiny' })).rejects.toThrow(missing);
    expect(fs.existsSync(path.join(dir, 'child', 'never.json'))).toBe(false);
  });

  it('two first runs at once measure once: the second waits and reuses what the first saved', async () => {
    const file = path.join(dir, 'race', 'hw.json');
    const logs: string[][] = [[], []];
    const [a, b] = await Promise.all(logs.map((l) => ensureProfile({ file, diskDir: dir, sizes: 'tiny', log: (m) => l.push(m) })));
    expect(b.createdAt).toBe(a.createdAt);
    expect(loadProfile(file)!.createdAt).toBe(a.createdAt);
    const measured = logs.map((l) => l.filter((m) => m.includes('measuring this machine (quick), once')).length);
    expect([...measured].sort()).toEqual([0, 1]);
    const waited = logs[measured.indexOf(0)]!;
    expect(waited).toEqual([`waiting for another run measuring this machine (it holds ${file}.lock); its profile is used once it is saved`]);
  });

  /** Runs fn with HOME set to `home` and no TIERLM_PROFILE: the default profile path is under `home`. */
  async function withHome<T>(home: string, fn: () => Promise<T>): Promise<T> {
    const saved = { HOME: process.env.HOME, TIERLM_PROFILE: process.env.TIERLM_PROFILE };
    process.env.HOME = home;
    delete process.env.TIERLM_PROFILE;
    try {
      return await fn();
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  }

  it('goes on with the measured profile when the default file cannot be saved, warning once', async () => {
    // ~/.cache is a file: its folder cannot be created, even by root.
    const home = path.join(dir, 'home-cache-file');
    fs.mkdirSync(home);
    fs.writeFileSync(path.join(home, '.cache'), '');
    const file = path.join(home, '.cache', 'tierlm', 'hardware.json');
    const logs: string[] = [];
    const p = await withHome(home, () => ensureProfile({ diskDir: dir, sizes: 'tiny', log: (m) => logs.push(m) }));
    expect(p.sizes).toBe('tiny');
    const warnings = logs.filter((l) => l.includes('could not save'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(new RegExp(`^warning: could not save the hardware profile to ${file}: .+; measured again next run$`));
    // Later calls in this process reuse it instead of measuring again.
    const again: string[] = [];
    const q = await withHome(home, () => ensureProfile({ diskDir: path.join(dir, 'missing'), log: (m) => again.push(m) }));
    expect(q.createdAt).toBe(p.createdAt);
    expect(again).toEqual([]);
  });

  it('goes on when the default folder is read-only (not as root)', async (t) => {
    const home = path.join(dir, 'home-read-only');
    fs.mkdirSync(path.join(home, '.cache', 'tierlm'), { recursive: true });
    fs.chmodSync(path.join(home, '.cache', 'tierlm'), 0o500);
    try {
      let writable = true;
      try {
        fs.accessSync(path.join(home, '.cache', 'tierlm'), fs.constants.W_OK);
      } catch {
        writable = false;
      }
      if (writable) t.skip(); // root writes anyway
      const logs: string[] = [];
      const p = await withHome(home, () => ensureProfile({ diskDir: dir, sizes: 'tiny', log: (m) => logs.push(m) }));
      expect(p.sizes).toBe('tiny');
      expect(logs.filter((l) => /^warning: could not save the hardware profile to .*; measured again next run$/.test(l))).toHaveLength(1);
    } finally {
      fs.chmodSync(path.join(home, '.cache', 'tierlm'), 0o700);
    }
  });

  it('refuses a named file it could not save before measuring', async () => {
    const notDir = path.join(dir, 'plain-file');
    fs.writeFileSync(notDir, '');
    const file = path.join(notDir, 'sub', 'hw.json');
    const logs: string[] = [];
    await expect(ensureProfile({ file, diskDir: dir, sizes: 'tiny', log: (m) => logs.push(m) })).rejects.toThrow(UserError);
    await expect(ensureProfile({ file, diskDir: dir, sizes: 'tiny', log: (m) => logs.push(m) }))
      .rejects.toThrow(`hardware profile ${file}: ${notDir} is not a directory, so the profile cannot be saved there; nothing was measured`);
    await expect(ensureProfile({ file: dir, diskDir: dir, sizes: 'tiny' })).rejects.toThrow(`hardware profile ${dir}: `);
    // and so does TIERLM_PROFILE
    const saved = process.env.TIERLM_PROFILE;
    try {
      process.env.TIERLM_PROFILE = file;
      await expect(ensureProfile({ diskDir: dir, sizes: 'tiny', log: (m) => logs.push(m) })).rejects.toThrow(`TIERLM_PROFILE ${file}: `);
    } finally {
      if (saved === undefined) delete process.env.TIERLM_PROFILE;
      else process.env.TIERLM_PROFILE = saved;
    }
    expect(logs).toEqual([]);
  });

  it('does not replace a malformed profile silently', async () => {
    const file = path.join(dir, 'garbage.json');
    fs.writeFileSync(file, 'not json');
    await expect(ensureProfile({ file, diskDir: dir, sizes: 'tiny' })).rejects.toThrow(file);
  });
});

describe('tierlm profile', () => {
  it('measures, saves and prints JSON', () => {
    fs.mkdirSync(path.join(dir, 'cli'), { recursive: true });
    const out = path.join(dir, 'cli', 'hw.json');
    const r = cli(['profile', '--quick', '--out', out, '--disk-dir', dir, '--json', '--threads', '1'], { TIERLM_PROFILE_SIZES: 'tiny' });
    expect(r.code, r.stderr).toBe(0);
    // Printed as the file holds it: snake_case.
    const printed = JSON.parse(r.stdout);
    expect(printed.quick).toBe(true);
    expect(printed.machine.threads).toBe(1);
    expect(printed.disk.read_bytes_per_second).toBeGreaterThan(0);
    expect(JSON.parse(fs.readFileSync(out, 'utf8'))).toEqual(printed);
    expect(loadProfile(out)!.disk.readBytesPerSecond).toBe(printed.disk.read_bytes_per_second);
  });

  it('prints a table and the path it saved to', () => {
    const out = path.join(dir, 'cli', 'table.json');
    const r = cli(['profile', '--quick', '--out', out, '--disk-dir', dir], { TIERLM_PROFILE_SIZES: 'tiny' });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/GEMM GFLOP\/s/);
    expect(r.stdout).toMatch(/q4 +bf16/);
    // the kernels chosen by timing them
    expect(r.stdout).toMatch(/kernels +bf16 mode: (vdpbf16ps|widening \+ FMA)/);
    if (isaInfo().active.startsWith('avx512')) expect(r.stdout).toMatch(/15-16-row products in one row block: (none|[a-z0-9-, ]+)[;\n]/);
    if (isaInfo().active !== 'scalar') expect(r.stdout).toMatch(/weight panels widened once for many rows: (none|[a-z0-9-, ]+)\n/);
    expect(r.stdout).toMatch(/attention decode/);
    expect(r.stdout).toMatch(/disk .*read .*GB\/s/s);
    expect(r.stdout).toContain(`saved to ${out}`);
    expect(loadProfile(out)).not.toBeNull();
  });

  it('refuses a file it could not save before measuring', () => {
    const notDir = path.join(dir, 'cli-plain-file');
    fs.writeFileSync(notDir, '');
    const out = path.join(notDir, 'hw.json');
    let r = cli(['profile', '--quick', '--out', out, '--disk-dir', dir], { TIERLM_PROFILE_SIZES: 'tiny' });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`--out ${out}: `);
    expect(r.stdout).toBe('');
    // The default file: ~/.cache is a file, so ~/.cache/tierlm cannot be made.
    const home = path.join(dir, 'cli-home');
    fs.mkdirSync(home);
    fs.writeFileSync(path.join(home, '.cache'), '');
    const file = path.join(home, '.cache', 'tierlm', 'hardware.json');
    r = cli(['profile', '--quick', '--disk-dir', dir], { HOME: home, TIERLM_PROFILE: '', TIERLM_PROFILE_SIZES: 'tiny' });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`hardware profile ${file}: ${path.join(home, '.cache')} is not a directory, so the profile cannot be saved there; nothing was measured`);
    r = cli(['profile', '--quick', '--disk-dir', dir], { TIERLM_PROFILE: out, TIERLM_PROFILE_SIZES: 'tiny' });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`TIERLM_PROFILE ${out}: `);
  });

  it('refuses a missing disk directory with a clear message', () => {
    const r = cli(['profile', '--quick', '--out', path.join(dir, 'cli', 'x.json'), '--disk-dir', path.join(dir, 'nowhere')], { TIERLM_PROFILE_SIZES: 'tiny' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/nowhere/);
  });
});
