// The Batch API: POST /v1/files (multipart, purpose "batch"), GET /v1/files, GET and DELETE
// /v1/files/{id}, its content, POST /v1/batches, GET /v1/batches/{id}, GET /v1/batches,
// POST /v1/batches/{id}/cancel.
import fs from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type { FastifyInstance } from 'fastify';
import { eachLineSync } from '../formats/jsonl.js';
import { ApiError, invalid, notFound } from '../openai/errors.js';
import { ENDPOINTS } from '../openai/validate.js';
import type { BatchJobs } from './batch-jobs.js';
import type { ServerOptions } from './app.js';
import { type BatchObject, type Store, newBatchId, newFileId, now } from './store.js';

const createBatchSchema = {
  type: 'object',
  required: ['input_file_id', 'endpoint', 'completion_window'],
  additionalProperties: false,
  properties: {
    input_file_id: { type: 'string' },
    endpoint: { enum: ENDPOINTS },
    completion_window: { const: '24h' },
    metadata: { anyOf: [{ type: 'object', maxProperties: 16, additionalProperties: { type: 'string', maxLength: 512 } }, { type: 'null' }] },
  },
} as const;

const listSchema = {
  type: 'object',
  additionalProperties: false,
  properties: { limit: { type: 'string', pattern: '^[1-9][0-9]{0,2}$' }, after: { type: 'string' } },
} as const;

const listFilesSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    limit: { type: 'string', pattern: '^([1-9][0-9]{0,3}|10000)$' }, after: { type: 'string' }, order: { enum: ['asc', 'desc'] }, purpose: { type: 'string' },
  },
} as const;

/** The multipart parser's (busboy's) errors for a body that is not multipart/form-data as its
 *  header says ("Multipart: Boundary not found", "Unexpected end of form"): plain Errors, with
 *  neither a system error's code (a full disk's ENOSPC) nor an HTTP status. They were answered 500. */
function malformedBody(e: unknown): boolean {
  return e instanceof Error && e.constructor === Error && (e as { code?: unknown }).code === undefined && (e as { statusCode?: unknown }).statusCode === undefined;
}

export function addBatchRoutes(app: FastifyInstance, store: Store, jobs: BatchJobs, o: ServerOptions): void {
  const fileOrThrow = (id: string) => store.getFile(id) ?? (() => { throw notFound(`No such File object: ${id}`, 'file_id'); })();
  const batchOrThrow = (id: string) => jobs.get(id) ?? (() => { throw notFound(`No such Batch object: ${id}`, 'batch_id'); })();

  app.post('/v1/files', async (req) => {
    if (!req.isMultipart()) throw invalid('POST /v1/files takes multipart/form-data with "purpose" and "file"');
    const id = newFileId();
    const tmp = store.uploadPath(id);
    let purpose: unknown;
    let filename: string | null = null;
    try {
      for await (const part of req.parts()) {
        if (part.type === 'file') {
          if (part.fieldname !== 'file' || filename !== null) throw invalid(`unexpected file field "${part.fieldname}"`, part.fieldname);
          filename = part.filename || 'upload.jsonl';
          await pipeline(part.file, fs.createWriteStream(tmp));
          if (part.file.truncated) throw new ApiError(413, `the file is larger than ${o.fileLimit} bytes`, 'invalid_request_error', 'file', 'file_too_large');
        } else if (part.fieldname === 'purpose') purpose = part.value;
      }
      if (filename === null) throw invalid("Missing required parameter: 'file'.", 'file', 'missing_required_parameter');
      if (purpose !== 'batch') throw invalid(`purpose must be "batch" (the only purpose tierlm serves), got ${JSON.stringify(purpose)}`, 'purpose');
      const content = store.contentPath(id)!;
      fs.renameSync(tmp, content);
      try {
        return store.putFile(id, filename, 'batch');
      } catch (e) {
        // (a full disk: the object could not be written, and content without one is never listed nor removed)
        fs.rmSync(content, { force: true });
        throw e;
      }
    } catch (e) {
      fs.rmSync(tmp, { force: true });
      if ((e as { code?: string }).code === 'FST_REQ_FILE_TOO_LARGE') throw new ApiError(413, `the file is larger than ${o.fileLimit} bytes`, 'invalid_request_error', 'file', 'file_too_large');
      if (malformedBody(e)) throw invalid(`The multipart/form-data body is malformed: ${(e as Error).message}`, null, 'invalid_multipart');
      throw e;
    }
  });

  app.get<{ Querystring: { limit?: string; after?: string; order?: 'asc' | 'desc'; purpose?: string } }>('/v1/files',
    { schema: { querystring: listFilesSchema } }, async (req) => {
      const q = req.query;
      const all = store.listFiles().filter((f) => q.purpose === undefined || f.purpose === q.purpose);
      if (q.order === 'asc') all.reverse();
      return page(all, q.limit, q.after, 10000);
    });

  app.get<{ Params: { id: string } }>('/v1/files/:id', async (req) => fileOrThrow(req.params.id));

  app.delete<{ Params: { id: string } }>('/v1/files/:id', async (req) => {
    const f = fileOrThrow(req.params.id);
    // A running batch reads its input and appends to its outputs: they go when it has ended.
    const user = store.listBatches().find((b) => RUNNING.includes(jobs.get(b.batch.id)!.batch.status) &&
      [b.batch.input_file_id, b.outputId, b.errorId].includes(f.id));
    if (user) throw invalid(`file ${f.id} is in use by batch ${user.batch.id} (${jobs.get(user.batch.id)!.batch.status}); delete it when the batch has ended`, 'file_id', 'file_in_use');
    store.deleteFile(f.id);
    return { id: f.id, object: 'file', deleted: true };
  });

  app.get<{ Params: { id: string } }>('/v1/files/:id/content', async (req, reply) => {
    const f = fileOrThrow(req.params.id);
    return reply.type('application/jsonl').send(fs.createReadStream(store.contentPath(f.id)!));
  });

  app.post<{ Body: { input_file_id: string; endpoint: string; metadata?: Record<string, string> | null } }>('/v1/batches', { schema: { body: createBatchSchema } }, async (req) => {
    const input = store.getFile(req.body.input_file_id);
    if (!input) throw notFound(`No such File object: ${req.body.input_file_id}`, 'input_file_id');
    if (input.purpose !== 'batch') throw invalid(`file ${input.id} has purpose "${input.purpose}", not "batch"`, 'input_file_id');
    const created = now();
    const total = countLines(store.contentPath(input.id)!);
    const batch: BatchObject = {
      id: newBatchId(), object: 'batch', endpoint: req.body.endpoint, errors: null, input_file_id: input.id, completion_window: '24h',
      status: 'validating', output_file_id: null, error_file_id: null, created_at: created, in_progress_at: null, expires_at: created + 24 * 3600,
      finalizing_at: null, completed_at: null, failed_at: null, expired_at: null, cancelling_at: null, cancelled_at: null,
      request_counts: { total, completed: 0, failed: 0 }, metadata: req.body.metadata ?? null,
    };
    const stored = { batch, outputId: newFileId(), errorId: newFileId() };
    // As OpenAI: a file without requests fails validation, not a batch 'completed' with nothing done.
    if (total === 0) failEmpty(batch, created);
    store.putBatch(stored);
    if (total > 0) jobs.start(stored);
    return batch;
  });

  app.get<{ Params: { id: string } }>('/v1/batches/:id', async (req) => batchOrThrow(req.params.id).batch);

  app.get<{ Querystring: { limit?: string; after?: string } }>('/v1/batches', { schema: { querystring: listSchema } }, async (req) =>
    page(store.listBatches().map((b) => jobs.get(b.batch.id)!.batch), req.query.limit, req.query.after, 20));

  app.post<{ Params: { id: string } }>('/v1/batches/:id/cancel', async (req) => {
    const b = batchOrThrow(req.params.id);
    if (!['validating', 'in_progress', 'cancelling'].includes(b.batch.status) && !jobs.retrying(b.batch.id)) throw invalid(`Cannot cancel a batch with status '${b.batch.status}'.`, null, 'batch_not_cancellable');
    if (b.batch.status !== 'cancelling') jobs.cancel(b);
    return b.batch;
  });
}

/** A batch whose input file has no request lines: failed at validation, with OpenAI's error list. */
function failEmpty(batch: BatchObject, at: number): void {
  batch.status = 'failed';
  batch.failed_at = at;
  batch.errors = { object: 'list', data: [{
    code: 'empty_file', message: `The input file ${batch.input_file_id} has no requests (every line is blank); a batch needs at least one`, param: null, line: null,
  }] };
}

/** Batch states in which its files are read or written. */
const RUNNING: BatchObject['status'][] = ['validating', 'in_progress', 'finalizing', 'cancelling'];

/** One page of a list (OpenAI's cursor: the objects after the one with id `after`). */
function page<T extends { id: string }>(all: T[], limit: string | undefined, after: string | undefined, dflt: number) {
  const n = Number(limit ?? dflt);
  if (after !== undefined) {
    const at = all.findIndex((x) => x.id === after);
    all = at >= 0 ? all.slice(at + 1) : [];
  }
  const data = all.slice(0, n);
  return { object: 'list', data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: all.length > n };
}

/** Request lines of a file (blank lines are not requests). */
function countLines(file: string): number {
  // (a line at a time: read whole, a 190 MiB upload took the server from 171 to 546 MiB)
  let n = 0;
  const { rest } = eachLineSync(file, (l) => {
    if (l.trim() !== '') n++;
  });
  return n + (rest.trim() !== '' ? 1 : 0);
}
