// A `tierlm serve` process, as a user starts one: on a free port, its address read from stderr.
import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { initModel } from '../../src/models/init.js';
import { addTokenizer, repoRoot } from './fixtures.js';

/** A tiny Llama with the Llama 2 tokenizer and a chat template (text prompts and chat work). */
export function tinyChatModel(dir: string): string {
  const model = path.join(dir, 'tiny');
  initModel({ config: 'llama-test', out: model, seed: 3 });
  addTokenizer(model);
  return model;
}

export interface ServeProcess {
  child: ChildProcess;
  url: string;
  stderr: () => string;
  /** Resolves with the exit code (or the signal's name). */
  exited: Promise<number | string>;
}

export async function startServe(args: string[]): Promise<ServeProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(repoRoot, 'src/cli/run.ts'), 'serve', '--port', '0', ...args], {
    cwd: repoRoot, env: process.env, stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  const exited = new Promise<number | string>((resolve) => child.on('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /serving \S+ at (http:\/\/\S+)/.exec(err);
      if (m) resolve(m[1]!);
    });
    void exited.then((code) => reject(new Error(`tierlm serve exited (${code}): ${err}`)));
  });
  return { child, url, stderr: () => err, exited };
}
