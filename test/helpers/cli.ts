// Runs the CLI in a child process, as a user would.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { repoRoot } from './fixtures.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function cli(args: string[], env: Record<string, string> = {}): CliResult {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(repoRoot, 'src/cli/run.ts'), ...args], {
    cwd: repoRoot,
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 300_000,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** The CLI as a shell command line, for pipelines. */
export const tierlm = `'${process.execPath}' --import tsx '${path.join(repoRoot, 'src/cli/run.ts')}'`;

/** Runs a shell pipeline (bash, with pipefail off: a pipeline's status is its last command's).
 *  The timeout makes a pipeline that never ends fail the test instead of hanging it. */
export function shell(command: string, timeoutMs = 120_000): CliResult {
  const r = spawnSync('bash', ['-c', command], { cwd: repoRoot, encoding: 'utf8', env: process.env, timeout: timeoutMs });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}
