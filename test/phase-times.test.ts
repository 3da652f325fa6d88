// Phase times: BACKUP -d and RESTORE -d say where the time went, one line each; without -d they say nothing of it.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { backupIdFrom, createBackupFixture, type BackupFixture } from './harness/backup-fixture.js';
import { pgbenchInit } from './harness/load.js';
import { versionsUnderTest } from './harness/pg-binaries.js';
import { makeTempDir, removeTree, testUserIds } from './harness/os.js';
import { chownSync } from 'node:fs';

/** The phases of a `<COMMAND> phases: a 1.00 s, b 2.00 s; wall 3.00 s` debug line, as name → seconds. */
function phasesOf(output: string, command: string): { phases: Map<string, number>; wall: number } {
  const line = new RegExp(`^DEBUG:\\s+${command} phases: (.*); wall (\\d+\\.\\d\\d) s$`, 'm').exec(output);
  assert.ok(line, `a "${command} phases" line in:\n${output}`);
  const phases = new Map<string, number>();
  for (const part of line[1]!.split(', ')) {
    const m = /^(.+) (\d+\.\d\d) s$/.exec(part);
    assert.ok(m, `"${part}" is "<phase> <seconds> s"`);
    phases.set(m[1]!, Number(m[2]));
  }
  return { phases, wall: Number(line[2]) };
}

describe('phase times of BACKUP and RESTORE (-d)', () => {
  const version = versionsUnderTest()[0]!;
  let fx: BackupFixture;
  let work: string;
  before(async () => {
    fx = await createBackupFixture({ version });
    await pgbenchInit(fx.cluster, 5);
    work = makeTempDir('pgbart-phases');
    const ids = testUserIds();
    if (ids) chownSync(work, ids.uid, ids.gid);
  });
  after(async () => {
    await fx?.destroy();
    if (work) removeTree(work);
  });

  let tarId = '';
  test('BACKUP -d of a compressed tar: reads, checksums, compression in the workers, writes, fsync', async () => {
    const r = await fx.setup.bart(['-d', 'BACKUP', '-s', fx.server, '-F', 't', '--compress', 'lz4']);
    assert.equal(r.code, 0, r.stderr);
    tarId = backupIdFrom(r.stdout);
    const { phases, wall } = phasesOf(r.stdout + r.stderr, 'BACKUP');
    for (const p of [
      'backup start (checkpoint)',
      'checksum',
      'page verify',
      'read wait',
      'compress (workers)',
      'write',
    ])
      assert.ok(phases.has(p), `phase "${p}" in ${[...phases.keys()].join(', ')}`);
    for (const p of ['backup stop', 'WAL wait and store', 'fsync']) assert.ok(phases.has(p), p);
    assert.ok(phases.get('compress (workers)')! > 0, 'the workers compressed something');
    assert.ok(wall > 0);
    // What the main thread itself waited on or did cannot exceed the wall time (worker time may: it is summed).
    for (const [p, s] of phases)
      if (!p.includes('(workers)')) assert.ok(s <= wall + 0.01, `${p} ${s} s ≤ wall ${wall} s`);
  });

  test('BACKUP -d of a plain backup: the files copied by the workers', async () => {
    const r = await fx.setup.bart(['-d', 'BACKUP', '-s', fx.server, '-F', 'p']);
    assert.equal(r.code, 0, r.stderr);
    const { phases } = phasesOf(r.stdout + r.stderr, 'BACKUP');
    assert.ok(phases.get('file copy (workers)')! > 0, [...phases.keys()].join(', '));
  });

  test('without -d there is no phase line', async () => {
    const r = await fx.setup.bart(['BACKUP', '-s', fx.server, '-F', 't']);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout + r.stderr, /phases:/);
  });

  test('RESTORE -d: plan, files in the workers, fsync', async () => {
    const dest = join(work, 'restored');
    const r = await fx.setup.bart(['-d', 'RESTORE', '-s', fx.server, '-i', tarId, '-p', dest]);
    assert.equal(r.code, 0, r.stderr);
    const { phases } = phasesOf(r.stdout + r.stderr, 'RESTORE');
    for (const p of ['checks and plan', 'files', 'files (workers)', 'fsync'])
      assert.ok(phases.has(p), `phase "${p}" in ${[...phases.keys()].join(', ')}`);
    assert.ok(phases.get('files (workers)')! > 0);
  });
});
