// Runs the CLI in a child process, as a user would.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { repoRoot } from './fixtures.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `built`: run the compiled CLI (bin/tierlm.js on dist/, rebuilt by the suite's global setup), as
 *  users run it — for measuring its memory, which tsx's loader would inflate by ~50 MiB. */
export function cli(args: string[], env: Record<string, string> = {}, nodeFlags: string[] = [], built = false, input?: Buffer): CliResult {
  const entry = built ? ['bin/tierlm.js'] : ['--import', 'tsx', 'src/cli/run.ts'];
  const script = entry.pop()!;
  const r = spawnSync(process.execPath, [...entry, ...nodeFlags, path.join(repoRoot, script), ...args], {
    cwd: repoRoot,
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 300_000,
    ...(input ? { input, maxBuffer: 256 << 20 } : {}),
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** cli() measuring the run's peak RSS from outside the engine: VmHWM of the CLI's process at exit
 *  (child processes it starts are not part of it). */
export function cliPeak(args: string[], env: Record<string, string> = {}, input?: Buffer): CliResult & { peakRssBytes: number } {
  const r = cli(args, env, ['--import', pathToFileURL(path.join(repoRoot, 'test/helpers/report-peak.mjs')).href], true, input);
  const m = /\ntest-peak-rss-bytes (\d+)\n$/.exec(r.stderr);
  if (!m) throw new Error(`no peak RSS reported: ${r.stderr}`);
  return { ...r, stderr: r.stderr.slice(0, m.index), peakRssBytes: Number(m[1]) };
}

/** The CLI as a shell command line, for pipelines. */
export const tierlm = `'${process.execPath}' --import tsx '${path.join(repoRoot, 'src/cli/run.ts')}'`;

/** Runs a shell pipeline (bash, with pipefail off: a pipeline's status is its last command's).
 *  The timeout makes a pipeline that never ends fail the test instead of hanging it. */
export function shell(command: string, timeoutMs = 120_000): CliResult {
  const r = spawnSync('bash', ['-c', command], { cwd: repoRoot, encoding: 'utf8', env: process.env, timeout: timeoutMs });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}
