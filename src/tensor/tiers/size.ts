// Byte sizes as users write them: 16GiB, 512MiB, 6GB, 1.5e9B (a unit is required).

const UNITS: Record<string, number> = {
  b: 1,
  k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12,
  kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40,
};

/** Parses "16GiB", "512 MiB", "6GB", "1.5e9B"; throws a RangeError naming `what` otherwise. A number
 *  without a unit is refused: `--ram 4` meaning 4 bytes is never what was meant. */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*$/i.exec(String(text));
  if (m && m[2] === '') throw new RangeError(`${what}: "${text}" has no unit; write ${m[1]}GiB, ${m[1]}MiB or ${m[1]}B (bytes)`);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new RangeError(`${what}: cannot read "${text}" as a size (for example 16GiB, 512MiB, 6GB)`);
  const bytes = Math.floor(Number(m[1]) * unit);
  if (!Number.isFinite(bytes) || bytes < 0) throw new RangeError(`${what}: "${text}" is not a valid size`);
  // (beyond 2^53 bytes a count is no longer exact, and the planner and the API refuse it)
  if (bytes > Number.MAX_SAFE_INTEGER) throw new RangeError(`${what}: "${text}" is too large (at most 8 PiB, ${Math.floor(Number.MAX_SAFE_INTEGER / 2 ** 40)}TiB)`);
  return bytes;
}

export function formatSize(bytes: number): string {
  const abs = Math.abs(bytes);
  if (abs >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
  if (abs >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  if (abs >= 2 ** 10) return `${(bytes / 2 ** 10).toFixed(1)} KiB`;
  return `${bytes} B`;
}
