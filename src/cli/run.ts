// Process entry of the CLI (bin/tierlm.js runs the compiled copy of this file).
import { main, reportFailure } from './main.js';

// A failure outside the command's own promise (a stream's error event, a stray rejection) is
// reported like any other, never as an uncaught exception with a stack trace.
const fail = (e: unknown) => {
  reportFailure(e);
  process.exit();
};
process.on('uncaughtException', fail);
process.on('unhandledRejection', fail);

await main(process.argv);
