// Vitest global setup: compiles src/ to dist/ once per run (tsc, a few seconds), so the tests that
// measure peak memory run the CLI as users do (bin/tierlm.js on the compiled code). Through tsx
// the same run carries the loader's own ~50 MiB of RSS, which is not the engine's.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { TestProject } from 'vitest/node';

/** Returns the teardown, which removes the run's kept kernel choices (TIERLM_KERNEL_CACHE in
 *  vitest.config.ts). */
export default function setup(project: TestProject): () => void {
  const root = path.resolve(import.meta.dirname, '../..');
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  execFileSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.json')], { cwd: root, stdio: 'inherit' });
  const kept = project.config.env?.TIERLM_KERNEL_CACHE;
  return () => {
    if (kept) fs.rmSync(kept, { force: true });
  };
}
