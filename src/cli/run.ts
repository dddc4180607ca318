// Process entry of the CLI (bin/tierlm.js runs the compiled copy of this file).
import { main } from './main.js';

await main(process.argv);
