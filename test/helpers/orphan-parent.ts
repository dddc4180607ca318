// A parent for test/child-orphan.test.ts: runs test/helpers/orphan-child-main.ts through
// runInChild and passes the child's lines (its pid first) to stdout; `exit` as the second argument
// ends this process with process.exit once the child has said its pid.
import { runInChild } from '../../src/util/child.js';

const [sleepMs, how] = [Number(process.argv[2]), process.argv[3]];
const { value } = await runInChild<string>(import.meta.url, 'orphan-child-main', { sleepMs }, (line) => {
  process.stdout.write(`${line}\n`);
  if (how === 'exit' && line.startsWith('pid ')) process.exit(3);
});
process.stdout.write(`result ${value}\n`);
