import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createBartSetup } from './harness/bart.js';
import { makeTempDir, removeTree, run, testUserName, type RunResult } from './harness/os.js';
import { REPO_ROOT } from './harness/pg-binaries.js';

const BART = join(REPO_ROOT, 'bin', 'bart.js');

/** Runs bart (as root, like the harness) with exactly this environment, so $BART_CONFIG/$BART_HOME are under control. */
function bartWithEnv(
  args: string[],
  env: Record<string, string>,
  uid?: { uid: number; gid: number },
): Promise<RunResult> {
  const base: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env };
  return run(process.execPath, [BART, ...args], { asTestUser: false, env: base, cwd: '/', ...(uid ?? {}) });
}

/**
 * A valid bart.cfg body: [BART] then one server section; each case below breaks one line of it. Every
 * path BART would otherwise default (logfile, scanner_logfile, bart_socket_directory under /tmp) points
 * into `dir`, so the result does not depend on what else is on the machine.
 */
function validConfig(dir: string, backupPath: string, logfile: string): string[] {
  return [
    '[BART]',
    `bart_host = ${testUserName()}@127.0.0.1`,
    `backup_path = ${backupPath}`,
    `logfile = ${logfile}`,
    `scanner_logfile = ${join(dir, 'bart_scanner.log')}`,
    `bart_socket_directory = ${dir}`,
    '',
    '[Acctg]',
    'host = 127.0.0.1',
    'port = 5444',
    'user = postgres',
    'cluster_owner = postgres',
    'description = "Accounting"',
  ];
}

test('config: every bad bart.cfg gives ERROR: <file>:<line>: with the right line and a non-zero exit', async () => {
  const setup = createBartSetup();
  try {
    const lines = validConfig(setup.dir, setup.backupPath, setup.logfile);
    // 1-based line numbers in the valid file: the server section, its port line, and a line appended at the end.
    const section = lines.indexOf('[Acctg]') + 1;
    const port = lines.indexOf('port = 5444') + 1;
    const backupPathLine = lines.findIndex((x) => x.startsWith('backup_path')) + 1;
    const appended = lines.length + 1;
    const variants: Array<{ name: string; edit: (l: string[]) => string[]; line: number; says: RegExp }> = [
      {
        name: 'unknown key',
        edit: (l) => [...l.slice(0, port), 'colour = blue', ...l.slice(port)],
        line: port + 1,
        says: /unknown parameter "colour"/,
      },
      {
        name: 'missing required key',
        edit: (l) => l.filter((x) => !x.startsWith('cluster_owner')),
        line: section,
        says: /missing the required parameter "cluster_owner"/,
      },
      {
        name: 'duplicate section (case-insensitive)',
        edit: (l) => [...l, '', '[ACCTG]', 'host = h', 'user = u', 'cluster_owner = c'],
        line: appended + 1,
        says: new RegExp(`duplicate section \\[ACCTG\\].*line ${section}\\b`),
      },
      {
        name: 'retention_policy = 8 BACKUP',
        edit: (l) => [...l, 'retention_policy = 8 BACKUP'],
        line: appended,
        says: /retention_policy = "8 BACKUP" is invalid/,
      },
      {
        name: 'port = abc',
        edit: (l) => l.map((x) => (x.startsWith('port') ? 'port = abc' : x)),
        line: port,
        says: /port = "abc" is not a number/,
      },
      {
        name: 'thread_count = 0',
        edit: (l) => [...l, 'thread_count = 0'],
        line: appended,
        says: /thread_count = 0 is out of range/,
      },
      {
        name: 'backup_name over 49 characters',
        edit: (l) => [...l, `backup_name = ${'b'.repeat(50)}`],
        line: appended,
        says: /backup_name = "b{50}" is invalid/,
      },
      {
        name: 'direct_io = maybe',
        edit: (l) => [...l.slice(0, backupPathLine), 'direct_io = maybe', ...l.slice(backupPathLine)],
        line: backupPathLine + 1,
        says: /direct_io = "maybe" is invalid: allowed values are on and off/,
      },
      {
        name: 'direct_io in a server section',
        edit: (l) => [...l, 'direct_io = off'],
        line: appended,
        says: /parameter "direct_io" is allowed only in the \[BART\] section/,
      },
      {
        name: 'remote_host = nohost',
        edit: (l) => [...l, 'remote_host = nohost'],
        line: appended,
        says: /remote_host = "nohost" is invalid: expected user@host/,
      },
    ];
    // Each case gets its own file so the processes can run side by side.
    const results = await Promise.all(
      variants.map(async (v, i) => {
        const path = join(setup.dir, `bad-${i}.cfg`);
        writeFileSync(path, `${v.edit(lines).join('\n')}\n`);
        chmodSync(path, 0o644);
        return { v, path, r: await bartWithEnv(['-c', path, 'CHECK-CONFIG'], {}) };
      }),
    );
    for (const { v, path, r } of results) {
      assert.notEqual(r.code, 0, `${v.name}: exit status`);
      const first = r.stderr.split('\n')[0] ?? '';
      assert.match(
        first,
        new RegExp(`^ERROR:\\s+${path.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:${v.line}: `),
        `${v.name}: ${r.stderr}`,
      );
      assert.match(first, v.says, `${v.name}: ${r.stderr}`);
      assert.equal(r.stdout, '', `${v.name}: nothing on stdout`);
    }
    // The unchanged file is accepted: the cases above fail because of the one line they break.
    const good = join(setup.dir, 'good.cfg');
    writeFileSync(good, `${lines.join('\n')}\n`);
    chmodSync(good, 0o644);
    const ok = await bartWithEnv(['-c', good, 'CHECK-CONFIG'], {});
    assert.equal(ok.code, 0, ok.stderr);
  } finally {
    setup.cleanup();
  }
});

test('config: -c beats $BART_CONFIG, which beats $BART_HOME; a missing file names the paths tried', async () => {
  assert.equal(existsSync('/etc/bart.cfg'), false, 'this test expects no /etc/bart.cfg on the machine');
  const setup = createBartSetup();
  const home = makeTempDir('barthome');
  try {
    const fromEnv = join(setup.dir, 'env.cfg');
    writeFileSync(
      fromEnv,
      readFileSync(setup.configPath, 'utf8').replace(/^logfile = .*$/m, `logfile = ${join(setup.dir, 'env.log')}`),
    );
    mkdirSync(join(home, 'etc'), { recursive: true });
    const fromHome = join(home, 'etc', 'bart.cfg');
    writeFileSync(
      fromHome,
      readFileSync(setup.configPath, 'utf8').replace(/^logfile = .*$/m, `logfile = ${join(setup.dir, 'home.log')}`),
    );
    for (const f of [fromEnv, fromHome]) chmodSync(f, 0o644);

    const viaHome = await bartWithEnv(['CHECK-CONFIG'], { BART_HOME: home });
    assert.equal(viaHome.code, 0, viaHome.stderr);
    assert.match(viaHome.stdout, new RegExp(`Checking the \\[BART\\] section of ${fromHome}`));

    const viaEnv = await bartWithEnv(['CHECK-CONFIG'], { BART_HOME: home, BART_CONFIG: fromEnv });
    assert.equal(viaEnv.code, 0, viaEnv.stderr);
    assert.match(viaEnv.stdout, new RegExp(`Checking the \\[BART\\] section of ${fromEnv}`));

    const viaOption = await bartWithEnv(['-c', setup.configPath, 'CHECK-CONFIG'], {
      BART_HOME: home,
      BART_CONFIG: fromEnv,
    });
    assert.equal(viaOption.code, 0, viaOption.stderr);
    assert.match(viaOption.stdout, new RegExp(`Checking the \\[BART\\] section of ${setup.configPath}`));

    const empty = makeTempDir('barthome-empty');
    try {
      const missing = await bartWithEnv(['CHECK-CONFIG'], { BART_HOME: empty });
      assert.notEqual(missing.code, 0);
      assert.match(missing.stderr, /^ERROR:\s+no configuration file found: tried \/etc\/bart\.cfg, /);
      assert.ok(missing.stderr.includes(join(empty, 'etc', 'bart.cfg')), missing.stderr);
    } finally {
      removeTree(empty);
    }
    const badEnv = await bartWithEnv(['CHECK-CONFIG'], { BART_CONFIG: join(setup.dir, 'nope.cfg') });
    assert.notEqual(badEnv.code, 0);
    assert.match(badEnv.stderr, /cannot read configuration file ".*nope\.cfg": no such file/);
  } finally {
    removeTree(home);
    setup.cleanup();
  }
});

test('config: bart started as a user other than root or the BART user refuses, naming both users', async () => {
  // A world-readable config, so that the refusal (not a read error) is what stops bart.
  const dir = makeTempDir('nobody');
  try {
    chmodSync(dir, 0o755);
    const cfg = join(dir, 'bart.cfg');
    writeFileSync(
      cfg,
      [
        '[BART]',
        `bart_host = ${testUserName()}@127.0.0.1`,
        `backup_path = ${join(dir, 'backups')}`,
        `logfile = ${join(dir, 'bart.log')}`,
        `scanner_logfile = ${join(dir, 'bart_scanner.log')}`,
        `bart_socket_directory = ${dir}`,
        '',
      ].join('\n'),
    );
    chmodSync(cfg, 0o644);
    const r = await bartWithEnv(['-c', cfg, 'SHOW-SERVERS'], { HOME: '/' }, { uid: 65534, gid: 65534 });
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      new RegExp(`^ERROR:\\s+bart must run as the BART user "${testUserName()}".* not as "nobody"`),
    );
    assert.equal(existsSync(join(dir, 'bart.log')), false, 'nothing was logged as the wrong user');
  } finally {
    removeTree(dir);
  }
});

test('config: repository and s3_* parameters: every bad value gives ERROR: <file>:<line>:, good ones resolve per server', async () => {
  const setup = createBartSetup();
  try {
    const base = validConfig(setup.dir, setup.backupPath, setup.logfile);
    const section = base.indexOf('[Acctg]') + 1;
    // [BART] gets the repository lines (after bart_host, line 2), the server section keeps its own.
    const withGlobal = (extra: string[]) => [base[0]!, ...extra, ...base.slice(1)];
    const s3Global = ['repository = s3', 's3_bucket = pgbart-backups'];
    const variants: Array<{ name: string; lines: string[]; line: number; says: RegExp }> = [
      {
        name: 'repository = nfs',
        lines: withGlobal(['repository = nfs']),
        line: 2,
        says: /repository = "nfs" is invalid: allowed values are posix and s3/,
      },
      {
        name: 'repository = s3 without a bucket',
        lines: withGlobal(['repository = s3']),
        line: section + 1,
        says: /server \[Acctg\] uses repository = s3 \(.*bart-\d+\.cfg:2\) but no s3_bucket is set/,
      },
      {
        name: 's3_endpoint = ftp://x',
        lines: withGlobal([...s3Global, 's3_endpoint = ftp://store.example.com']),
        line: 4,
        says: /s3_endpoint = "ftp:\/\/store.example.com" is invalid: the URL must start with http:\/\/ or https:\/\//,
      },
      {
        name: 's3_endpoint with a path',
        lines: withGlobal([...s3Global, 's3_endpoint = https://store.example.com/bucket']),
        line: 4,
        says: /s3_endpoint = .* is invalid: expected only scheme, host and port/,
      },
      {
        name: 's3_endpoint with credentials (never echoed)',
        lines: withGlobal([...s3Global, 's3_endpoint = https://AKIAX:topsecret@store.example.com']),
        line: 4,
        says: /s3_endpoint must not hold credentials \(user:password@\): use s3_key and s3_key_secret$/,
      },
      {
        name: 's3_endpoint not a URL',
        lines: withGlobal([...s3Global, 's3_endpoint = store.example.com:443']),
        line: 4,
        says: /s3_endpoint = "store.example.com:443" is invalid/,
      },
      {
        name: 's3_bucket = x',
        lines: withGlobal(['repository = s3', 's3_bucket = x']),
        line: 3,
        says: /s3_bucket = "x" is invalid: expected a bucket name/,
      },
      {
        name: 's3_prefix = /abs',
        lines: withGlobal([...s3Global, 's3_prefix = /abs']),
        line: 4,
        says: /s3_prefix = "\/abs" is invalid: it is absolute/,
      },
      {
        name: 's3_prefix = a/../b',
        lines: withGlobal([...s3Global, 's3_prefix = a/../b']),
        line: 4,
        says: /s3_prefix = "a\/..\/b" is invalid: it has a ".." component/,
      },
      {
        name: 's3_uri_style = virtual',
        lines: withGlobal([...s3Global, 's3_uri_style = virtual']),
        line: 4,
        says: /s3_uri_style = "virtual" is invalid: allowed values are path and host/,
      },
      {
        name: 's3_verify_tls = no',
        lines: withGlobal([...s3Global, 's3_verify_tls = no']),
        line: 4,
        says: /s3_verify_tls = "no" is invalid: allowed values are enabled and disabled/,
      },
      {
        name: 's3_ca_file relative',
        lines: withGlobal([...s3Global, 's3_ca_file = ca.pem']),
        line: 4,
        says: /s3_ca_file = "ca.pem" must be an absolute path/,
      },
      {
        name: 's3_region with a space',
        lines: withGlobal([...s3Global, 's3_region = eu west']),
        line: 4,
        says: /s3_region = "eu west" is invalid/,
      },
      {
        name: 's3_key without s3_key_secret (in a server section)',
        lines: [...withGlobal(s3Global), 's3_key = AKIATESTKEY'],
        line: base.length + 3,
        says: /s3_key is set without s3_key_secret in \[Acctg\]: set both or neither$/,
      },
      {
        name: 's3_key_secret without s3_key',
        lines: withGlobal([...s3Global, 's3_key_secret = very-secret-value']),
        line: 4,
        says: /s3_key_secret is set without s3_key in \[BART\]: set both or neither$/,
      },
    ];
    const results = await Promise.all(
      variants.map(async (v, i) => {
        const path = join(setup.dir, `bart-${i}.cfg`);
        writeFileSync(path, `${v.lines.join('\n')}\n`);
        chmodSync(path, 0o644);
        return { v, path, r: await bartWithEnv(['-c', path, 'SHOW-SERVERS'], {}) };
      }),
    );
    for (const { v, path, r } of results) {
      assert.notEqual(r.code, 0, `${v.name}: exit status`);
      const first = r.stderr.split('\n')[0] ?? '';
      assert.match(
        first,
        new RegExp(`^ERROR:\\s+${path.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:${v.line}: `),
        `${v.name}: ${r.stderr}`,
      );
      assert.match(first, v.says, `${v.name}: ${r.stderr}`);
      assert.equal(r.stderr.trimEnd().split('\n').length, 1, `${v.name}: one line: ${r.stderr}`);
      for (const secret of ['topsecret', 'very-secret-value']) assert.ok(!r.stderr.includes(secret), r.stderr);
      assert.equal(r.stdout, '', `${v.name}: nothing on stdout`);
    }

    // Resolution: [BART] gives the defaults, a server overrides one by one; key and secret go as a pair and never print.
    const { parseConfig } = await import('../src/config/parse-config.js');
    const { inspect } = await import('node:util');
    const text = [
      ...withGlobal([
        'repository = s3',
        's3_bucket = global-bucket',
        's3_endpoint = http://10.0.0.5:7480',
        's3_key = AKIAGLOBALKEY',
        's3_key_secret = global-secret-value',
      ]),
      's3_prefix = pgbart/prod',
      's3_verify_tls = disabled',
      '',
      '[aws]',
      'host = h',
      'user = u',
      'cluster_owner = c',
      '',
      '[local]',
      'host = h',
      'user = u',
      'cluster_owner = c',
      'repository = posix',
    ].join('\n');
    const config = parseConfig(text, '/etc/bart.cfg');
    const [acctg, aws, local] = config.servers;
    assert.deepEqual(
      { ...acctg!.repository, credentials: undefined },
      {
        kind: 's3',
        endpoint: 'http://10.0.0.5:7480',
        region: 'us-east-1',
        bucket: 'global-bucket',
        prefix: 'pgbart/prod',
        uriStyle: 'path',
        verifyTls: false,
        credentials: undefined,
        at: '/etc/bart.cfg:2',
      },
    );
    assert.equal(
      acctg!.repository.kind === 's3' && acctg!.repository.credentials?.secretAccessKey.reveal(),
      'global-secret-value',
    );
    assert.equal(
      aws!.repository.kind === 's3' && aws!.repository.prefix,
      '',
      "a section without s3_prefix inherits [BART]'s (none)",
    );
    assert.equal(local!.repository.kind, 'posix');
    const noEndpoint = parseConfig(
      withGlobal(['repository = s3', 's3_bucket = bkt', 's3_region = eu-west-1']).join('\n'),
      '/x',
    );
    const repo = noEndpoint.servers[0]!.repository;
    assert.ok(
      repo.kind === 's3' && repo.uriStyle === 'host' && repo.region === 'eu-west-1' && repo.endpoint === undefined,
    );
    for (const shown of [
      JSON.stringify(config.servers[0]),
      inspect(config, { depth: 10 }),
      String(config.global.repositoryDefaults.credentials?.secretAccessKey),
    ]) {
      assert.ok(!shown.includes('global-secret-value') && !shown.includes('AKIAGLOBALKEY'), shown);
      assert.match(shown, /<redacted>/);
    }
  } finally {
    setup.cleanup();
  }
});

test('config: repository_cipher and repository_cipher_pass_file: bad values name file:line, good ones resolve per server', async () => {
  const { parseConfig } = await import('../src/config/parse-config.js');
  const server = ['', '[db]', 'host = h', 'user = u', 'cluster_owner = c'];
  const head = ['[BART]', 'bart_host = postgres@127.0.0.1', 'backup_path = /var/lib/bart'];
  assert.throws(
    () => parseConfig([...head, 'repository_cipher = aes-128-cbc', ...server].join('\n'), '/etc/bart.cfg'),
    (err: unknown) =>
      err instanceof Error &&
      /^\/etc\/bart\.cfg:4: repository_cipher = "aes-128-cbc" is invalid: allowed values are none and aes-256-gcm$/.test(
        err.message,
      ),
  );
  assert.throws(
    () => parseConfig([...head, ...server, 'repository_cipher_pass_file = pass.txt'].join('\n'), '/etc/bart.cfg'),
    (err: unknown) =>
      err instanceof Error &&
      /^\/etc\/bart\.cfg:9: repository_cipher_pass_file = "pass.txt" must be an absolute path$/.test(err.message),
  );
  const config = parseConfig(
    [
      ...head,
      'repository_cipher = aes-256-gcm',
      'repository_cipher_pass_file = /etc/bart/pass',
      ...server,
      '',
      '[plain]',
      'host = h',
      'user = u',
      'cluster_owner = c',
      'repository_cipher = none',
    ].join('\n'),
    '/etc/bart.cfg',
  );
  const [db, plain] = config.servers;
  assert.equal(db!.repositoryCipher, 'aes-256-gcm', 'inherited from [BART]');
  assert.deepEqual(db!.repositoryCipherPassFile, { path: '/etc/bart/pass', at: '/etc/bart.cfg:5' });
  assert.equal(plain!.repositoryCipher, 'none', 'a server overrides [BART]');
});
