// A run killed outright leaves its spill files, which since they reserve their block's space hold
// all of it. Planning measures the free space in --disk-dir after clearing what dead runs left:
// measured beside them, every rerun without --disk was refused for the space they held, and the
// files were never removed (only a run that got as far as opening its disk tier cleared them).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkPlanningPaths } from '../src/cli/policy-options.js';
import { repoRoot, tmpDir } from './helpers/fixtures.js';

describe('a killed run\'s spill files', () => {
  it('are removed before the free space in --disk-dir is measured', async () => {
    const dir = tmpDir('stale-spill');
    // A run that claims its spill files, fills one with 8 MiB and is killed.
    const script = `import { SpillFiles } from ${JSON.stringify(path.join(repoRoot, 'src/schedule/spill-files.ts'))};
      import fs from 'node:fs';
      const s = SpillFiles.claim(${JSON.stringify(dir)});
      fs.writeFileSync(s.path('cache'), Buffer.alloc(8 << 20, 1));
      console.log('ready');
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => child.stdout!.on('data', (d: Buffer) => String(d).includes('ready') && resolve()));
    const ended = new Promise((resolve) => child.on('exit', resolve));
    child.kill('SIGKILL');
    await ended;
    expect(fs.readdirSync(dir).some((f) => f.startsWith('cache-'))).toBe(true);
    const o: { diskDir: string; disk?: number } = { diskDir: dir };
    checkPlanningPaths(o);
    expect(fs.readdirSync(dir)).toEqual([]);
    expect(o.disk).toBeGreaterThan(0);
  });
});
