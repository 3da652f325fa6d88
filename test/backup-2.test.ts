import { test } from 'node:test';
import { describeBackupSuite, backupSuiteVersions } from './harness/backup-suite.js';

// The BACKUP suite of the 2nd, 4th, ... version under test (backup.test.ts runs the others).
const versions = backupSuiteVersions(1, 2);
for (const version of versions) describeBackupSuite(version);
if (versions.length === 0)
  test('BACKUP suite of a second PostgreSQL version', { skip: 'one version under test (PGBART_TEST_PG)' }, () => {});
