import { describeBackupSuite, backupSuiteVersions } from './harness/backup-suite.js';

// The BACKUP suite of the 2nd, 4th, ... version under test (backup.test.ts runs the others).
for (const version of backupSuiteVersions(1, 2)) describeBackupSuite(version);
