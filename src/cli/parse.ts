// Option parsers that turn bad values into clear errors.
import { InvalidArgumentError } from 'commander';
import { type RuleName, checkValue } from '../util/options.js';

/** A number as written in decimal (`12`, `-0.5`, `1e-3`); NaN for anything else: Number() also
 *  reads "0x64" as 100, "0b1" as 1 and "" as 0, which flags then took silently. */
export function decimal(v: string): number {
  return /^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/.test(v) ? Number(v) : NaN;
}

export function int(name: string, min = 0) {
  return (v: string): number => {
    const n = decimal(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got "${v}"`);
    return n;
  };
}

export function oneOf<T extends string>(name: string, values: readonly T[]) {
  return (v: string): T => {
    if (!values.includes(v as T)) throw new InvalidArgumentError(`${name} must be one of ${values.join(', ')}, got "${v}"`);
    return v as T;
  };
}

/** Comma-separated integers >= 0. An empty item is refused, not dropped: "1,,2" (a lost id) and
 *  "" (an unset variable) were taken silently as fewer ids, or none. */
export function intList(name: string) {
  return (v: string): number[] => v.split(',').map((s, i) => {
    if (s.trim() === '') throw new InvalidArgumentError(`${name} must be comma-separated integers >= 0, got "${v}" (item ${i + 1} is empty)`);
    return int(name)(s.trim());
  });
}

/** A numeric option checked by the engine's own rule for it (src/engine/options.ts), so the CLI
 *  and the API accept exactly the same values. */
export function rule(name: RuleName) {
  return (v: string): number => {
    const n = decimal(v);
    const bad = checkValue(name, n, 'flag');
    if (bad) throw new InvalidArgumentError(bad.replace(/got "[^"]*"$/, `got "${v}"`));
    return n;
  };
}
