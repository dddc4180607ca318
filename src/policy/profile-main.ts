// Entry of the child process that measures the hardware profile (ensureProfile): measures and
// returns the profile, logging progress on stderr. The parent saves it: it decides what a file
// that cannot be written means (a warning for the default file, an error for a named one).
import { childMain } from '../util/child.js';
import { type MeasureOptions, measureProfile } from './profile.js';

await childMain(async (o: MeasureOptions) => measureProfile({ ...o, log: (m) => process.stderr.write(`${m}\n`) }));
