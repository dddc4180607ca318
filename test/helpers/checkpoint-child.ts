// Saves a checkpoint in a child process, so that a test can kill it in the middle of the save
// (TIERLM_TEST_CHECKPOINT_PAUSE stops the save at a stage). Arguments: OUT MODEL_DIR STEP.
import { saveCheckpoint } from '../../src/train/checkpoint.js';
import { stateFromModel } from './train-state.js';

const [out, modelDir, step] = process.argv.slice(2) as [string, string, string];
await saveCheckpoint(out, modelDir, stateFromModel(modelDir, Number(step)));
process.stdout.write('saved\n');
