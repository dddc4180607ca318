// Body validation shared by the server and `tierlm batch`: the schemas of schemas.ts, and Ajv's
// errors turned into one OpenAI error that names the field at fault.
import { Ajv, type ErrorObject } from 'ajv';
import { AJV_OPTIONS, FIELD_FORMS, chatBodySchema, completionBodySchema } from './schemas.js';
import { ApiError, invalid } from './errors.js';
import { illFormedField, shortName } from '../util/text.js';

export type Endpoint = '/v1/completions' | '/v1/chat/completions';
export const ENDPOINTS: readonly Endpoint[] = ['/v1/completions', '/v1/chat/completions'];

export const bodySchemas: Record<Endpoint, object> = {
  '/v1/completions': completionBodySchema,
  '/v1/chat/completions': chatBodySchema,
};

let validators: Map<Endpoint, ReturnType<Ajv['compile']>> | null = null;

/** Throws a 400 ApiError naming the field when `body` does not fit the endpoint's schema. */
export function checkBody(endpoint: Endpoint, body: unknown): void {
  validators ??= new Map(ENDPOINTS.map((e) => [e, new Ajv(AJV_OPTIONS).compile(bodySchemas[e])]));
  const v = validators.get(endpoint)!;
  if (!v(body)) throw validationError(v.errors ?? []);
}

/** Throws a 400 ApiError naming the field (`prompt`, `messages[0].content`, `stop[1]`) when a
 *  string of `body` is not well-formed text (a lone surrogate from a "\ud83d" escape): it ran as
 *  U+FFFD, and a stop sequence of one cut a surrogate pair in the text it ended. */
export function checkText(body: unknown): void {
  const bad = illFormedField(body);
  if (bad) throw invalid(`Invalid value for '${bad.field || 'body'}': ${bad.why}.`, bad.field || null, 'invalid_value');
}

/** One error for Ajv's list: the outermost failing field, said in OpenAI's words (`messages[0].role`). */
export function validationError(errors: readonly ErrorObject[]): ApiError {
  if (errors.length === 0) return invalid('invalid request body');
  // A value matching none of a field's forms yields an error per form, then the anyOf error for the
  // field itself: a field with several forms is said by what it must be; a nullable one by the
  // error of its one non-null form (the first listed); a value of one form's type with an item at
  // fault (a content part) by that item's error.
  const outer = errors.find((x) => x.keyword === 'anyOf' && !errors.some((y) => y.keyword === 'anyOf' && y.instancePath.length < x.instancePath.length));
  const inner = outer && onlyFormInside(errors, outer);
  const named = outer && !inner && FIELD_FORMS[lastName(outer.instancePath)] ? outer : undefined;
  const e = inner || (named ?? errors[0]!);
  const fieldOf = (instancePath: string) => instancePath.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((s, p) => (/^\d+$/.test(p) ? `${s}[${p}]` : s ? `${s}.${p}` : p), '');
  const field = fieldOf(e.instancePath);
  if (e.keyword === 'additionalProperty' || e.keyword === 'additionalProperties') {
    const extra = (e.params as { additionalProperty: string }).additionalProperty;
    // (cut: a line naming a 1 MB key whole kept it in each error line a batch holds)
    const name = shortName(field ? `${field}.${extra}` : extra);
    return invalid(`Unrecognized request argument supplied: ${name} (not supported by tierlm)`, name, 'unsupported_parameter');
  }
  if (e.keyword === 'required') {
    const missing = (e.params as { missingProperty: string }).missingProperty;
    const name = field ? `${field}.${missing}` : missing;
    return invalid(`Missing required parameter: '${name}'.`, name, 'missing_required_parameter');
  }
  // A list of a field's form but too long (a `prompt` of 3000 prompts): said as such, not as a
  // value of none of its forms (nor by an item of another form, a token id's, at fault).
  const tooLong = outer && FIELD_FORMS[lastName(outer.instancePath)] && errors.find((x) => x.keyword === 'maxItems' && x.instancePath === outer.instancePath);
  if (tooLong) {
    const limit = (tooLong.params as { limit: number }).limit;
    const name = fieldOf(tooLong.instancePath);
    return invalid(`Invalid value for '${name}': ${name === 'prompt' ? `lists more than ${limit} prompts` : `has more than ${limit} items`}; ` +
      `at most ${limit} may be sent in one request.`, name, 'invalid_value');
  }
  const what = named ? `must be ${FIELD_FORMS[lastName(e.instancePath)]}` : e.keyword === 'enum' ? `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}` : e.message ?? 'is invalid';
  return invalid(`Invalid value for '${field || 'body'}': ${what}${e.keyword === 'const' ? ` (${JSON.stringify((e.params as { allowedValue: unknown }).allowedValue)})` : ''}.`, field || null, 'invalid_value');
}

/**
 * The first error inside the value of a field `outer` (an anyOf) where all such errors come from
 * one of its forms: the value has that form's type (an array, where the others are a string),
 * so the error names the item at fault (`messages[0].content[1].text`, not the whole content).
 * Undefined where no form's errors are inside the value, or several forms' are (a `prompt` array
 * may be strings or token ids: which item is wrong depends on which was meant).
 */
function onlyFormInside(errors: readonly ErrorObject[], outer: ErrorObject): ErrorObject | undefined {
  const inside = errors.filter((x) => x.instancePath.startsWith(`${outer.instancePath}/`) && x.schemaPath.startsWith(`${outer.schemaPath}/`));
  const forms = new Set(inside.map((x) => x.schemaPath.slice(outer.schemaPath.length + 1).split('/')[0]));
  return forms.size === 1 ? inside[0] : undefined;
}

function lastName(instancePath: string): string {
  return instancePath.split('/').filter((p) => p !== '' && !/^\d+$/.test(p)).pop() ?? '';
}
