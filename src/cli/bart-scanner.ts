/** bart-scanner entry point: the daemon arrives with the scanner issue; until then it prints its usage. */
const USAGE = `Usage: bart-scanner [-d] [-c CONFIG] { --daemon | -p <mbm_file> | <wal_file> | RELOAD | STOP }

  --daemon          scan archived WAL of every server with allow_incremental_backups = enabled
  -p <mbm_file>     print a modified block map file
  <wal_file>        scan one WAL file by hand
  RELOAD            make the running scanner re-read bart.cfg
  STOP              stop the running scanner
`;
process.stdout.write(USAGE);
process.exitCode = process.argv.length > 2 ? 1 : 0;
