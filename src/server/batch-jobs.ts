// Batch jobs of a server: each runs its input file through the shared batch runner
// (src/openai/batch-run.ts, as `tierlm batch` does) at 'batch' priority, its answers appended to
// its output and error files as they come. The batch object is saved at each change of status and
// at most once a second for its counts; a job running when the server stopped is started again
// when it starts, and skips the lines already answered. A job that fails still publishes the lines
// it answered (as OpenAI does for a failed batch with partial results), whole lines only, even on
// a full disk (its files' objects are reserved when it starts); one failed by the disk (full, over
// quota, an I/O error) is started again, as a stopped one, after a while (30 s, doubling while the
// disk keeps failing it, to 8 min) and when the server restarts; cancelled meanwhile, it is not.
import fs from 'node:fs';
import { ResultWriter, fileLines, requestLineLimit } from '../formats/jsonl.js';
import { batchRecord } from '../openai/batch-lines.js';
import { runBatch } from '../openai/batch-run.js';
import type { Engine } from '../openai/complete.js';
import type { Endpoint } from '../openai/validate.js';
import { writeFully } from '../util/write-fully.js';
import { DISK_FAILED, type StoredBatch, type Store, now } from './store.js';

const SAVE_EVERY_MS = 1000;

/** A disk-failed job's next try waits at most this many times the first wait. */
const RETRY_BACKOFF_MAX = 16;

/** Error codes of a disk that failed, not of the batch: freed or fixed, a rerun can go on. */
const DISK_ERRORS = ['ENOSPC', 'EDQUOT', 'EIO', 'EROFS'];

/** A job's output and error writers, once it has opened them (a failed job publishes by them). */
interface Writers {
  out?: ResultWriter;
  errors?: ResultWriter;
}

interface Running {
  /** The live object (the one the job updates). */
  b: StoredBatch;
  cancel: AbortController;
  done: Promise<void>;
}

export class BatchJobs {
  private readonly running = new Map<string, Running>();
  private readonly stop = new AbortController();
  /** Jobs that failed where their state could not be saved (their live object, for this run). */
  private readonly unsaved = new Map<string, StoredBatch>();
  /** Jobs the disk failed, waiting to be tried again: the timer, and the failures in a row. */
  private readonly retries = new Map<string, { timer: NodeJS.Timeout | null; failures: number }>();

  constructor(private readonly store: Store, private readonly engine: Engine, private readonly concurrency: number,
    private readonly retryMs = 30_000) {}

  /** Starts again every job that was running (or being cancelled) when the server stopped, and
   *  every job the disk failed (its input still there): it goes on from the lines it answered. */
  resume(): void {
    for (const b of this.store.listBatches()) {
      if (!this.store.resumes(b)) continue;
      if (b.batch.status === 'failed') reopen(b);
      this.start(b);
    }
  }

  start(b: StoredBatch): void {
    const cancel = new AbortController();
    if (b.batch.status === 'cancelling') cancel.abort();
    const writers: Writers = {};
    const done = this.run(b, cancel.signal, writers).then(() => void this.retries.delete(b.batch.id), (e) => this.fail(b, e as Error, writers))
      .finally(() => this.running.delete(b.batch.id));
    this.running.set(b.batch.id, { b, cancel, done });
  }

  /** A batch: the running job's live object, else the saved one. */
  get(id: string): StoredBatch | null {
    return this.running.get(id)?.b ?? this.unsaved.get(id) ?? this.store.getBatch(id);
  }

  /** Asks a job to stop; its status is 'cancelling' until the lines in flight are aborted. A job
   *  the disk failed, waiting to be tried again, is cancelled at once (its answered lines stay
   *  published). */
  cancel(b: StoredBatch): void {
    const waiting = this.retries.get(b.batch.id);
    if (b.batch.status === 'failed' && waiting?.timer) {
      clearTimeout(waiting.timer);
      this.retries.delete(b.batch.id);
      b.batch.status = 'cancelled';
      b.batch.cancelling_at = b.batch.cancelled_at = now();
      // (unsaved: cancelled for this run; a restart finds it failed and goes on with it)
      this.saveOrHold(b, 'cancelled');
      return;
    }
    b.batch.status = 'cancelling';
    b.batch.cancelling_at = now();
    this.store.putBatch(b);
    this.running.get(b.batch.id)?.cancel.abort();
  }

  /** Whether a job the disk failed is waiting to be tried again (it can be cancelled). */
  retrying(id: string): boolean {
    return this.retries.get(id)?.timer != null;
  }

  /** Shutdown: no job starts another line; resolves when the lines in flight are written. */
  async close(): Promise<void> {
    this.stop.abort();
    for (const r of this.retries.values()) if (r.timer) clearTimeout(r.timer);
    this.retries.clear();
    await Promise.all([...this.running.values()].map((r) => r.done));
  }

  /** Tries a job the disk failed again after a while: the disk may have been freed or fixed, and
   *  waiting for a restart left it failed for as long as the server ran. */
  private retryLater(b: StoredBatch): void {
    if (this.stop.signal.aborted) return;
    const wait = this.nextRetryMs(b); // (as the job's error message says)
    const r = this.retries.get(b.batch.id) ?? { timer: null, failures: 0 };
    r.failures++;
    r.timer = setTimeout(() => {
      r.timer = null;
      // (its input deleted meanwhile, or cancelled: not tried again)
      if (this.stop.signal.aborted || !this.store.resumes(b)) {
        this.retries.delete(b.batch.id);
        return;
      }
      reopen(b);
      this.unsaved.delete(b.batch.id);
      this.start(b);
    }, wait);
    r.timer.unref();
    this.retries.set(b.batch.id, r);
  }

  /** Marks a job failed by `e`, publishing the lines it answered. */
  private fail(b: StoredBatch, e: Error, writers: Writers): void {
    const disk = DISK_ERRORS.includes((e as NodeJS.ErrnoException).code ?? '');
    b.batch.status = 'failed';
    b.batch.failed_at = now();
    // (the answered lines were in the data dir, but with no output_file_id no request returned them)
    const published = this.tryPublish(b, writers);
    const message = disk ? `${e.message} (the disk failed, not the batch: the lines answered are in its output and error files; ` +
      `free space or fix the disk: the server goes on with the other lines in ${inWords(this.nextRetryMs(b))}, or when it restarts)` : e.message;
    const data = [{ code: disk ? DISK_FAILED : 'engine_error', message, param: null, line: null }];
    if (published) data.push({ code: 'output_not_published', message: `the answered lines could not be published: ${published.message}`, param: null, line: null });
    b.batch.errors = { object: 'list', data };
    // (unsaved: the server goes on reporting the job failed; saved, it is resumed at the next start)
    this.saveOrHold(b, `failed (${e.message})`);
    if (disk) this.retryLater(b);
    else this.retries.delete(b.batch.id);
  }

  /** Saves a job's state; where the data dir cannot take it (full or read-only: likely what failed
   *  the job), the live object stands for this run, and stderr says so. */
  private saveOrHold(b: StoredBatch, what: string): void {
    try {
      this.store.putBatch(b);
      this.unsaved.delete(b.batch.id);
    } catch (saving) {
      this.unsaved.set(b.batch.id, b);
      process.stderr.write(`tierlm serve: batch ${b.batch.id} ${what}, and its state cannot be saved: ${(saving as Error).message}\n`);
    }
  }

  /** How long the next try of a job the disk failed waits (see retryLater). */
  private nextRetryMs(b: StoredBatch): number {
    return this.retryMs * Math.min(RETRY_BACKOFF_MAX, 2 ** (this.retries.get(b.batch.id)?.failures ?? 0));
  }

  /** publish(), for a failed job: null, or why its files could not be published (a full data dir). */
  private tryPublish(b: StoredBatch, writers: Writers): Error | null {
    try {
      this.publish(b, writers);
      return null;
    } catch (e) {
      return e as Error;
    }
  }

  /** Gives the output and error files their file objects, each when it has lines (whole ones: a
   *  line torn by the write that failed the job is cut), and drops the reservation of one without. */
  private publish(b: StoredBatch, writers: Writers): void {
    const file = (id: string, count: 'completed' | 'failed', writer: ResultWriter | undefined, name: string): string | null => {
      const content = this.store.contentPath(id)!;
      if (fs.existsSync(content)) b.batch.request_counts[count] += endAtLine(content, (line) => writer?.done.has(line) === true);
      if ((fs.statSync(content, { throwIfNoEntry: false })?.size ?? 0) > 0) return this.store.putFile(id, `${b.batch.id}_${name}.jsonl`, 'batch_output').id;
      this.store.deleteFile(id);
      return null;
    };
    b.batch.output_file_id = file(b.outputId, 'completed', writers.out, 'output');
    b.batch.error_file_id = file(b.errorId, 'failed', writers.errors, 'error');
  }

  private async run(b: StoredBatch, signal: AbortSignal, writers: Writers): Promise<void> {
    const input = this.store.contentPath(b.batch.input_file_id)!;
    const out = writers.out = new ResultWriter(this.store.contentPath(b.outputId)!, batchRecord);
    const errors = writers.errors = new ResultWriter(this.store.contentPath(b.errorId)!, batchRecord);
    try {
      // Before any line is written (the writers have read the files, created nothing): publishing
      // then needs no new room, the disk may be full by then.
      this.store.reserveFile(b.outputId);
      this.store.reserveFile(b.errorId);
      // Lines answered before a restart count as they were.
      const before = { completed: out.done.size, failed: errors.done.size };
      // Shown (and saved) at once, not only when the first new line is answered.
      b.batch.request_counts.completed = before.completed;
      b.batch.request_counts.failed = before.failed;
      if (b.batch.status === 'validating') {
        b.batch.status = 'in_progress';
        b.batch.in_progress_at = now();
      }
      this.store.putBatch(b);
      let saved = performance.now();
      const counts = await runBatch(this.engine, {
        lines: () => fileLines(input, requestLineLimit(this.engine.model.maxPositions)),
        out, errors, endpoint: b.batch.endpoint as Endpoint, concurrency: this.concurrency, signal, stop: this.stop.signal,
        onProgress: (c) => {
          b.batch.request_counts.completed = before.completed + c.completed;
          b.batch.request_counts.failed = before.failed + c.failed;
          if (performance.now() - saved > SAVE_EVERY_MS) {
            saved = performance.now();
            this.store.putBatch(b);
          }
        },
      });
      b.batch.request_counts = { total: counts.total, completed: before.completed + counts.completed, failed: before.failed + counts.failed };
      if (this.stop.signal.aborted && !signal.aborted) {
        this.store.putBatch(b); // still in_progress: the next start goes on with it
        return;
      }
      b.batch.status = 'finalizing';
      b.batch.finalizing_at = now();
      this.publish(b, writers);
      if (signal.aborted) {
        b.batch.status = 'cancelled';
        b.batch.cancelled_at = now();
      } else {
        b.batch.status = 'completed';
        b.batch.completed_at = now();
      }
      this.store.putBatch(b);
    } finally {
      out.close();
      errors.close();
    }
  }
}

function inWords(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${Math.round(ms / 1000)} s`;
}

/** A job the disk failed, made running again (or cancelling, if it was): its files are published
 *  anew when it ends. */
function reopen(b: StoredBatch): void {
  b.batch.status = b.batch.cancelling_at !== null ? 'cancelling' : 'in_progress';
  b.batch.failed_at = null;
  b.batch.errors = null;
  b.batch.output_file_id = null;
  b.batch.error_file_id = null;
}

/**
 * Makes a job's output or error file end with a whole line, so that no client downloads a torn
 * one: what follows the last newline (a write that failed on a full disk, not counted) is cut. A
 * line whole but for its newline is an answer (a resumed job reads it as one): it gets its newline,
 * or is cut where even that byte has no room. Returns the change to the file's count of lines,
 * `counted` saying whether a line's id was counted (read by the job's writer, or written by it).
 */
function endAtLine(file: string, counted: (id: string) => boolean): number {
  const fd = fs.openSync(file, 'r+');
  try {
    const size = fs.fstatSync(fd).size;
    const start = lastLineStart(fd, size);
    if (start === size) return 0;
    const tail = Buffer.alloc(size - start);
    fs.readSync(fd, tail, 0, tail.length, start);
    const rec = batchRecord(tail.toString('utf8'));
    if (rec) {
      try {
        writeFully(fd, '\n', file, size);
        fs.fsyncSync(fd);
        return counted(rec.id) ? 0 : 1;
      } catch {
        // (no room for the newline: cut the line, as a torn one)
      }
    }
    fs.ftruncateSync(fd, start);
    fs.fsyncSync(fd);
    return rec && counted(rec.id) ? -1 : 0;
  } finally {
    fs.closeSync(fd);
  }
}

/** The offset after the last newline of a file of `size` bytes (0 when it has none), read back
 *  from its end a chunk at a time: an output file can be large, its torn part is at most a line. */
function lastLineStart(fd: number, size: number): number {
  const buf = Buffer.allocUnsafe(1 << 16);
  for (let end = size; end > 0;) {
    const from = Math.max(0, end - buf.length);
    const n = fs.readSync(fd, buf, 0, end - from, from);
    const nl = buf.subarray(0, n).lastIndexOf(10);
    if (nl >= 0) return from + nl + 1;
    end = from;
  }
  return 0;
}
