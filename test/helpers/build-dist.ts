// Vitest global setup: compiles src/ to dist/ once per run (tsc, a few seconds), so the tests that
// measure peak memory run the CLI as users do (bin/tierlm.js on the compiled code). Through tsx
// the same run carries the loader's own ~50 MiB of RSS, which is not the engine's.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

/** Returns the teardown, which removes the run's kept kernel choices (TIERLM_KERNEL_CACHE in
 *  vitest.config.ts, named after this process). */
export default function setup(): () => void {
  const root = path.resolve(import.meta.dirname, '../..');
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  execFileSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.json')], { cwd: root, stdio: 'inherit' });
  return () => fs.rmSync(path.join(os.tmpdir(), `tierlm-test-kernels-${process.pid}.json`), { force: true });
}
