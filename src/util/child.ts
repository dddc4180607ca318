// Work that needs far more memory than a run's --ram allows, or leaves memory behind, done in a
// child Node.js process: its pages are never part of the run's RSS and all of them go back to the
// OS when it exits. The parent passes JSON in and gets JSON back; the child's stderr lines are
// its progress, passed to the parent's log. The child lives no longer than the parent: an orphaned
// profile measurement ran on for its whole length at ~460 MiB (a parent ended by EPIPE on `| head`).
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { UserError } from './errors.js';
import { peakRssBytes } from './peak-rss.js';

/** The last line a child prints on stdout. */
type ChildReport<T> = { ok: T; peakRssBytes: number } | { error: string; userError: boolean };

/**
 * Runs the module `entry` (a name beside `fromUrl`'s file, without extension) in a new Node.js
 * process with `input` (JSON on its stdin), and returns what its main returned and the child's own peak RSS. A
 * UserError in the child is rethrown as a UserError with its message.
 */
export async function runInChild<T>(fromUrl: string, entry: string, input: unknown, log: (line: string) => void,
  nodeFlags: string[] = []): Promise<{ value: T; peakRssBytes: number }> {
  const here = fileURLToPath(fromUrl);
  const ext = path.extname(here);
  const file = path.join(path.dirname(here), `${entry}${ext}`);
  // From the TypeScript sources (tests, tsx) the child needs the same loader; from dist/ it does not.
  const loader = ext === '.ts' ? ['--import', pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href] : [];
  // (this process's pid: the child ends itself once its parent is another, childMain)
  const child = spawn(process.execPath, [...loader, ...nodeFlags, file, String(process.pid)], { stdio: ['pipe', 'pipe', 'pipe'] });
  // A parent that exits (process.exit, an uncaught EPIPE on a closed stderr) takes the child along
  // at once; one killed outright runs no handler, and the child notices by itself.
  const killChild = () => void child.kill();
  process.on('exit', killChild);
  try {
    return await childResult<T>(child, entry, input, log);
  } finally {
    process.off('exit', killChild);
  }
}

/** Sends the input to a spawned child and reads its report (runInChild). */
async function childResult<T>(child: ChildProcessWithoutNullStreams, entry: string, input: unknown, log: (line: string) => void):
  Promise<{ value: T; peakRssBytes: number }> {
  // Through stdin, not argv: one argument is limited to 128 KiB.
  child.stdin.end(JSON.stringify(input));
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    const lines = (err + d).split('\n');
    err = lines.pop()!;
    for (const l of lines) log(l);
  });
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', resolve);
  });
  if (err) log(err);
  let report: ChildReport<T> | undefined;
  try {
    report = JSON.parse(out.trim().split('\n').pop() ?? '') as ChildReport<T>;
  } catch {
    report = undefined;
  }
  if (report && 'error' in report) throw report.userError ? new UserError(report.error) : new Error(`${entry} (child process): ${report.error}`);
  if (code !== 0 || !report) throw new Error(`${entry} (child process) exited with ${code}${out ? `: ${out.trim()}` : ''}`);
  return { value: report.ok, peakRssBytes: report.peakRssBytes };
}

/** The body of a child's entry module: reads the input, runs `main`, prints the report; ends the
 *  process once its parent (the pid runInChild passes as the first argument) is gone. */
export async function childMain<I, T>(main: (input: I) => Promise<T>): Promise<void> {
  const parent = Number(process.argv[2]);
  if (Number.isSafeInteger(parent) && parent > 0) exitWithParent(parent);
  let report: ChildReport<T>;
  try {
    let text = '';
    for await (const chunk of process.stdin.setEncoding('utf8')) text += chunk as string;
    const value = await main(JSON.parse(text) as I);
    report = { ok: value, peakRssBytes: peakRssBytes() };
  } catch (e) {
    report = { error: (e as Error).message, userError: e instanceof UserError };
    process.exitCode = 1;
  }
  process.stdout.write(JSON.stringify(report) + '\n');
}

/** Kills this process once its parent pid is no longer `parent` (the parent died and it was
 *  reparented), checked every 250 ms on a thread of its own: the main thread may compute for
 *  seconds without returning to its event loop (the profile's GEMM timing ran 13 s so), where
 *  neither a 'disconnect' nor a closed pipe would be seen. The thread holds no reference that keeps
 *  the process alive, and costs ~10 MiB. */
function exitWithParent(parent: number): void {
  // (a parent already gone before this ran: ppid differs at the first check)
  new Worker(`
    const { workerData: parent } = require('node:worker_threads');
    setInterval(() => { if (process.ppid !== parent) process.kill(process.pid, 'SIGKILL'); }, 250);
  `, { eval: true, workerData: parent, execArgv: [] }).unref();
}
