// Test harness: npm run test:chaos, rounds of chaos runs until the minutes are used up.

/**
 * The long randomized correctness run: `npm run test:chaos -- --seed S --minutes M --pg VERSION [--big]`.
 * Runs rounds of {@link runChaos} (seed, seed + 1, ...) until the minutes are used up; prints every
 * round's seed, and on a mismatch the seed that replays it, then exits non-zero.
 */
import { runChaos } from './chaos-engine.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const seed = Number(arg('seed') ?? Date.now() % 1_000_000);
const minutes = Number(arg('minutes') ?? 5);
const versions = (arg('pg') ?? '15').split(',').map(Number);
const round = Number(arg('round-seconds') ?? 60);
if (!Number.isInteger(seed) || !(minutes > 0) || versions.some((v) => !Number.isInteger(v) || v < 14 || v > 18)) {
  process.stderr.write(
    'usage: npm run test:chaos -- --seed N --minutes M --pg 14|15|16|17|18[,...] [--round-seconds S] [--big] [--amcheck-all]\n',
  );
  process.exit(2);
}
const deadline = Date.now() + minutes * 60_000;
let s = seed;
let rounds = 0;
const started = Date.now();
while (Date.now() < deadline) {
  for (const version of versions) {
    if (Date.now() >= deadline && rounds > 0) break;
    const t0 = Date.now();
    process.stdout.write(`chaos round ${rounds + 1}: seed ${s}, PostgreSQL ${version}\n`);
    try {
      const r = await runChaos({
        seed: s,
        seconds: round,
        version,
        bigTables: process.argv.includes('--big'),
        amcheckAll: process.argv.includes('--amcheck-all'),
        log: (l) => process.stdout.write(`  ${l}\n`),
      });
      process.stdout.write(
        `chaos round ${rounds + 1} OK: seed ${s}, PostgreSQL ${version}: ${r.operations} operations, ${r.backups} backups (${r.incrementals} incremental, chain depth up to ${r.maxDepth}), ${r.restorePoints} restore points, ${r.restores} restores compared, ${Math.round((Date.now() - t0) / 1000)} s\n`,
      );
    } catch (err) {
      process.stdout.write(
        `CHAOS MISMATCH with seed ${s} on PostgreSQL ${version} (replay: npm run test:chaos -- --seed ${s} --minutes 1 --pg ${version}):\n${(err as Error).message}\n`,
      );
      process.exit(1);
    }
    rounds++;
    s++;
  }
}
process.stdout.write(
  `chaos: ${rounds} rounds from seed ${seed} in ${Math.round((Date.now() - started) / 60000)} min, zero mismatches\n`,
);
