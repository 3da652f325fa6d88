// Benchmark: throughput of the page checksum alone over 1 GiB of pages.

/**
 * Throughput of the page checksum alone (src/postgres/page-checksum.ts): 1 GiB of pages checked,
 * one core. `node dist/bench/page-checksum-bench.js [GiB]`.
 */
import { createHash, randomFillSync } from 'node:crypto';
import { PAGE_SIZE, PageVerifier, pageChecksum } from '../src/postgres/page-checksum.js';

const gib = Number(process.argv[2] ?? 1);
// 64 MiB of random pages with a valid header (pd_upper set, LSN 0/1) reused: the data is in cache
// either way in a backup, as the pages were just read.
const buf = Buffer.alloc(64 * 1024 * 1024);
randomFillSync(buf);
const words = new Int32Array(buf.buffer, buf.byteOffset, buf.length / 4);
const pages = buf.length / PAGE_SIZE;
for (let p = 0; p < pages; p++) {
  const o = p * PAGE_SIZE;
  buf.writeUInt32LE(0, o);
  buf.writeUInt32LE(1, o + 4);
  buf.writeUInt16LE(8000, o + 14);
  buf.writeUInt16LE(pageChecksum(words, o / 4, p), o + 8);
}
const rounds = Math.round((gib * 1024) / 64);
for (const [what, run] of [
  [
    'pageChecksum (JS)',
    () => {
      let x = 0;
      for (let p = 0; p < pages; p++) x ^= pageChecksum(words, p * (PAGE_SIZE / 4), p);
      return x;
    },
  ],
  [
    'PageVerifier (WebAssembly SIMD, 1 MiB pieces)',
    () => {
      const v = new PageVerifier(0, 1n << 40n);
      for (let o = 0; o < buf.length; o += 1024 * 1024) v.update(buf.subarray(o, o + 1024 * 1024));
      if (v.suspects.length > 0) throw new Error('bad pages in the benchmark data');
      return v.checked;
    },
  ],
] as const) {
  run(); // warm up the JIT
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  for (let r = 0; r < rounds; r++) run();
  const s = (performance.now() - t0) / 1000;
  const used = process.cpuUsage(c0);
  // CPU time as well: on a shared machine the wall clock also counts other processes' turns.
  const cpu = (used.user + used.system) / 1e6;
  const rate = (t: number) => ((gib * 1024) / t).toFixed(0);
  console.log(`${what}: ${gib} GiB in ${s.toFixed(2)} s = ${rate(s)} MiB/s (${rate(cpu)} MiB/s of CPU time)`);
}

{
  // For scale: SHA-256 (the manifest's default per-file checksum), which every backup already computes.
  const c0 = process.cpuUsage();
  for (let r = 0; r < rounds; r++) createHash('sha256').update(buf).digest();
  const used = process.cpuUsage(c0);
  console.log(`sha256 for scale: ${((gib * 1024) / ((used.user + used.system) / 1e6)).toFixed(0)} MiB/s of CPU time`);
}
