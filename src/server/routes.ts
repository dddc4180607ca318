// GET /v1/models, POST /v1/completions and POST /v1/chat/completions (whole, or streamed as
// server-sent events ending in `data: [DONE]`). A client that goes away cancels its request.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ApiError, notFound } from '../openai/errors.js';
import { Cancelled, check, complete } from '../openai/complete.js';
import { MAX_SEQUENCES } from '../openai/schemas.js';
import { refuseSequencesPast, sequencesOf } from '../openai/translate.js';
import { type Endpoint, bodySchemas } from '../openai/validate.js';
import type { Server, ServerOptions } from './app.js';

/** ServerOptions.streamHeartbeatMs's default. */
export const STREAM_HEARTBEAT_MS = 15_000;

export function addCompletionRoutes(app: FastifyInstance, o: ServerOptions, server: Server): void {
  const m = o.engine.model;
  const modelObject = { id: m.id, object: 'model', created: m.created, owned_by: 'tierlm' };
  app.get('/v1/models', async () => ({ object: 'list', data: [modelObject] }));
  app.get<{ Params: { model: string } }>('/v1/models/:model', async (req) => {
    if (req.params.model !== m.id) throw notFound(`The model '${req.params.model}' does not exist`, 'model', 'model_not_found');
    return modelObject;
  });
  for (const endpoint of ['/v1/completions', '/v1/chat/completions'] as const) {
    app.post(endpoint, { schema: { body: bodySchemas[endpoint] } }, (req, reply) => handle(endpoint, req, reply, o, server));
  }
}

async function handle(endpoint: Endpoint, req: FastifyRequest, reply: FastifyReply, o: ServerOptions, server: Server): Promise<unknown> {
  // --max-queue counts sequences (each body's prompts × n), before any prompt is encoded: one
  // small body of 60,000 prompts × n 8 counted as one request, and queued 480,000 sequences.
  const body = req.body as Record<string, unknown>;
  refuseSequencesPast(endpoint, body, MAX_SEQUENCES, `one request may ask for at most ${MAX_SEQUENCES}`);
  refuseSequencesPast(endpoint, body, o.maxQueue, `this server runs at most ${o.maxQueue} at once (--max-queue)`);
  const sequences = sequencesOf(endpoint, body);
  if (server.inFlight.count + sequences > o.maxQueue) {
    throw new ApiError(429, `too many sequences in flight (${server.inFlight.count} of ${o.maxQueue}, --max-queue; this request's prompts × n: ` +
      `${sequences}); retry later`, 'rate_limit_error', null, 'rate_limit_exceeded');
  }
  // The response's 'close' comes when it is sent or when the client goes away; only the second aborts.
  const abort = new AbortController();
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) abort.abort();
  });
  // Held from here: the prompts being encoded count too.
  server.inFlight.count += sequences;
  try {
    const p = await check(o.engine, endpoint, body, true);
    // The body is not needed once prepared: let it be collected while the request runs (a long
    // field the request does not use, `user` say, was held until the answer was sent).
    req.body = undefined;
    if (!p.stream) {
      // W3C Server-Timing: the request's time to its first token and in all, as the engine saw
      // them (from here, the body parsed and checked), without the network or the client.
      const received = performance.now();
      let firstAt = NaN;
      const body = await complete(o.engine, endpoint, null, { priority: 'interactive', signal: abort.signal, prepared: p, onFirstToken: () => (firstAt = performance.now()) });
      const ms = (t: number) => (t - received).toFixed(1);
      reply.header('server-timing', `ttft;dur=${ms(firstAt)};desc="time to first token", total;dur=${ms(performance.now())}`);
      return body;
    }
    // The stream's headers go with its first chunk: a request refused before it (too large for the
    // memory limits, say) is answered with its status, as when not streamed, not a 200 stream.
    // Unless it waits longer than the heartbeat: then the headers go, and a comment after every
    // heartbeat's silence, so that clients and proxies do not give up on a queued request; a
    // refusal after that is an error event in the stream.
    const raw = reply.raw;
    let open = false;
    const start = () => {
      if (open) return;
      open = true;
      reply.hijack();
      raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    };
    const heartbeatMs = o.streamHeartbeatMs ?? STREAM_HEARTBEAT_MS;
    const heartbeat = heartbeatMs > 0 ? setTimeout(function beat() {
      if (raw.destroyed) return;
      start();
      raw.write(': keep-alive\n\n');
      heartbeat!.refresh();
    }, heartbeatMs) : null;
    const send = (data: unknown) => {
      start();
      heartbeat?.refresh();
      if (!raw.destroyed) raw.write(`data: ${JSON.stringify(data)}\n\n`);
    };
    try {
      await complete(o.engine, endpoint, null, { priority: 'interactive', signal: abort.signal, prepared: p, onChunk: send });
      start();
      if (!raw.destroyed) raw.write('data: [DONE]\n\n');
    } catch (e) {
      if (!open) throw e;
      // Headers are sent: an error can only be told as an event, before the stream's end.
      if (e instanceof Cancelled) server.clientGone(req.raw);
      else {
        const error = e instanceof ApiError ? e : new ApiError(500, `internal error: ${(e as Error).message}`, 'server_error');
        server.metrics.countStreamError(error.status);
        send(error.body);
      }
      if (!raw.destroyed) raw.write('data: [DONE]\n\n');
    } finally {
      if (heartbeat) clearTimeout(heartbeat);
    }
    raw.end();
    return reply;
  } catch (e) {
    if (e instanceof Cancelled) {
      server.clientGone(req.raw);
      return reply.code(499).send(new ApiError(499, 'the client closed the request', 'invalid_request_error', null, 'cancelled').body);
    }
    throw e;
  } finally {
    server.inFlight.count -= sequences;
  }
}
