// openTrainer()'s options checked by name and value before anything opens: a misspelt option is
// refused (a learningRate the trainer does not know trained at the default rate), and a wrong
// value names the option as the API spells it.
import { checkKeys } from '../util/names.js';
import { checkApiValue } from '../util/options.js';
import type { TrainerOptions } from './trainer.js';

const TRAINER_KEYS = ['precision', 'computeMode', 'lr', 'lrSchedule', 'warmupSteps', 'totalSteps', 'weightDecay', 'betas', 'eps',
  'maxGradNorm', 'checkpointActivations', 'backend', 'threads', 'offload', 'comm'] as const;
const OFFLOAD_KEYS = ['ram', 'diskDir', 'disk', 'shares', 'subGroupSize', 'tileSize', 'maxTokens', 'heldBytes'] as const;
const SHARE_KEYS = ['param', 'grad', 'master', 'm', 'v', 'act'] as const;

const positiveInt = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v > 0;

export function checkTrainerOptions(o: unknown): asserts o is TrainerOptions {
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new TypeError('openTrainer() options must be an object');
  checkKeys(o, TRAINER_KEYS, 'openTrainer() options');
  const t = o as TrainerOptions;
  const oneOf = (name: string, v: unknown, allowed: readonly string[]) => {
    if (v !== undefined && !allowed.includes(v as string)) throw new RangeError(`${name} must be ${allowed.map((a) => `'${a}'`).join(' or ')}, got ${JSON.stringify(v)}`);
  };
  oneOf('precision', t.precision, ['fp32', 'bf16']);
  oneOf('computeMode', t.computeMode, ['fp32', 'bf16']);
  oneOf('lrSchedule', t.lrSchedule, ['constant', 'linear', 'cosine']);
  for (const k of ['lr', 'weightDecay', 'maxGradNorm'] as const) if (t[k] !== undefined) checkApiValue(k, t[k]);
  for (const k of ['warmupSteps', 'totalSteps'] as const) {
    const v = t[k];
    if (v !== undefined && !(typeof v === 'number' && Number.isSafeInteger(v) && v >= 0)) throw new RangeError(`${k} must be an integer >= 0, got ${String(v)}`);
  }
  if (t.eps !== undefined && !(typeof t.eps === 'number' && Number.isFinite(t.eps) && t.eps > 0)) throw new RangeError(`eps must be a finite number > 0, got ${String(t.eps)}`);
  if (t.betas !== undefined && !(Array.isArray(t.betas) && t.betas.length === 2 && t.betas.every((b) => typeof b === 'number' && b >= 0 && b < 1))) {
    throw new RangeError(`betas must be two numbers in [0, 1), got ${JSON.stringify(t.betas)}`);
  }
  if (t.checkpointActivations !== undefined && typeof t.checkpointActivations !== 'boolean') throw new TypeError(`checkpointActivations must be true or false, got ${JSON.stringify(t.checkpointActivations)}`);
  if (t.threads !== undefined) checkApiValue('threads', t.threads);
  if (t.offload !== undefined) checkOffload(t.offload);
}

function checkOffload(o: unknown): void {
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new TypeError('offload must be an object');
  checkKeys(o, OFFLOAD_KEYS, 'offload');
  const f = o as Record<string, unknown>;
  if (!positiveInt(f.ram)) throw new TypeError(`offload.ram must be the RAM limit in bytes (an integer > 0), got ${JSON.stringify(f.ram)}`);
  if (typeof f.diskDir !== 'string' || f.diskDir === '') throw new TypeError(`offload.diskDir must be the disk tier's directory (a non-empty string), got ${JSON.stringify(f.diskDir)}`);
  for (const k of ['disk', 'subGroupSize', 'tileSize', 'maxTokens'] as const) {
    if (f[k] !== undefined && !positiveInt(f[k])) throw new TypeError(`offload.${k} must be an integer > 0, got ${JSON.stringify(f[k])}`);
  }
  if (f.heldBytes !== undefined && !(Number.isSafeInteger(f.heldBytes) && (f.heldBytes as number) >= 0)) {
    throw new TypeError(`offload.heldBytes must be an integer >= 0, got ${JSON.stringify(f.heldBytes)}`);
  }
  if (f.shares !== undefined) {
    if (typeof f.shares !== 'object' || f.shares === null || Array.isArray(f.shares)) throw new TypeError('offload.shares must be an object');
    checkKeys(f.shares, SHARE_KEYS, 'offload.shares');
    for (const [k, v] of Object.entries(f.shares)) {
      if (!(typeof v === 'number' && v >= 0 && v <= 1)) throw new RangeError(`offload.shares.${k} must be a number in [0, 1], got ${JSON.stringify(v)}`);
    }
  }
}
