// Shared by the property tests over the policy space (schedule-properties, continuous-properties):
// the seeded choices, random placements, the models they run (opt-tiny, and llama-tiny cut to 40
// positions so generation often reaches the position limit), and those models loaded in RAM for
// the reference runs.
import fs from 'node:fs';
import path from 'node:path';
import { type LanguageModel, loadModel } from '../../src/index.js';
import type { Policy } from '../../src/policy/policy.js';
import { fixturesDir } from './fixtures.js';

export type Rand = () => number;
export const int = (r: Rand, lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
export const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;

/** Device, RAM shares of one kind of data: all in RAM, all on disk, or cut at random. */
function shares(r: Rand): [number, number] {
  const kind = r();
  if (kind < 0.3) return [0, 100];
  if (kind < 0.55) return [0, 0];
  const g = int(r, 0, 60);
  return [g, int(r, 0, 100 - g)];
}

/** Random shares of weights, cache and activations (drawn in that order). */
export function randomPlacement(r: Rand): Partial<Policy> {
  const [wg, wc] = shares(r);
  const [cg, cc] = shares(r);
  const [hg, hc] = shares(r);
  return { wGpuPercent: wg, wCpuPercent: wc, cacheGpuPercent: cg, cacheCpuPercent: cc, actGpuPercent: hg, actCpuPercent: hc };
}

export interface PropertyModel {
  dir: string;
  vocab: number;
  maxPositions: number;
}

/** The test models under `work`, and one in-RAM copy per (model, compression) for references. */
export class PropertyModels {
  readonly models: Record<string, PropertyModel>;
  private readonly inRam = new Map<string, LanguageModel>();

  constructor(private readonly work: string) {
    this.models = {
      'opt-tiny': { dir: path.join(fixturesDir, 'opt-tiny'), vocab: 512, maxPositions: 128 },
      'llama-short': { dir: path.join(work, 'llama-short'), vocab: 384, maxPositions: 40 },
    };
  }

  /** Writes llama-short (llama-tiny with 40 positions). */
  prepare(): void {
    const src = path.join(fixturesDir, 'llama-tiny');
    const dst = this.models['llama-short']!.dir;
    fs.mkdirSync(dst, { recursive: true });
    for (const f of fs.readdirSync(src)) fs.copyFileSync(path.join(src, f), path.join(dst, f));
    const config = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dst, 'config.json'), JSON.stringify({ ...config, max_position_embeddings: 40 }));
  }

  /** The model in RAM with the policy's compression (loaded once). */
  async ram(name: string, policy: Partial<Policy>): Promise<LanguageModel> {
    const key = `${name} ${policy.compressWeight} ${policy.compressCache}`;
    let m = this.inRam.get(key);
    if (!m) {
      m = await loadModel(this.models[name]!.dir, { policy: { compressWeight: policy.compressWeight === true, compressCache: policy.compressCache === true } });
      this.inRam.set(key, m);
    }
    return m;
  }

  async close(): Promise<void> {
    for (const m of this.inRam.values()) await m.close();
    fs.rmSync(this.work, { recursive: true, force: true });
  }
}
