// runInChild's child lives no longer than its parent: a parent killed outright (SIGKILL), or one
// that exits while the child works, leaves no child running (an orphaned profile measurement ran
// on for its whole length at ~460 MiB). The child blocks its main thread meanwhile, as the
// profile's GEMM timing does, so only a watch off that thread can see the parent go.
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';

const parentScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'helpers', 'orphan-parent.ts');
const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;

function startParent(sleepMs: number, how = ''): ChildProcessWithoutNullStreams {
  return spawn(process.execPath, ['--import', tsx, parentScript, String(sleepMs), how], { stdio: ['pipe', 'pipe', 'pipe'] });
}

/** The child's pid, once the parent has passed on its first line. */
function childPid(parent: ChildProcessWithoutNullStreams): Promise<number> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    parent.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    parent.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = /^pid (\d+)$/m.exec(out);
      if (m) resolve(Number(m[1]));
    });
    parent.on('close', () => reject(new Error(`the parent ended before its child said its pid: ${out}${err}`)));
  });
}

/** Whether `pid` runs (a zombie, waiting for init to reap it, has ended). */
function running(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

async function waitGone(pid: number, ms: number): Promise<number> {
  const t0 = Date.now();
  while (running(pid) && Date.now() - t0 < ms) await new Promise((r) => setTimeout(r, 50));
  return Date.now() - t0;
}

describe.runIf(process.platform === 'linux')('runInChild ties the child to its parent', () => {
  it('a parent killed with SIGKILL leaves no child running (within a few seconds)', async () => {
    const parent = startParent(60_000);
    const pid = await childPid(parent);
    expect(running(pid)).toBe(true);
    parent.kill('SIGKILL');
    const waited = await waitGone(pid, 5000);
    try {
      expect(running(pid), `child ${pid} still running ${waited} ms after its parent was killed`).toBe(false);
    } finally {
      if (running(pid)) process.kill(pid, 'SIGKILL');
    }
  });

  it('a parent that exits while the child works takes the child along', async () => {
    const parent = startParent(60_000, 'exit');
    const pid = await childPid(parent);
    const code = await new Promise((r) => parent.on('close', r));
    expect(code).toBe(3);
    const waited = await waitGone(pid, 5000);
    try {
      expect(running(pid), `child ${pid} still running ${waited} ms after its parent exited`).toBe(false);
    } finally {
      if (running(pid)) process.kill(pid, 'SIGKILL');
    }
  });

  it('a child that finishes still reports to its parent and exits', async () => {
    const parent = startParent(10);
    let out = '';
    parent.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    const code = await new Promise((r) => parent.on('close', r));
    expect(code).toBe(0);
    expect(out).toMatch(/^pid (\d+)\nresult done\n$/);
    expect(running(Number(/^pid (\d+)/.exec(out)![1]))).toBe(false);
  });
});
