// Entry of the child process that measures the hardware profile (see profile-child.ts): measures,
// saves to the file it is given, and prints one JSON line: its own peak RSS, or the error.
import { UserError } from '../util/errors.js';
import type { ChildMeasureOptions, ChildReport } from './profile-child.js';
import { measureProfile, saveProfile } from './profile.js';

const o = JSON.parse(process.argv[2] ?? '{}') as ChildMeasureOptions;
let report: ChildReport;
try {
  const p = await measureProfile({ ...o, log: (m) => process.stderr.write(`${m}\n`) });
  saveProfile(p, o.file);
  report = { peakRssBytes: process.resourceUsage().maxRSS * 1024 };
} catch (e) {
  report = { error: (e as Error).message, userError: e instanceof UserError };
  process.exitCode = 1;
}
process.stdout.write(JSON.stringify(report) + '\n');
