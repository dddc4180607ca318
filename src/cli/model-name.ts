// The name a served model answers to: --served-model-name, or the model directory's own name.
import path from 'node:path';

export function servedName(o: { model: string; servedModelName?: string }): string {
  return o.servedModelName ?? path.basename(path.resolve(o.model));
}
