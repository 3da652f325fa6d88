import { describeBackupSuite, backupSuiteVersions } from './harness/backup-suite.js';

// The BACKUP suite of the 1st, 3rd, ... version under test; backup-2.test.ts runs the others in parallel.
for (const version of backupSuiteVersions(0, 2)) describeBackupSuite(version);
