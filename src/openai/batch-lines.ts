// Batch API lines: an input line `{"custom_id", "method": "POST", "url", "body"}` parsed and
// checked, and the output line `{"id", "custom_id", "response": {"status_code", "request_id",
// "body"}, "error"}` OpenAI writes for it. A line is named by an id made from its custom_id (or,
// for a line without a usable one, its line number), so a rerun recognises the lines it answered.
import { createHash, randomBytes } from 'node:crypto';
import type { ApiError } from './errors.js';
import { type RecordKind, unreadableLine } from '../formats/jsonl.js';
import { ENDPOINTS, type Endpoint } from './validate.js';
import { excerpt, illFormedText } from '../util/text.js';

export type BatchLine =
  | { line: number; id: string; customId: string; endpoint: Endpoint; body: unknown }
  | { line: number; id: string; customId: string | null; error: { code: string; message: string } };

/** The output line id of a custom_id (or of a line, for one without a usable custom_id). */
export function lineId(key: string): string {
  return `batch_req_${createHash('sha256').update(key).digest('hex').slice(0, 24)}`;
}

/** The key a line's id is made from: its custom_id, or (a line without a usable one, or a
 *  duplicate) `line:N`. A custom_id that begins with `line:` (or a NUL) gets a NUL in front, so
 *  none can take a numbered line's id: a line with custom_id "line:3" beside a line 3 that was
 *  not JSON was taken for answered and never ran. (Numbered lines keep the keys earlier versions
 *  wrote, so their answers in an existing output are recognised.) */
const customKey = (customId: string) => (customId.startsWith('line:') || customId.startsWith('\0') ? `\0${customId}` : customId);
const lineKey = (line: number, customId?: string) => `line:${line}${customId === undefined ? '' : `:${customId}`}`;

/** Parses one input line. `endpoint`, when given, is the only url allowed (a server's batch has
 *  one endpoint); `seen` holds the custom_ids of earlier lines, for duplicates. */
export function parseBatchLine(text: string, line: number, seen: Set<string>, endpoint?: Endpoint): BatchLine {
  const bad = (customId: string | null, code: string, message: string, key = lineKey(line)): BatchLine =>
    ({ line, id: lineId(key), customId, error: { code, message: `line ${line}: ${message}` } });
  const unreadable = unreadableLine(text);
  if (unreadable !== null) return bad(null, 'invalid_json', unreadable);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    return bad(null, 'invalid_json', `not valid JSON (${(e as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return bad(null, 'invalid_request', 'expected a JSON object');
  const o = v as Record<string, unknown>;
  if (typeof o.custom_id !== 'string' || o.custom_id === '') return bad(null, 'missing_custom_id', 'missing "custom_id" (a non-empty string)');
  // (its id is a hash of its UTF-8 bytes, where a lone surrogate is U+FFFD: "a\ud800" and
  // "a\ufffd" were one line to a rerun, which took the unanswered one for answered)
  const illFormed = illFormedText(o.custom_id);
  if (illFormed !== null) return bad(null, 'invalid_custom_id', `"custom_id" ${illFormed}`);
  const customId = o.custom_id;
  if (seen.has(customId)) return bad(customId, 'duplicate_custom_id', `duplicate custom_id "${customId}" (an earlier line has it)`, lineKey(line, customId));
  seen.add(customId);
  const unknown = Object.keys(o).filter((k) => !['custom_id', 'method', 'url', 'body'].includes(k));
  if (unknown.length > 0) return bad(customId, 'invalid_request', `unknown field ${unknown.map((k) => excerpt(k)).join(', ')} (known: custom_id, method, url, body)`, customKey(customId));
  if (o.method !== 'POST') return bad(customId, 'invalid_method', `"method" must be "POST", got ${excerpt(o.method)}`, customKey(customId));
  const allowed = endpoint ? [endpoint] : ENDPOINTS;
  if (!allowed.includes(o.url as Endpoint)) {
    return bad(customId, 'invalid_url', `"url" must be ${allowed.map((u) => `"${u}"`).join(' or ')}${endpoint ? ' (the batch\'s endpoint)' : ''}, got ${excerpt(o.url)}`, customKey(customId));
  }
  if (typeof o.body !== 'object' || o.body === null || Array.isArray(o.body)) return bad(customId, 'invalid_body', '"body" must be a JSON object', customKey(customId));
  return { line, id: lineId(customKey(customId)), customId, endpoint: o.url as Endpoint, body: o.body };
}

const requestId = () => `req_${randomBytes(16).toString('hex')}`;

/** A line answered by the endpoint: 200 with its body, or the status and error body of an ApiError. */
export function responseLine(id: string, customId: string, status: number, body: unknown) {
  return { id, custom_id: customId, response: { status_code: status, request_id: requestId(), body }, error: null };
}

export function apiErrorLine(id: string, customId: string, e: ApiError) {
  return responseLine(id, customId, e.status, e.body);
}

/** A line that never reached the endpoint (not JSON, no custom_id, wrong url or method). */
export function lineErrorLine(l: Extract<BatchLine, { error: unknown }>) {
  return { id: l.id, custom_id: l.customId, response: null, error: l.error };
}

/** Recognises an output line (for ResultWriter): every line with an id and a custom_id is answered. */
export function batchRecord(line: string): RecordKind | null {
  try {
    const o = JSON.parse(line) as Record<string, unknown>;
    if (typeof o !== 'object' || o === null || typeof o.id !== 'string' || !('custom_id' in o) || !('response' in o)) return null;
    const status = (o.response as { status_code?: unknown } | null)?.status_code;
    return { id: o.id, ok: true, failed: status !== 200 };
  } catch {
    return null;
  }
}
