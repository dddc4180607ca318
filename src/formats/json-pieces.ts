// JSON text written in pieces: the same characters as JSON.stringify(value), never held whole. A
// result line with 20 alternatives for each of thousands of tokens (or 128 samples of them) is tens
// of MB of text; JSON.stringify builds it as one string (and its writer a Buffer of it beside
// that), which under --ram is memory the plan cannot count.

/** Containers of at most this many nodes are handed to JSON.stringify whole (fast, and small). */
const SMALL_NODES = 4096;

/** Characters a piece holds by default. 64 KiB keeps a piece (and the Buffer a writer makes of it)
 *  below V8's large-object size (128 KiB), so it dies young: pieces of 1 MiB lived in the
 *  large-object space until a full collection (Node 24: 148 MiB against 144 for the 22.7 MB line
 *  of memory-limit's test, 132-135 with a collection after each piece; 125-133 at 64 KiB). */
const PIECE_CHARS = 64 * 1024;

/** Calls `emit` with consecutive pieces of JSON.stringify(value) (each about `pieceChars` long or
 *  less, the last one shorter), in order; nothing when JSON.stringify gives undefined. Plain arrays
 *  and objects are walked; any other value (a Date, a typed array, a class instance) is a leaf,
 *  serialized by JSON.stringify as it would be in place (toJSON included). */
export function stringifyInPieces(value: unknown, emit: (piece: string) => void, pieceChars = PIECE_CHARS): void {
  let parts: string[] = [];
  let size = 0;
  const put = (s: string): void => {
    parts.push(s);
    size += s.length;
    if (size >= pieceChars) {
      emit(parts.join(''));
      parts = [];
      size = 0;
    }
  };
  // v after its toJSON, called once with its key, as JSON.stringify does.
  const resolve = (v: unknown, key: string): unknown => (hasToJSON(v) ? v.toJSON(key) : v);
  // The text of a resolved value; undefined where JSON.stringify leaves it out of an object (undefined,
  // a function, a symbol); null for a container to walk (too big to stringify at once). A value
  // that toJSON returned is not given to its own toJSON again: JSON.stringify(x) would call it.
  const text = (x: unknown): string | undefined | null => {
    if (hasToJSON(x)) return walkable(x) ? null : JSON.stringify(ownFields(x));
    return !walkable(x) || small(x) ? JSON.stringify(x) : null;
  };
  const container = (v: unknown[] | Record<string, unknown>): void => {
    if (Array.isArray(v)) {
      put('[');
      for (let i = 0; i < v.length; i++) {
        if (i > 0) put(',');
        const x = resolve(v[i], String(i));
        const t = text(x);
        if (t === null) container(x as unknown[] | Record<string, unknown>);
        else put(t ?? 'null');
      }
      put(']');
      return;
    }
    put('{');
    let first = true;
    for (const k of Object.keys(v)) {
      const x = resolve(v[k], k);
      const t = text(x);
      if (t === undefined) continue;
      put(`${first ? '' : ','}${JSON.stringify(k)}:`);
      first = false;
      if (t === null) container(x as unknown[] | Record<string, unknown>);
      else put(t);
    }
    put('}');
  };
  const root = resolve(value, '');
  const t = text(root);
  if (t === null) container(root as unknown[] | Record<string, unknown>);
  else if (t !== undefined) put(t);
  if (parts.length > 0) emit(parts.join(''));
}

function hasToJSON(v: unknown): v is { toJSON: (key: string) => unknown } {
  return v !== null && typeof v === 'object' && typeof (v as { toJSON?: unknown }).toJSON === 'function';
}

/** An object's own enumerable fields, as JSON.stringify writes an object (a toJSON among them is a
 *  function, left out). */
function ownFields(v: object): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const k of Object.keys(v)) o[k] = (v as Record<string, unknown>)[k];
  return o;
}

function walkable(v: unknown): v is unknown[] | Record<string, unknown> {
  if (v === null || typeof v !== 'object') return false;
  if (Array.isArray(v)) return true;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

/** Whether v has at most SMALL_NODES nodes (counting stops there). */
function small(v: unknown): boolean {
  let budget = SMALL_NODES;
  const count = (x: unknown): boolean => {
    if (--budget < 0) return false;
    if (!walkable(x)) return true;
    for (const c of Array.isArray(x) ? x : Object.values(x)) if (!count(c)) return false;
    return true;
  };
  return count(v);
}
