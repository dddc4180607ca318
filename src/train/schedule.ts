// Learning-rate schedules with linear warmup, as Hugging Face's get_{constant,linear,cosine}_
// schedule_with_warmup: the rate of optimizer step s (0-based: the number of steps taken before
// it) is lr · factor(s). As in Hugging Face, with warmup the first step runs at rate 0.

export type LrSchedule = 'constant' | 'linear' | 'cosine';

export interface ScheduleOptions {
  lr: number;
  schedule: LrSchedule;
  warmupSteps: number;
  /** Total optimizer steps (linear and cosine decay to 0 at this step). */
  totalSteps: number;
}

export function learningRate(o: ScheduleOptions, s: number): number {
  const w = o.warmupSteps;
  if (s < w) return (o.lr * s) / Math.max(1, w);
  switch (o.schedule) {
    case 'constant':
      return o.lr;
    case 'linear':
      return o.lr * Math.max(0, (o.totalSteps - s) / Math.max(1, o.totalSteps - w));
    case 'cosine': {
      const progress = (s - w) / Math.max(1, o.totalSteps - w);
      return o.lr * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
    }
  }
}

export function checkSchedule(o: ScheduleOptions): void {
  if (!['constant', 'linear', 'cosine'].includes(o.schedule)) throw new RangeError(`lrSchedule must be constant, linear or cosine, got ${String(o.schedule)}`);
  if (!(Number.isFinite(o.lr) && o.lr >= 0)) throw new RangeError(`lr must be a finite number >= 0, got ${o.lr}`);
  if (!Number.isInteger(o.warmupSteps) || o.warmupSteps < 0) throw new RangeError(`warmupSteps must be an integer >= 0, got ${o.warmupSteps}`);
  if (o.schedule !== 'constant' && !(Number.isInteger(o.totalSteps) && o.totalSteps > 0)) {
    throw new RangeError(`the ${o.schedule} schedule needs totalSteps, a positive integer (${o.totalSteps === 0 ? 'none was given' : `got ${o.totalSteps}`})`);
  }
}
