// Paths the user names, checked before any work: each refusal names the flag, the path and what
// is wrong with it. Nothing here creates a file or a directory.
import fs from 'node:fs';
import path from 'node:path';
import { UserError } from '../util/errors.js';
import { statOrNull } from '../util/stat.js';


const refuse = (flag: string, p: string, what: string): never => {
  throw new UserError(`${flag} ${p}: ${what}`);
};

/** A directory that exists. */
export function existingDir(flag: string, dir: string): void {
  const s = statOrNull(dir);
  if (!s) refuse(flag, dir, 'does not exist');
  if (!s!.isDirectory()) refuse(flag, dir, 'is a file, not a directory');
}

/** A Hugging Face model directory: a directory with a config.json. */
export function modelDir(flag: string, dir: string): void {
  existingDir(flag, dir);
  if (!statOrNull(path.join(dir, 'config.json'))?.isFile()) refuse(flag, dir, 'has no config.json (not a Hugging Face model directory)');
}

/** The disk tier's directory: it must exist and be writable (every command checks it this way).
 *  `ram`: the run's RAM limit, which a disk tier in memory would pass unseen (said when given). */
export function diskDir(dir: string, ram?: number): void {
  existingDir('--disk-dir', dir);
  try {
    fs.accessSync(dir, fs.constants.W_OK);
  } catch {
    refuse('--disk-dir', dir, 'is not writable');
  }
  // A disk tier in memory holds its files in RAM that --ram does not count (the spill files
  // reserve a whole block's cache: 192 MiB of a 56 MiB run's on one tmpfs).
  if (ram !== undefined && IN_MEMORY.has(fs.statfsSync(dir).type)) {
    process.stderr.write(`tierlm: warning: --disk-dir ${dir} is in memory (tmpfs or ramfs): what the disk tier keeps there takes RAM outside --ram\n`);
  }
}

/** statfs types of file systems kept in memory: tmpfs, ramfs. */
const IN_MEMORY = new Set([0x01021994, 0x858458f6]);

/** A file to read: it exists and is not a directory. */
export function inputFile(flag: string, file: string, hint = ''): void {
  const s = statOrNull(file);
  if (!s) refuse(flag, file, `does not exist${hint}`);
  if (s!.isDirectory()) refuse(flag, file, 'is a directory, not a file');
}

/** A file to write: not a directory, in a directory that exists (which is never created). */
export function outputFile(flag: string, file: string): void {
  if (file === '-') return;
  if (statOrNull(file)?.isDirectory()) refuse(flag, file, 'is a directory, not a file');
  const parent = path.dirname(path.resolve(file));
  const ps = statOrNull(parent);
  if (!ps) refuse(flag, file, `its directory ${parent} does not exist`);
  if (!ps!.isDirectory()) refuse(flag, file, `${parent} is not a directory`);
}

/** A directory to create and fill: absent (in a parent that exists), or empty unless `force`. */
export function newDir(flag: string, dir: string, force: boolean): void {
  // (an empty value, an unset variable's, resolved to the working directory and was written into)
  if (dir.trim() === '') throw new UserError(`${flag} "": give a directory`);
  const s = statOrNull(dir);
  if (s && !s.isDirectory()) refuse(flag, dir, 'is a file, not a directory');
  if (s && !force && fs.readdirSync(dir).length > 0) refuse(flag, dir, 'is not empty (add --force to write into it)');
  if (!s) {
    const parent = path.dirname(path.resolve(dir));
    if (!statOrNull(parent)?.isDirectory()) refuse(flag, dir, `its parent ${parent} does not exist`);
  }
}

/** Exactly one model source; --layers cuts a named shape only (a model directory is run whole). */
export function checkModelSource(o: { model?: string; config?: string; layers?: number }): void {
  if ((o.model === undefined) === (o.config === undefined)) throw new UserError('give either --model DIR or --config NAME');
  if (o.model !== undefined && o.layers !== undefined) throw new UserError('--layers works with --config only (a --model directory runs with all its layers)');
  if (o.model !== undefined) modelDir('--model', o.model);
}
