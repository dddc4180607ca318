// Run under mpirun by test/train-ranks.test.ts: reduce-scatters of odd sizes, checked element by
// element on every rank (integer-valued floats, so the sums are exact whatever their order), and
// the growth of each rank's RSS during one large reduce-scatter. Prints one JSON line a rank.
import { worldComm } from '../../src/dist/comm.js';

const comm = worldComm();
const bad: string[] = [];
for (const n of [1, 7, 1021, 100_003]) {
  const send = new Float32Array(n * comm.size).map((_, i) => comm.rank * 1000 + (i % 997));
  const recv = new Float32Array(n);
  comm.reduceScatter(send, recv).wait();
  const ranksSum = (comm.size * (comm.size - 1)) / 2;
  for (let j = 0; j < n; j++) {
    const want = 1000 * ranksSum + comm.size * ((comm.rank * n + j) % 997);
    if (recv[j] !== want) {
      bad.push(`n=${n} element ${j}: ${recv[j]} != ${want}`);
      break;
    }
  }
}
// One large reduce-scatter (MB of send): the RSS it adds, polled while it runs.
const mb = Number(process.env.RS_MB ?? 96);
// (recv written first, so that its pages are not what grows)
const send = new Float32Array((mb * 2 ** 20) / 4).fill(1), recv = new Float32Array(send.length / comm.size).fill(0);
comm.barrier().wait();
const before = process.memoryUsage().rss;
let peak = before;
const p = comm.reduceScatter(send, recv);
while (!p.done()) peak = Math.max(peak, process.memoryUsage().rss);
p.wait();
peak = Math.max(peak, process.memoryUsage().rss);
if (recv[0] !== comm.size || recv[recv.length - 1] !== comm.size) bad.push(`large: ${recv[0]}, ${recv[recv.length - 1]}`);
comm.barrier().wait();
console.log(JSON.stringify({ rank: comm.rank, bad, grewBytes: peak - before }));
comm.finalize();
