// Configuration: backup name templates checked and expanded (%year ... %second).

/** Longest backup name BART accepts, before and after template expansion. */
export const MAX_BACKUP_NAME_LENGTH = 49;

const TEMPLATE_VARIABLES = ['%year', '%month', '%day', '%hour', '%minute', '%second'] as const;

/** Why `name` cannot be a backup name template, or undefined when it can. */
export function backupNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'a backup name must not be empty';
  if (name.length > MAX_BACKUP_NAME_LENGTH) {
    return `a backup name may have at most ${MAX_BACKUP_NAME_LENGTH} characters, this one has ${name.length}`;
  }
  if (/[\s/,\\]/.test(name)) return 'a backup name may not contain spaces, "/", "\\" or ","';
  if (/^\d+$/.test(name)) return 'a backup name may not be all digits (it would look like a backup identifier)';
  if (name.toLowerCase() === 'all') return '"all" is reserved and cannot be a backup name';
  const unknown = name
    .replace(/%%/g, '')
    .match(/%[a-z]*/gi)
    ?.filter((v) => !(TEMPLATE_VARIABLES as readonly string[]).includes(v));
  if (unknown && unknown.length > 0) {
    return `unknown template variable "${unknown[0]}"; allowed: ${TEMPLATE_VARIABLES.join(' ')} and %% for a literal %`;
  }
  return undefined;
}

/** Expands %year %month %day %hour %minute %second (local time) and %% in a backup name template. */
export function expandBackupName(template: string, at: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  const values: Record<string, string> = {
    '%year': String(at.getFullYear()),
    '%month': p(at.getMonth() + 1),
    '%day': p(at.getDate()),
    '%hour': p(at.getHours()),
    '%minute': p(at.getMinutes()),
    '%second': p(at.getSeconds()),
  };
  return template.replace(/%%|%year|%month|%day|%hour|%minute|%second/g, (v) => (v === '%%' ? '%' : values[v]!));
}
