// The disk tier of one run: a directory the user names, checked up front, holding the packed
// weights (kept between runs) and this run's cache and activation spill files. Several runs may
// share the directory: spill files are named per run (src/schedule/spill-files.ts) and packed
// weights are converted under a lock (src/schedule/weights-dir.ts).

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { UserError } from '../util/errors.js';
import { optionName } from '../util/names.js';
import { type BlockFile, openBlockFile } from './block-file.js';
import { SpillFiles } from './spill-files.js';
import { removeDeadConversions } from './weights-dir.js';

export class DiskTier {
  private constructor(
    readonly dir: string,
    readonly capacity: number | null,
    readonly cacheFile: BlockFile,
    readonly actFile: BlockFile,
    private readonly spill: SpillFiles,
  ) {}

  static async open(dir: string | undefined, capacity?: number): Promise<DiskTier> {
    if (!dir) throw new UserError(`the policy puts data on disk, but no disk directory was given (${optionName('diskDir')})`);
    if (!fs.existsSync(dir)) throw new UserError(`disk directory ${dir} does not exist`);
    if (!fs.statSync(dir).isDirectory()) throw new UserError(`disk directory ${dir} is not a directory`);
    try {
      fs.accessSync(dir, fs.constants.W_OK);
    } catch {
      throw new UserError(`disk directory ${dir} is not writable`);
    }
    removeDeadConversions(dir);
    const spill = SpillFiles.claim(dir);
    const opened: BlockFile[] = [];
    try {
      for (const kind of ['cache', 'activations'] as const) opened.push(await openBlockFile(spill.path(kind), 'w'));
    } catch (e) {
      try {
        for (const f of opened) await f.close();
      } finally {
        spill.remove();
      }
      throw e;
    }
    return new DiskTier(dir, capacity ?? null, opened[0]!, opened[1]!, spill);
  }

  /** Where one model's packed weights live (one folder per model and compute mode). */
  weightsDir(modelDir: string, mode: string): string {
    const d = weightsFolder(this.dir, modelDir, mode);
    fs.mkdirSync(d, { recursive: true });
    return d;
  }

  /** Closes and deletes this run's spill files (deleted even when closing throws). */
  async close(): Promise<void> {
    try {
      await this.cacheFile.close();
    } finally {
      try {
        await this.actFile.close();
      } finally {
        this.spill.remove();
      }
    }
  }
}

/** The folder in disk directory `dir` that holds `modelDir`'s packed weights in `mode` (named by
 *  the model's real path, so two models of one name do not share it). */
export function weightsFolder(dir: string, modelDir: string, mode: string): string {
  const key = createHash('sha256').update(`${fs.realpathSync(modelDir)}\0${mode}`).digest('hex').slice(0, 16);
  return path.join(dir, `weights-${path.basename(modelDir)}-${mode}-${key}`);
}
