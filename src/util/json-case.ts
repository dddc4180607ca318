// Every machine-readable file and line tierlm writes or reads is snake_case (the convention of
// FlexGen's policy, Hugging Face configs and the OpenAI formats); TypeScript values are camelCase.
// These convert at the boundary. Objects under an `opaque` key are data maps whose keys are names
// (CPU feature flags), copied as they are.

export const toSnake = (key: string): string => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
export const toCamel = (key: string): string => key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

function convert(v: unknown, f: (k: string) => string, opaque: readonly string[]): unknown {
  if (Array.isArray(v)) return v.map((x) => convert(x, f, opaque));
  if (typeof v !== 'object' || v === null) return v;
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [f(k), opaque.includes(k) ? x : convert(x, f, opaque)]));
}

export function snakeKeys(v: unknown, opaque: readonly string[] = []): unknown {
  return convert(v, toSnake, opaque);
}

export function camelKeys(v: unknown, opaque: readonly string[] = []): unknown {
  return convert(v, toCamel, opaque);
}
