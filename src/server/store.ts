// Files and batch jobs of the Batch API, kept in --data-dir: `files/<id>.jsonl` (content) beside
// `files/<id>.json` (the file object), and `batches/<id>.json` (the batch object). Every object is
// written atomically (src/util/atomic.ts). Paths are made only from ids this server generated,
// checked against their pattern first, so no request can name a path outside the data directory.
// One server at a time keeps a data directory (`server.lock`, below). A batch's output and error
// files get their objects when the job starts, marked reserved (not listed nor served until the
// job publishes them), so that publishing on a full disk only overwrites bytes the file has.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { FileLock } from '../tensor/disk/lock.js';
import { writeFileDurable } from '../util/atomic.js';
import { UserError } from '../util/errors.js';
import { writeFully } from '../util/write-fully.js';

export interface FileObject {
  id: string;
  object: 'file';
  bytes: number;
  created_at: number;
  filename: string;
  purpose: 'batch' | 'batch_output';
  status: 'processed';
  expires_at: null;
}

export type BatchStatus = 'validating' | 'in_progress' | 'finalizing' | 'completed' | 'failed' | 'expired' | 'cancelling' | 'cancelled';

export interface BatchObject {
  id: string;
  object: 'batch';
  endpoint: string;
  errors: { object: 'list'; data: { code: string; message: string; param: null; line: null }[] } | null;
  input_file_id: string;
  completion_window: string;
  status: BatchStatus;
  output_file_id: string | null;
  error_file_id: string | null;
  created_at: number;
  in_progress_at: number | null;
  expires_at: number;
  finalizing_at: number | null;
  completed_at: number | null;
  failed_at: number | null;
  expired_at: number | null;
  cancelling_at: number | null;
  cancelled_at: number | null;
  request_counts: { total: number; completed: number; failed: number };
  metadata: Record<string, string> | null;
}

/** A batch as stored: its object, and the ids its output and error files will have. */
export interface StoredBatch {
  batch: BatchObject;
  outputId: string;
  errorId: string;
}

const FILE_ID = /^file-[0-9a-f]{24}$/;
const BATCH_ID = /^batch_[0-9a-f]{24}$/;
/** What a killed server leaves: an upload in progress (uploadPath) and the temporary of a durable
 *  write (writeFileDurable), each named with the writer's pid. */
const TEMPORARY = /^(file-[0-9a-f]{24}\.jsonl\.upload|file-[0-9a-f]{24}\.json\.tmp|batch_[0-9a-f]{24}\.json\.tmp)-\d+$/;
/** File objects are written padded with spaces to this size (JSON allows trailing white space):
 *  a batch file's object, reserved at this size when its job starts, can then be published on a
 *  disk with no room left by overwriting its bytes in place. A sector: one write of it at offset 0. */
const OBJECT_BYTES = 512;
/** Error codes of a disk with no room: an atomic write's temporary cannot be written. */
const NO_ROOM = ['ENOSPC', 'EDQUOT'];

/** The batch error code of a job failed by the disk (full, over quota, an I/O error): the next
 *  server to start goes on with it. */
export const DISK_FAILED = 'insufficient_storage';
export const newFileId = () => `file-${randomBytes(12).toString('hex')}`;
export const newBatchId = () => `batch_${randomBytes(12).toString('hex')}`;
export const now = () => Math.floor(Date.now() / 1000);

/** Holds `DIR/server.lock` (an flock, which the kernel drops when its holder exits) or refuses,
 *  naming the server that has it. Two servers on one directory each resumed its running batches
 *  and both appended the lines in flight: a server started while the last one was still writing
 *  its lines after SIGTERM answered 118 of 200 lines twice. */
function lockDataDir(dir: string): FileLock {
  const file = path.join(dir, 'server.lock');
  const lock = FileLock.tryAcquire(file);
  if (!lock) {
    const pid = fs.readFileSync(file, 'utf8').trim();
    throw new UserError(`${dir}: another server${/^\d+$/.test(pid) ? ` (pid ${pid})` : ''} keeps its files and batches here; ` +
      'stop it first (a stopping server holds the directory until the requests in flight are written), or give another data directory');
  }
  fs.writeFileSync(file, `${process.pid}\n`);
  return lock;
}

export class Store {
  readonly filesDir: string;
  readonly batchesDir: string;

  private readonly lock: FileLock;

  constructor(readonly dir: string) {
    this.filesDir = path.join(dir, 'files');
    this.batchesDir = path.join(dir, 'batches');
    for (const d of [this.filesDir, this.batchesDir]) makeDir(d, dir);
    this.lock = lockDataDir(dir);
    try {
      this.removeDebris();
    } catch (e) {
      this.lock.release();
      throw e;
    }
  }

  /** Whether a server starting goes on with this batch (BatchJobs.resume): it was running or being
   *  cancelled when the last one stopped, or the disk failed it and its input is still there. */
  resumes(b: StoredBatch): boolean {
    if (['validating', 'in_progress', 'finalizing', 'cancelling'].includes(b.batch.status)) return true;
    return b.batch.status === 'failed' && b.batch.errors?.data[0]?.code === DISK_FAILED && this.getFile(b.batch.input_file_id) !== null;
  }

  /** Removes what a killed server left behind (an upload of up to --file-limit bytes stayed for
   *  ever, unlisted, so no request could remove it): uploads in progress and the temporaries of
   *  durable writes, and content without an object or with one still reserved (a server killed
   *  before it wrote the object) — but not the output and error files of a batch that goes on,
   *  whose lines are its record of the work done. Runs holding the lock: no other server is live. */
  private removeDebris(): void {
    for (const f of fs.readdirSync(this.batchesDir)) {
      if (TEMPORARY.test(f)) fs.rmSync(path.join(this.batchesDir, f), { force: true });
    }
    const keep = new Set(this.listBatches().filter((b) => this.resumes(b)).flatMap((b) => [b.outputId, b.errorId]));
    for (const f of fs.readdirSync(this.filesDir)) {
      const id = f.replace(/\.jsonl?$/, '');
      if (TEMPORARY.test(f)) fs.rmSync(path.join(this.filesDir, f), { force: true });
      else if (FILE_ID.test(id) && !keep.has(id) && (f.endsWith('.jsonl') ? !fs.existsSync(path.join(this.filesDir, `${id}.json`)) : this.reserved(id))) {
        this.deleteFile(id);
      }
    }
  }

  /** Lets another server open the directory (the lock also goes when the process ends). */
  close(): void {
    this.lock.release();
  }

  /** Where a file's content is (or will be written); null for an id not of our pattern. */
  contentPath(id: string): string | null {
    return FILE_ID.test(id) ? path.join(this.filesDir, `${id}.jsonl`) : null;
  }

  /** A path for an upload in progress, renamed to the content path when whole. */
  uploadPath(id: string): string {
    return path.join(this.filesDir, `${id}.jsonl.upload-${process.pid}`);
  }

  /** Publishes a file whose content is in place (a finished upload or a batch's output). */
  putFile(id: string, filename: string, purpose: FileObject['purpose']): FileObject {
    const bytes = fs.statSync(this.contentPath(id)!).size;
    const f: FileObject = { id, object: 'file', bytes, created_at: now(), filename, purpose, status: 'processed', expires_at: null };
    this.writeObject(id, f);
    return f;
  }

  /** Gives a batch's output or error file its object, reserved: neither listed nor served, it
   *  holds the room its published object needs (a job failed by a full disk had answered 46 lines
   *  and could not publish them: there was no room left for the object). */
  reserveFile(id: string): void {
    if (!this.reserved(id)) this.writeObject(id, { id, object: 'file', reserved: true });
  }

  /** Writes a file object durably and atomically; on a disk with no room for the temporary, over
   *  the reserved (or earlier) object in place: one write of a sector, then fsync. */
  private writeObject(id: string, o: object): void {
    const file = path.join(this.filesDir, `${id}.json`);
    const text = Buffer.from(JSON.stringify(o));
    const padded = Buffer.alloc(Math.max(OBJECT_BYTES, text.length), ' ');
    text.copy(padded);
    try {
      writeFileDurable(file, padded);
    } catch (e) {
      if (!NO_ROOM.includes((e as NodeJS.ErrnoException).code ?? '') || !overwrite(file, padded)) throw e;
    }
  }

  /** Whether a file's object is a reservation (an output not yet published). */
  private reserved(id: string): boolean {
    return readJson<{ reserved?: boolean }>(path.join(this.filesDir, `${id}.json`))?.reserved === true;
  }

  getFile(id: string): FileObject | null {
    return FILE_ID.test(id) ? published(readJson<FileObject>(path.join(this.filesDir, `${id}.json`))) : null;
  }

  /** Every file, newest first (ties: by id). */
  listFiles(): FileObject[] {
    return fs.readdirSync(this.filesDir).filter((f) => f.endsWith('.json') && FILE_ID.test(f.slice(0, -'.json'.length)))
      .map((f) => published(readJson<FileObject>(path.join(this.filesDir, f)))!).filter(Boolean)
      .sort((a, b) => b.created_at - a.created_at || (a.id < b.id ? 1 : -1));
  }

  /** Removes a file: its object first (from then on it does not exist), then its content. */
  deleteFile(id: string): void {
    fs.rmSync(path.join(this.filesDir, `${id}.json`), { force: true });
    fs.rmSync(this.contentPath(id)!, { force: true });
  }

  putBatch(b: StoredBatch): void {
    writeFileDurable(path.join(this.batchesDir, `${b.batch.id}.json`), JSON.stringify(b));
  }

  getBatch(id: string): StoredBatch | null {
    return BATCH_ID.test(id) ? readJson<StoredBatch>(path.join(this.batchesDir, `${id}.json`)) : null;
  }

  /** Every batch, newest first. */
  listBatches(): StoredBatch[] {
    return fs.readdirSync(this.batchesDir).filter((f) => BATCH_ID.test(f.replace(/\.json$/, '')) && f.endsWith('.json'))
      .map((f) => readJson<StoredBatch>(path.join(this.batchesDir, f))!).filter(Boolean)
      .sort((a, b) => b.batch.created_at - a.batch.created_at || (a.batch.id < b.batch.id ? 1 : -1));
  }
}

/** Makes `sub` of the data directory `dir` (with `dir` and its parents), or says what `dir` is
 *  (a file gave a raw "ENOTDIR: not a directory, mkdir 'README.md/files'"). */
function makeDir(sub: string, dir: string): void {
  try {
    fs.mkdirSync(sub, { recursive: true });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const what = code === 'ENOTDIR' ? 'it, or a directory above it, is a file' : `cannot make ${path.basename(sub)}/ in it (${code ?? (e as Error).message})`;
    throw new UserError(`data directory ${dir}: ${what}`);
  }
}

/** A file object, or null for none or a reservation (a batch's file not yet published). */
function published(f: FileObject | null): FileObject | null {
  return f && !(f as { reserved?: boolean }).reserved ? f : null;
}

/** Overwrites `file` with `data`, padded with spaces to the file's size, from offset 0: its blocks
 *  are reused, none is allocated. False when the file is absent or shorter than `data`. */
function overwrite(file: string, data: Buffer): boolean {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r+');
  } catch {
    return false;
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size < data.length) return false;
    const whole = Buffer.alloc(size, ' ');
    data.copy(whole);
    writeFully(fd, whole, file, 0);
    fs.fsyncSync(fd);
    return true;
  } finally {
    fs.closeSync(fd);
  }
}

function readJson<T>(file: string): T | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    // Written atomically by this server, so only another hand can have broken it.
    throw new UserError(`${file}: not valid JSON (${(e as Error).message}); fix or remove it`);
  }
}
