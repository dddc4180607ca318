// Training: the trainer API and what it is built from.
export { Trainer, openTrainer, type StepMetrics, type TrainerOptions } from './trainer.js';
export type { TrainSequence } from './batch.js';
export type { LrSchedule } from './schedule.js';
export { train, type TrainStepMetrics } from './run.js';
export { TRAIN_DEFAULTS, type TrainRunOptions, type TrainRunInfo } from './run-options.js';
