// Error messages name an option the way the user wrote it: a CLI flag when the command line is
// in use, the API's option name otherwise. The engine's messages ask `optionName` instead of
// spelling a flag, so a library caller is never told to pass `--disk-dir`.

export type NameStyle = 'api' | 'flags';

// Through the environment, so that child processes a command starts (the planner and the
// profile run in their own under --ram) name options as their parent does.
const STYLE_VAR = 'TIERLM_NAME_STYLE';
let style: NameStyle = process.env[STYLE_VAR] === 'flags' ? 'flags' : 'api';

/** Called once by the CLI before it runs a command. */
export function useFlagNames(): void {
  style = 'flags';
  process.env[STYLE_VAR] = 'flags';
}

export function nameStyle(): NameStyle {
  return style;
}

const NAMES = {
  diskDir: ['diskDir', '--disk-dir DIR'],
  ramBytes: ['ramBytes', '--ram'],
  diskBytes: ['diskBytes', '--disk'],
  deviceBytes: ['deviceBytes', '--device-mem'],
  percents: ["the policy's percents (wCpuPercent, cacheCpuPercent, actCpuPercent)", '--percent'],
  devicePercents: ["the policy's device percents (wGpuPercent, cacheGpuPercent, actGpuPercent)", 'the device percents (--percent)'],
  // training (train()'s options and `tierlm train`'s flags)
  trainRam: ['ram', '--ram'],
  trainDiskDir: ['diskDir', '--disk-dir'],
  maxSteps: ['maxSteps', '--max-steps'],
  epochs: ['epochs', '--epochs'],
  tileSize: ['tileSize', '--tile-size'],
  ramPercent: ['ramPercent', '--ram-percent'],
  out: ['out', '--out'],
  data: ['data', '--data'],
  evalData: ['evalData', '--eval-data'],
  model: ['model', '--model'],
  seqLen: ['seqLen', '--seq-len'],
  resume: ['resume: true', '--resume'],
  profile: ['profile', '--profile'],
  stopTokenIds: ['stopTokenIds', '--stop-token-ids'],
} as const;

export function optionName(key: keyof typeof NAMES): string {
  return NAMES[key][style === 'api' ? 0 : 1];
}

/** Refuses keys an options object does not know, by name (a misspelt option is never ignored). */
export function checkKeys(obj: object | undefined, known: readonly string[], what: string): void {
  if (obj === undefined) return;
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw new TypeError(`${what} must be an object`);
  const unknown = Object.keys(obj).filter((k) => !known.includes(k));
  if (unknown.length > 0) {
    throw new TypeError(`${what}: unknown option${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => `"${k}"`).join(', ')} (known: ${known.join(', ')})`);
  }
}
