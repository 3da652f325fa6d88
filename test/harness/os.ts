// Test harness: the test OS user, temp directories and running commands as that user.

import { execFileSync, spawn, type SpawnOptions } from 'node:child_process';
import { chownSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The unprivileged OS user that runs test clusters (and bart itself in tests) when tests run as root. */
export const TEST_OS_USER = 'postgres';

interface Ids {
  uid: number;
  gid: number;
}
let cachedIds: Ids | undefined;

/** uid/gid of {@link TEST_OS_USER}, or undefined when we are not root (then everything runs as us). */
export function testUserIds(): Ids | undefined {
  if (process.getuid?.() !== 0) return undefined;
  if (!cachedIds) {
    const f = execFileSync('getent', ['passwd', TEST_OS_USER], { encoding: 'utf8' }).trim().split(':');
    cachedIds = { uid: Number(f[2]), gid: Number(f[3]) };
  }
  return cachedIds;
}

/** Name of the OS user that owns test clusters and catalogs. */
export function testUserName(): string {
  return testUserIds() ? TEST_OS_USER : execFileSync('id', ['-un'], { encoding: 'utf8' }).trim();
}

/** A fresh temp directory owned by the test user. */
export function makeTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `pgbart-${prefix}-`));
  const ids = testUserIds();
  if (ids) chownSync(dir, ids.uid, ids.gid);
  return dir;
}

/** Removes a directory tree, ignoring one that is already gone. */
export function removeTree(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** Result of a finished child process. */
export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program (as the test user when root) and collects its output; never throws on exit code. */
export function run(
  cmd: string,
  args: string[],
  opts: SpawnOptions & { asTestUser?: boolean; input?: string } = {},
): Promise<RunResult> {
  const ids = opts.asTestUser === false ? undefined : testUserIds();
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, {
      ...opts,
      ...(ids ? { uid: ids.uid, gid: ids.gid } : {}),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code, stdout, stderr }));
    child.stdin!.on('error', () => undefined); // a program that exits without reading its input
    child.stdin!.end(opts.input ?? '');
  });
}

/** Like {@link run} but throws with the output when the exit code is not 0. */
export async function runOk(
  cmd: string,
  args: string[],
  opts: SpawnOptions & { asTestUser?: boolean; input?: string } = {},
): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r;
}
