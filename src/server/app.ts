// The OpenAI-compatible HTTP server (Fastify): every body validated by its JSON schema, every error
// in OpenAI's format, the API key (if any) checked in constant time, a body-size limit, a budget
// for the bytes of the bodies in flight, and a bound on the sequences of the interactive requests
// in flight (429 with Retry-After beyond either).
import { isUtf8 } from 'node:buffer';
import { createHash, timingSafeEqual } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { type Readable, Transform } from 'node:stream';
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify';
import multipart from '@fastify/multipart';
import { ApiError } from '../openai/errors.js';
import { MAX_LINE_CONTAINERS, containersPast, firstBadSequence } from '../formats/jsonl.js';
import { formatSize } from '../tensor/tiers/size.js';
import { MAX_TIMER_MS } from '../util/timers.js';
import type { Engine } from '../openai/complete.js';
import { AJV_OPTIONS } from '../openai/schemas.js';
import { validationError } from '../openai/validate.js';
import { BatchJobs } from './batch-jobs.js';
import { Metrics } from './metrics.js';
import { addBatchRoutes } from './batch-routes.js';
import { addCompletionRoutes } from './routes.js';
import { Store } from './store.js';

export interface ServerOptions {
  engine: Engine;
  /** Where files and batch jobs are kept: a directory, or its Store already opened (the CLI
   *  opens it before loading the model, so that a directory in use is refused at once). */
  dataDir: string | Store;
  /** Every request but /health and /metrics must carry `Authorization: Bearer <apiKey>` (none when absent). */
  apiKey?: string;
  /** Sequences of interactive requests in flight (waiting or running; a request counts its
   *  prompts × n) beyond which new requests get 429; one that alone asks for more gets 400. */
  maxQueue: number;
  /** Largest JSON body, in bytes (413 beyond). */
  bodyLimit: number;
  /** Bytes of the JSON bodies in flight (being received, parsed, or behind a request running),
   *  beyond which new ones get 429: at least bodyLimit. Absent: no budget. */
  bodyBudget?: number;
  /** Largest uploaded file, in bytes (413 beyond). */
  fileLimit: number;
  /** Lines each batch job keeps submitted. */
  batchConcurrency: number;
  /** Milliseconds before a batch job the disk failed is tried again (doubling at each failure in
   *  a row, to 16 times this); 30 s when absent. */
  batchRetryMs?: number;
  /** Milliseconds a client has to send its whole request, headers and body, before the server
   *  answers 408 and closes the connection (the bytes its body held in the budget come back);
   *  300 s when absent (Node's own default, which Fastify turns off; a 200 MB upload at 0.7
   *  MB/s). Without it a client that stalled midway held its body's budget for good: two stalled
   *  4 MiB bodies got every other request 429. */
  requestTimeoutMs?: number;
  /** Milliseconds a streamed response may stay silent: after that long without a chunk it sends
   *  an SSE comment (`: keep-alive`), which clients ignore, and its headers first if none were
   *  sent yet. A stream's headers otherwise wait for its first chunk, so that a request refused
   *  before it gets its status; behind a long queue that was minutes, and clients gave up
   *  (Node's fetch waits 300 s for headers, proxies often 60 s for any byte). 15 s when absent;
   *  0 turns it off. */
  streamHeartbeatMs?: number;
}

export interface Server {
  app: FastifyInstance;
  jobs: BatchJobs;
  metrics: Metrics;
  /** Sequences (prompts × n) of the interactive requests in flight. */
  readonly inFlight: { count: number };
  /** Bytes of the bodies in flight, as counted against bodyBudget. */
  readonly bodies: { bytes: number };
  /** Counts a request whose client went away (499), once. */
  clientGone(req: object): void;
  /** Stops taking requests, writes the batch lines in flight, and leaves the data directory. */
  close(): Promise<void>;
}

export async function buildServer(o: ServerOptions): Promise<Server> {
  // (an empty key let in only requests without one: every OpenAI SDK sends one, so none passed)
  if (o.apiKey === '') throw new RangeError('apiKey is empty: give the key requests must send, or leave apiKey out for a server without one');
  if (o.bodyBudget !== undefined && !(o.bodyBudget >= o.bodyLimit)) {
    throw new RangeError(`bodyBudget (${o.bodyBudget}) must be at least bodyLimit (${o.bodyLimit}): a body within the limit would never be taken`);
  }
  // (a timer's delay past 2^31 - 1 ms is taken as 1 ms: every stream would open at once)
  const beat = o.streamHeartbeatMs;
  if (beat !== undefined && !(Number.isInteger(beat) && beat >= 0 && beat <= MAX_TIMER_MS)) {
    throw new RangeError(`streamHeartbeatMs must be an integer from 0 (off) to ${MAX_TIMER_MS}, got ${beat}`);
  }
  // (return503OnClosing off: a request arriving while the server closes gets OpenAI's error shape
  // from the hook below, not Fastify's own 503 body)
  const requestTimeout = o.requestTimeoutMs ?? 300_000;
  const app = Fastify({
    bodyLimit: o.bodyLimit, ajv: { customOptions: AJV_OPTIONS }, logger: false, forceCloseConnections: 'idle', return503OnClosing: false,
    // (Node checks the time requests take every connectionsCheckingInterval, 30 s by default,
    // and takes the larger of the headers' and the request's timeouts for the request's)
    requestTimeout,
    http: { headersTimeout: Math.min(60_000, requestTimeout), connectionsCheckingInterval: Math.max(10, Math.min(30_000, Math.floor(requestTimeout / 4))) },
  });
  const store = o.dataDir instanceof Store ? o.dataDir : new Store(o.dataDir);
  const jobs = new BatchJobs(store, o.engine, o.batchConcurrency, o.batchRetryMs);
  const metrics = new Metrics(o.engine.scheduler);
  const gone = new WeakSet<object>();
  const server: Server = {
    app, jobs, metrics, inFlight: { count: 0 }, bodies: { bytes: 0 },
    clientGone: (req) => {
      if (gone.has(req)) return;
      gone.add(req);
      metrics.countResponse(499);
    },
    close: async () => {
      await Promise.all([app.close(), jobs.close()]);
      store.close();
    },
  };
  await app.register(multipart, { limits: { fileSize: o.fileLimit, files: 1, fields: 8 } });
  // JSON bodies parsed here rather than by Fastify, whose errors named neither the place of a
  // syntax error nor a refused "__proto__" key ("Body is not valid JSON" for both); and no
  // text/plain parser, which let a JSON body sent as text/plain through as a string ("'body' must
  // be object") where the content type was at fault.
  app.removeContentTypeParser(['application/json', 'text/plain']);
  // Read as bytes: decoded by Fastify, bytes that are not UTF-8 became U+FFFD, and a prompt of
  // \xff\xfe ran as two of them (JSON text is UTF-8, RFC 8259; a JSONL line's are refused too).
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, bytes, done) => {
    try {
      // (isUtf8 is native; the offset, for the message, is looked for only in a body that has one)
      if (!isUtf8(bytes as Buffer)) throw new SyntaxError(`it is not valid UTF-8 (byte offset ${firstBadSequence(bytes as Buffer)} of the body)`);
      // (the body budget counts 6 bytes of RAM a byte; `{}` is 3 bytes and ~60 parsed: a 4 MiB
      // body of them, as JSONL lines are, is refused before it is parsed)
      if (containersPast(bytes as Buffer, MAX_LINE_CONTAINERS)) {
        throw new SyntaxError(`it holds more than ${MAX_LINE_CONTAINERS} objects and arrays, more than a request may (each takes tens of bytes of RAM when parsed)`);
      }
      const body = (bytes as Buffer).toString('utf8');
      // An empty body is no body: OpenAI's Python SDK sends its bodyless POSTs and DELETEs (a
      // batch's cancel, a file's delete) as application/json with none, which were refused; a
      // route that needs one says so as for a request without a content type.
      if (body.trim() === '') return done(null, undefined);
      // (a "__proto__" key would set the prototype of an object that later code copies with
      // Object.assign or spreads: refused, as Fastify's parser does)
      done(null, JSON.parse(body, (key, value: unknown) => {
        if (key === '__proto__') throw new SyntaxError('the key "__proto__" is not allowed');
        return value;
      }));
    } catch (e) {
      done(new ApiError(400, `The request body is not valid JSON: ${(e as Error).message}`, 'invalid_request_error', null, 'invalid_json') as never, undefined);
    }
  });

  // By the route Fastify matched, not the raw URL: it routes on the decoded path, so a test of
  // req.url let /%76%31/models past the key. Unmatched URLs need the key too (401 before 404).
  let closing = false;
  // forceCloseConnections 'idle' closes only the connections idle when closing starts: a
  // keep-alive connection whose request was still running (most SDK clients keep theirs) stayed
  // open after its answer until the keep-alive timeout, and close() waited 72 s for it, holding
  // the data directory's lock. While closing, connections are closed as they go idle.
  let closeIdle: NodeJS.Timeout | undefined;
  app.addHook('preClose', async () => {
    closing = true;
    closeIdle = setInterval(() => app.server.closeIdleConnections(), 50);
  });
  app.addHook('onClose', async () => clearInterval(closeIdle));
  app.addHook('onRequest', async (req, reply) => {
    // (a gzip body was parsed as it came: "not valid UTF-8 (byte offset 1 of the body)")
    const encoding = req.headers['content-encoding']?.trim().toLowerCase();
    if (encoding && encoding !== 'identity') {
      throw new ApiError(415, `Unsupported Content-Encoding '${encoding}': send the body uncompressed`, 'invalid_request_error', null, 'unsupported_media_type');
    }
    if (closing) {
      reply.header('connection', 'close');
      throw new ApiError(503, 'the server is shutting down; retry on another instance or after it restarts', 'server_error', null, 'server_shutting_down');
    }
    if (o.apiKey !== undefined && !PUBLIC_ROUTES.has(req.routeOptions.url ?? '') && !keyMatches(req.headers.authorization, o.apiKey)) {
      throw new ApiError(401, 'Incorrect API key provided (send it as "Authorization: Bearer KEY")', 'authentication_error', null, 'invalid_api_key');
    }
  });
  if (o.bodyBudget !== undefined) holdBodiesTo(app, o.bodyBudget, o.bodyLimit, server.bodies);
  // (an empty body parses as none: see the JSON parser above)
  app.addHook('preValidation', async (req) => {
    if (req.body === undefined && req.routeOptions.schema?.body) {
      throw new ApiError(400, `The request body is empty: ${req.method} ${req.routeOptions.url} takes a JSON object.`, 'invalid_request_error', null, 'invalid_json');
    }
  });
  // A client gone before its answer counts once as 499 (nginx's "client closed request"): by the
  // route that saw its request cancelled (Fastify calls no hook for it), else by onRequestAbort.
  app.addHook('onRequestAbort', async (req) => server.clientGone(req.raw));
  app.addHook('onResponse', async (req, reply) => {
    if (!gone.has(req.raw)) metrics.countResponse(reply.statusCode);
  });
  app.setErrorHandler((err: FastifyError, req, reply) => {
    const e = asApiError(err, req.headers['content-type']);
    if (e.status === 429) reply.header('retry-after', '1');
    reply.code(e.status).send(e.body);
  });
  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send(new ApiError(404, `Unknown request URL: ${req.method} ${req.url.split('?')[0]}`, 'invalid_request_error', null, 'unknown_url').body);
  });

  app.get('/health', async () => ({ status: 'ok' }));
  app.get('/metrics', async (_req, reply) => reply.type('text/plain; version=0.0.4').send(metrics.text()));
  addCompletionRoutes(app, o, server);
  addBatchRoutes(app, store, jobs, o);
  app.addHook('onClose', async () => metrics.close());
  return server;
}

/** Counts each request body against the budget from before it is read (one sent chunked: as its
 *  bytes arrive) until its response is sent or its client goes away; a body that would take
 *  `bodies` past the budget is answered 429 unread (one sent chunked: once it would). Uploads
 *  (multipart) are not counted: they go to disk as they come. */
function holdBodiesTo(app: FastifyInstance, budget: number, bodyLimit: number, bodies: { bytes: number }): void {
  app.addHook('preParsing', async (req, reply, payload) => {
    const length = Number(req.headers['content-length']);
    const chunked = req.headers['transfer-encoding'] !== undefined;
    // No body; one over the limit, which Fastify answers 413 (a 429 would have it sent again);
    // or an upload.
    if (!(length > 0) && !chunked) return payload;
    if (length > bodyLimit || req.headers['content-type']?.startsWith('multipart/')) return payload;
    // (a chunked body's length is known only once it is read: counted as it comes, rather than
    // as the most it may be, which let only two chunked requests in flight whatever their size)
    if (!(length > 0)) return countedAsReceived(payload, reply.raw, budget, bodyLimit, bodies);
    if (bodies.bytes + length > budget) throw overBudget(bodies.bytes, length, budget, '');
    bodies.bytes += length;
    // (the response's 'close' comes once, when it is sent or when the client goes away)
    reply.raw.once('close', () => (bodies.bytes -= length));
    return payload;
  });
}

/** `payload` (a body sent chunked) passed on as it comes, each chunk counted against the budget
 *  before it is: the first that would pass it ends the body with 429 (the rest is read and
 *  dropped). Its bytes are held until `res` closes, as a body with a Content-Length. */
function countedAsReceived(payload: Readable, res: ServerResponse, budget: number, bodyLimit: number, bodies: { bytes: number }): Readable {
  let held = 0;
  let closed = false;
  res.once('close', () => {
    closed = true;
    bodies.bytes -= held;
  });
  const counted = Object.assign(new Transform({
    transform(chunk: Buffer, _encoding, next) {
      counted.receivedEncodedLength += chunk.length;
      if (closed) return next(null, chunk);
      // Past --body-limit: passed on uncounted, for Fastify's 413 (a 429 would have it sent again).
      if (held + chunk.length > bodyLimit) {
        dropRest();
        return next(null, chunk);
      }
      if (bodies.bytes + chunk.length > budget) {
        dropRest();
        return next(overBudget(bodies.bytes - held, held + chunk.length, budget, ' so far, sent chunked'));
      }
      held += chunk.length;
      bodies.bytes += chunk.length;
      next(null, chunk);
    },
  }), { receivedEncodedLength: 0 });
  // The rest of a refused body is read and dropped, not left unread: the answer closes the
  // connection, and bytes still unread there would reset it (the client could lose the answer).
  const dropRest = () => {
    payload.unpipe(counted);
    payload.resume();
  };
  // (pipe() passes on no error: a client gone in the middle of its body ends the parse as before)
  payload.on('error', (e) => counted.destroy(e));
  return payload.pipe(counted);
}

function overBudget(inFlight: number, bytes: number, budget: number, which: string): ApiError {
  return new ApiError(429, `request bodies in flight (${formatSize(inFlight)}) and this one (${formatSize(bytes)}${which}) would exceed the server's ` +
    `budget for them (${formatSize(budget)}; tierlm serve: twice --body-limit); retry later`, 'rate_limit_error', null, 'rate_limit_exceeded');
}

/** Routes anyone may call when the server has a key: liveness and Prometheus' scrape. */
const PUBLIC_ROUTES = new Set(['/health', '/metrics']);

/** The key compared in constant time: both sides hashed first, so neither length nor content leaks. */
function keyMatches(header: string | undefined, key: string): boolean {
  // (the scheme's name is case-insensitive, RFC 7235: `bearer KEY` is the same key)
  const given = /^Bearer (.+)$/i.exec(header ?? '')?.[1] ?? '';
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(given), digest(key));
}

/** Fastify's own errors (schema, body size, bad JSON) in OpenAI's format. */
function asApiError(err: FastifyError, contentType?: string): ApiError {
  if (err instanceof ApiError) return err;
  if (err.validation) return validationError(err.validation as never);
  const status = err.statusCode ?? 500;
  if (status === 413) return new ApiError(413, `request too large: ${err.message}`, 'invalid_request_error', null, 'request_too_large');
  if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
    return new ApiError(415, `Unsupported Content-Type${contentType ? ` '${contentType}'` : ' (none given)'}: send the body as JSON with ` +
      'Content-Type: application/json (POST /v1/files: multipart/form-data)', 'invalid_request_error', null, 'unsupported_media_type');
  }
  if (status >= 400 && status < 500) return new ApiError(status, err.message, 'invalid_request_error', null, err.code ?? null);
  if (err.code === 'ENOSPC' || err.code === 'EDQUOT' || err.code === 'EROFS') {
    return new ApiError(507, `the server cannot store this: ${err.message}`, 'server_error', null, 'insufficient_storage');
  }
  return new ApiError(500, `internal error: ${err.message}`, 'server_error');
}
