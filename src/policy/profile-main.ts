// Entry of the child process that measures the hardware profile (ensureProfile): measures and
// saves to the file it is given, logging progress on stderr.
import { childMain } from '../util/child.js';
import { type MeasureOptions, measureProfile, saveProfile } from './profile.js';

await childMain(async (o: MeasureOptions & { file: string }) => {
  saveProfile(await measureProfile({ ...o, log: (m) => process.stderr.write(`${m}\n`) }), o.file);
  return null;
});
