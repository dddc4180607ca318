// Batch jobs of a server: each runs its input file through the shared batch runner
// (src/openai/batch-run.ts, as `tierlm batch` does) at 'batch' priority, its answers appended to
// its output and error files as they come. The batch object is saved at each change of status and
// at most once a second for its counts; a job running when the server stopped is started again
// when it starts, and skips the lines already answered. A job that fails still publishes the lines
// it answered (as OpenAI does for a failed batch with partial results); one failed by the disk
// (full, over quota, an I/O error) is started again, as a stopped one, when the server restarts.
import fs from 'node:fs';
import { ResultWriter, fileLines } from '../formats/jsonl.js';
import { batchRecord } from '../openai/batch-lines.js';
import { runBatch } from '../openai/batch-run.js';
import type { Engine } from '../openai/complete.js';
import type { Endpoint } from '../openai/validate.js';
import { type StoredBatch, type Store, now } from './store.js';

const SAVE_EVERY_MS = 1000;

/** Error codes of a disk that failed, not of the batch: freed or fixed, a rerun can go on. */
const DISK_ERRORS = ['ENOSPC', 'EDQUOT', 'EIO', 'EROFS'];
/** The batch error code of a job failed by the disk (resumed at the next start). */
const DISK_FAILED = 'insufficient_storage';

const diskFailed = (b: StoredBatch) => b.batch.status === 'failed' && b.batch.errors?.data[0]?.code === DISK_FAILED;

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

  constructor(private readonly store: Store, private readonly engine: Engine, private readonly concurrency: number) {}

  /** Starts again every job that was running (or being cancelled) when the server stopped, and
   *  every job the disk failed (its input still there): it goes on from the lines it answered. */
  resume(): void {
    for (const b of this.store.listBatches()) {
      if (diskFailed(b) && this.store.getFile(b.batch.input_file_id)) reopen(b);
      if (['validating', 'in_progress', 'finalizing', 'cancelling'].includes(b.batch.status)) this.start(b);
    }
  }

  start(b: StoredBatch): void {
    const cancel = new AbortController();
    if (b.batch.status === 'cancelling') cancel.abort();
    const done = this.run(b, cancel.signal).catch((e) => this.fail(b, e as Error))
      .finally(() => this.running.delete(b.batch.id));
    this.running.set(b.batch.id, { b, cancel, done });
  }

  /** A batch: the running job's live object, else the saved one. */
  get(id: string): StoredBatch | null {
    return this.running.get(id)?.b ?? this.unsaved.get(id) ?? this.store.getBatch(id);
  }

  /** Asks a job to stop; its status is 'cancelling' until the lines in flight are aborted. */
  cancel(b: StoredBatch): void {
    b.batch.status = 'cancelling';
    b.batch.cancelling_at = now();
    this.store.putBatch(b);
    this.running.get(b.batch.id)?.cancel.abort();
  }

  /** Shutdown: no job starts another line; resolves when the lines in flight are written. */
  async close(): Promise<void> {
    this.stop.abort();
    await Promise.all([...this.running.values()].map((r) => r.done));
  }

  /** Marks a job failed by `e`, publishing the lines it answered. */
  private fail(b: StoredBatch, e: Error): void {
    const disk = DISK_ERRORS.includes((e as NodeJS.ErrnoException).code ?? '');
    b.batch.status = 'failed';
    b.batch.failed_at = now();
    // (the answered lines were in the data dir, but with no output_file_id no request returned them)
    const published = this.tryPublish(b);
    const message = disk ? `${e.message} (the disk failed, not the batch: the lines answered are in its output and error files; ` +
      'free space or fix the disk, and the server goes on with the other lines when it restarts)' : e.message;
    const data = [{ code: disk ? DISK_FAILED : 'engine_error', message, param: null, line: null }];
    if (published) data.push({ code: 'output_not_published', message: `the answered lines could not be published: ${published.message}`, param: null, line: null });
    b.batch.errors = { object: 'list', data };
    try {
      this.store.putBatch(b);
    } catch (saving) {
      // The data dir is full or read-only (what failed the job, likely): the server goes on,
      // reporting the job failed; saved, it is resumed at the next start.
      this.unsaved.set(b.batch.id, b);
      process.stderr.write(`tierlm serve: batch ${b.batch.id} failed (${e.message}) and its state cannot be saved: ${(saving as Error).message}\n`);
    }
  }

  /** publish(), for a failed job: null, or why its files could not be published (a full data dir). */
  private tryPublish(b: StoredBatch): Error | null {
    try {
      this.publish(b);
      return null;
    } catch (e) {
      return e as Error;
    }
  }

  /** Gives the output and error files their file objects, each when it has lines. */
  private publish(b: StoredBatch): void {
    const has = (id: string, n: number) => n > 0 && fs.existsSync(this.store.contentPath(id)!);
    if (has(b.outputId, b.batch.request_counts.completed)) b.batch.output_file_id = this.store.putFile(b.outputId, `${b.batch.id}_output.jsonl`, 'batch_output').id;
    if (has(b.errorId, b.batch.request_counts.failed)) b.batch.error_file_id = this.store.putFile(b.errorId, `${b.batch.id}_error.jsonl`, 'batch_output').id;
  }

  private async run(b: StoredBatch, signal: AbortSignal): Promise<void> {
    const input = this.store.contentPath(b.batch.input_file_id)!;
    const out = new ResultWriter(this.store.contentPath(b.outputId)!, batchRecord);
    const errors = new ResultWriter(this.store.contentPath(b.errorId)!, batchRecord);
    try {
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
        lines: () => fileLines(input),
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
      this.publish(b);
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

/** A job the disk failed, made running again (or cancelling, if it was): its files are published
 *  anew when it ends. */
function reopen(b: StoredBatch): void {
  b.batch.status = b.batch.cancelling_at !== null ? 'cancelling' : 'in_progress';
  b.batch.failed_at = null;
  b.batch.errors = null;
  b.batch.output_file_id = null;
  b.batch.error_file_id = null;
}
