// JSON schemas of the request bodies tierlm accepts, in OpenAI's names. The server's routes
// validate with them (Fastify's Ajv) and `tierlm batch` validates each line's body with the same
// schemas and the same Ajv options (validate.ts), so a body is accepted or refused alike by both.
// Fields OpenAI has that tierlm cannot honour are refused by name (additionalProperties: false)
// rather than ignored; `top_k`, `min_p` and `repetition_penalty` are vLLM's extensions.

const nullable = (schema: Record<string, unknown>) => ({ anyOf: [schema, { type: 'null' }] });

const sampling = {
  model: { type: 'string', minLength: 1 },
  max_tokens: nullable({ type: 'integer', minimum: 1 }),
  temperature: nullable({ type: 'number', minimum: 0, maximum: 2 }),
  top_p: nullable({ type: 'number', exclusiveMinimum: 0, maximum: 1 }),
  n: nullable({ type: 'integer', minimum: 1, maximum: 8 }),
  stop: nullable({ anyOf: [{ type: 'string', minLength: 1 }, { type: 'array', items: { type: 'string', minLength: 1 }, maxItems: 4 }] }),
  seed: nullable({ type: 'integer', minimum: 0, maximum: 4294967295 }),
  presence_penalty: nullable({ type: 'number', minimum: -2, maximum: 2 }),
  frequency_penalty: nullable({ type: 'number', minimum: -2, maximum: 2 }),
  top_k: nullable({ type: 'integer', minimum: 0 }),
  min_p: nullable({ type: 'number', minimum: 0, maximum: 1 }),
  repetition_penalty: nullable({ type: 'number', exclusiveMinimum: 0 }),
  stream: nullable({ type: 'boolean' }),
  stream_options: nullable({ type: 'object', properties: { include_usage: { type: 'boolean' } }, additionalProperties: false }),
  user: nullable({ type: 'string' }),
  logit_bias: nullable({ type: 'object', maxProperties: 0 }),
} as const;

const tokenIds = { type: 'array', items: { type: 'integer', minimum: 0 }, minItems: 1 } as const;

/** Prompts one completions body may list (OpenAI's limit for a `prompt` list). A 475 KB body of
 *  60,000 short prompts was 480,000 sequences with n 8: minutes of work counted as one request. */
export const MAX_PROMPTS = 2048;

/** Completions (prompts × n) one body may ask for: a body's answers are held until it is answered. */
export const MAX_SEQUENCES = 2048;

export const completionBodySchema = {
  type: 'object',
  required: ['model', 'prompt'],
  additionalProperties: false,
  properties: {
    ...sampling,
    prompt: {
      anyOf: [
        { type: 'string' },
        { type: 'array', items: { type: 'string' }, minItems: 1, maxItems: MAX_PROMPTS },
        tokenIds,
        { type: 'array', items: tokenIds, minItems: 1, maxItems: MAX_PROMPTS },
      ],
    },
    // (0 with echo: the prompt scored, nothing generated, as evaluation suites ask)
    max_tokens: nullable({ type: 'integer', minimum: 0 }),
    logprobs: nullable({ type: 'integer', minimum: 0, maximum: 5 }),
    echo: nullable({ type: 'boolean' }),
    best_of: nullable({ type: 'integer', minimum: 1, maximum: 8 }),
    suffix: { type: 'null' },
  },
} as const;

const textPart = { type: 'object', required: ['type', 'text'], additionalProperties: false, properties: { type: { const: 'text' }, text: { type: 'string' } } } as const;

export const chatBodySchema = {
  type: 'object',
  required: ['model', 'messages'],
  additionalProperties: false,
  properties: {
    ...sampling,
    messages: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        required: ['role', 'content'],
        additionalProperties: false,
        properties: {
          role: { enum: ['system', 'developer', 'user', 'assistant'] },
          // (null is OpenAI's for an assistant message whose turn was tool calls, and SDKs echo it
          // back in the history; translate.ts refuses it on the other roles, as OpenAI does)
          content: { anyOf: [{ type: 'string' }, { type: 'array', items: textPart }, { type: 'null' }] },
          name: { type: 'string' },
        },
      },
    },
    max_completion_tokens: nullable({ type: 'integer', minimum: 1 }),
    logprobs: nullable({ type: 'boolean' }),
    top_logprobs: nullable({ type: 'integer', minimum: 0, maximum: 20 }),
  },
} as const;

/** What a field must be, for the message of a value that matches none of its forms. */
export const FIELD_FORMS: Record<string, string> = {
  prompt: 'a string, an array of strings, an array of token ids or an array of token-id arrays',
  stop: 'a non-empty string or an array of at most 4 non-empty strings',
  content: 'a string or an array of {"type": "text", "text"} parts (or null, on an assistant message)',
};

/** Ajv's options, the same for the server's routes and for `tierlm batch`: values are never
 *  coerced or defaulted, so what was sent is what runs. */
export const AJV_OPTIONS = { coerceTypes: false, useDefaults: false, removeAdditional: false, allErrors: false } as const;
