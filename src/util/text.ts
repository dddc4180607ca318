// Well-formed text: a string a request gives (a prompt, a message, a stop sequence) must be one
// UTF-8 can carry. JSON's "\ud83d" escape makes a lone surrogate, which no character is: the
// tokenizer encoded it as U+FFFD and ran it without a word, and a stop "\udfe7" cut a surrogate
// pair, the text then ending in half of one. The server, the Batch API lines, the JSONL prompts of
// `tierlm generate` and the library's requests all refuse such text through here.

/** A surrogate without its other half: a high one not followed by a low one, or a low one not
 *  after a high one (no `u` flag: the pattern sees UTF-16 code units). */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Why `text` is not well-formed Unicode ("holds a lone surrogate U+D83D at character 5, ..."),
 *  or null when it is. (String.prototype.isWellFormed says only whether; this says where.) */
export function illFormedText(text: string): string | null {
  const m = LONE_SURROGATE.exec(text);
  if (!m) return null;
  const unit = m[0].charCodeAt(0).toString(16).toUpperCase();
  return `holds a lone surrogate U+${unit} at character ${m.index} (an unpaired "\\u${unit.toLowerCase()}" escape): ` +
    'it is no character, and UTF-8 cannot carry it';
}

/** The first string in `value` (a parsed JSON body or line, walked in order) that is not
 *  well-formed, named as a field path (`messages[0].content`, `stop[1]`; `name` for the value
 *  itself), with why; or null when every string is. Keys are not checked. */
export function illFormedField(value: unknown, name = ''): { field: string; why: string } | null {
  if (typeof value === 'string') {
    const why = illFormedText(value);
    return why === null ? null : { field: name, why };
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      // (token-id lists are long: a number is passed over without a call)
      if (typeof value[i] !== 'string' && (typeof value[i] !== 'object' || value[i] === null)) continue;
      const bad = illFormedField(value[i], `${name}[${i}]`);
      if (bad) return bad;
    }
    return null;
  }
  if (typeof value === 'object' && value !== null) {
    for (const [key, v] of Object.entries(value)) {
      // (a key is named at most EXCERPT_CHARS long: a path holding a 1.4 MB key whole was kept by
      // each of train's skipped-line messages, 500 MiB against a 152 MiB limit)
      const k = shortName(key);
      const bad = illFormedField(v, name === '' ? k : `${name}.${k}`);
      if (bad) return bad;
    }
  }
  return null;
}

/** Characters of a value a message echoes at most. A job's error lines are held (kept in input
 *  order behind a long request) and written whole: 600 lines naming an unknown field of 400,000
 *  characters took a `generate --ram 48MiB` run to 356 MiB. */
export const EXCERPT_CHARS = 100;

/** `value` as JSON (a number as JavaScript reads it: 1e400 is Infinity, not null), cut to
 *  EXCERPT_CHARS with what was cut said, in a string of its own (detached). */
export function excerpt(value: unknown): string {
  const s = typeof value === 'number' ? String(value) : JSON.stringify(value) ?? String(value);
  return shortName(s);
}

/** A name (a key, a field path) as a message gives it: at most EXCERPT_CHARS characters, cut
 *  with its length said, in a string of its own. */
export function shortName(name: string): string {
  return name.length <= EXCERPT_CHARS ? name : detached(`${name.slice(0, EXCERPT_CHARS)}… (${name.length} characters)`);
}

/** A copy of `s` that holds none of the string it was cut from. V8 keeps a slice of 13 or more
 *  characters as a view of its parent: an excerpt of 100 characters held the whole 400 KB value it
 *  was cut from, and 600 held error lines (waiting behind a long request) took a `generate --ram
 *  48MiB` run to 360 MB against the 176 it allows. (UTF-16 both ways: every code unit kept.) */
export function detached(s: string): string {
  return Buffer.from(s, 'utf16le').toString('utf16le');
}
