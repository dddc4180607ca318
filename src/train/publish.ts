// The model at the top of a run's output directory: after each save, OUT/config.json,
// OUT/model.safetensors and the tokenizer files become those of the new checkpoint, so that
// `tierlm generate --model OUT` (and any Hugging Face tool) loads the latest trained weights.
// Each file is hard-linked from the checkpoint (no second copy on disk; a checkpoint's files are
// never changed in place, and pruning it later leaves the link's data alone) and renamed over
// the old one, so a reader sees every file whole. Between two of the renames a crash may leave
// files of two checkpoints side by side; only model.safetensors differs between them, and a
// resumed run publishes again.

import fs from 'node:fs';
import path from 'node:path';
import { fsyncPath } from '../util/atomic.js';
import { MODEL_SIDE_FILES } from './model-writer.js';

export const MODEL_FILES = [...MODEL_SIDE_FILES, 'model.safetensors'];

export function publishModel(outDir: string, checkpointDir: string): void {
  // Leftovers of a publish that crashed before its rename.
  for (const f of fs.readdirSync(outDir)) {
    if (MODEL_FILES.some((name) => f.startsWith(`.${name}.tmp-`))) fs.rmSync(path.join(outDir, f), { force: true });
  }
  for (const name of MODEL_FILES) {
    const src = path.join(checkpointDir, name);
    if (!fs.existsSync(src)) continue;
    const tmp = path.join(outDir, `.${name}.tmp-${process.pid}`);
    fs.rmSync(tmp, { force: true });
    try {
      fs.linkSync(src, tmp);
    } catch {
      // A file system without hard links: a copy, made durable before it is renamed in.
      fs.copyFileSync(src, tmp);
      fsyncPath(tmp);
    }
    fs.renameSync(tmp, path.join(outDir, name));
    // Publishing a checkpoint again (a finished run resumed): the link was already that file, and
    // rename(2) between two links of one file does nothing, leaving the temporary name.
    fs.rmSync(tmp, { force: true });
  }
  fsyncPath(outDir);
}
