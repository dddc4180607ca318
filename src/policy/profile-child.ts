// Measuring the hardware profile in a child process. The measurement needs far more memory than a
// tight --ram allows (the quick profile streams GEMM weights through 384 MiB of copies to defeat
// the last-level cache); in a child process its pages are never part of the run's RSS, and all
// of them are returned to the OS when it exits, before the run loads anything.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { UserError } from '../util/errors.js';
import type { ProfileSizes } from './profile.js';

export interface ChildMeasureOptions {
  /** Where the child saves the profile. */
  file: string;
  quick: boolean;
  diskDir: string;
  threads?: number;
  sizes?: ProfileSizes;
}

/** What the child prints as its last stdout line. */
export type ChildReport = { peakRssBytes: number } | { error: string; userError: boolean };

/** Runs profile-main in a new Node.js process, passes its progress lines to `log`, and returns the
 *  child's own peak RSS. The child's failure is rethrown here with its message. */
export async function measureInChild(o: ChildMeasureOptions, log: (msg: string) => void): Promise<{ peakRssBytes: number }> {
  const here = fileURLToPath(import.meta.url);
  const ext = path.extname(here);
  const entry = path.join(path.dirname(here), `profile-main${ext}`);
  // From the TypeScript sources (tests, tsx) the child needs the same loader; from dist/ it does not.
  const loader = ext === '.ts' ? ['--import', pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href] : [];
  // --expose-gc: the child collects each phase's buffers before the next phase allocates its own.
  const child = spawn(process.execPath, [...loader, '--expose-gc', entry, JSON.stringify(o)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    err += d;
    const lines = err.split('\n');
    err = lines.pop()!;
    for (const l of lines) log(l);
  });
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', resolve);
  });
  if (err) log(err);
  let report: ChildReport | undefined;
  try {
    report = JSON.parse(out.trim().split('\n').pop() ?? '') as ChildReport;
  } catch {
    report = undefined;
  }
  if (report && 'error' in report) throw report.userError ? new UserError(report.error) : new Error(`measuring the hardware profile: ${report.error}`);
  if (code !== 0 || !report) throw new Error(`measuring the hardware profile: the child process exited with ${code}${out ? `: ${out.trim()}` : ''}`);
  return report;
}
