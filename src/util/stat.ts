// A path's fs.Stats, or null when nothing is there (or it cannot be read), for checks that decide
// what to do with a path before touching it.
import fs from 'node:fs';

export function statOrNull(file: string): fs.Stats | null {
  try {
    return fs.statSync(file);
  } catch {
    return null;
  }
}
