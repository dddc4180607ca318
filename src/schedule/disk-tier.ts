// The disk tier of one run: a directory the user names, checked up front, holding the packed
// weights (kept between runs) and this run's cache and activation spill files.

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { UserError } from '../util/errors.js';
import { optionName } from '../util/names.js';
import { type BlockFile, openBlockFile } from './block-file.js';

export class DiskTier {
  private constructor(
    readonly dir: string,
    readonly capacity: number | null,
    readonly cacheFile: BlockFile,
    readonly actFile: BlockFile,
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
    const cacheFile = await openBlockFile(path.join(dir, 'cache.bin'), 'w');
    const actFile = await openBlockFile(path.join(dir, 'activations.bin'), 'w');
    return new DiskTier(dir, capacity ?? null, cacheFile, actFile);
  }

  /** Where one model's packed weights live (one folder per model and compute mode). */
  weightsDir(modelDir: string, mode: string): string {
    const key = createHash('sha256').update(`${fs.realpathSync(modelDir)}\0${mode}`).digest('hex').slice(0, 16);
    const d = path.join(this.dir, `weights-${path.basename(modelDir)}-${mode}-${key}`);
    fs.mkdirSync(d, { recursive: true });
    return d;
  }

  async close(): Promise<void> {
    await this.cacheFile.close();
    await this.actFile.close();
    for (const f of [this.cacheFile.path, this.actFile.path]) fs.rmSync(f, { force: true });
  }
}
