// Formatting: byte sizes, timestamps, durations and tables printed the way BART printed them.

/** Human-readable byte sizes as BART printed them (`4.61 MB`, `0.00 bytes`). */
export function formatBytes(bytes: number): string {
  const units = ['bytes', 'kB', 'MB', 'GB', 'TB', 'PB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(2)} ${units[unit]}`;
}

/** `YYYY-MM-DD HH:MM:SS TZ` in the local time zone, the timestamp form BART shows. */
export function formatTimestamp(date: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  const tz = localZoneAbbreviation(date);
  return `${date.getFullYear()}-${p(date.getMonth() + 1)}-${p(date.getDate())} ${p(date.getHours())}:${p(date.getMinutes())}:${p(date.getSeconds())} ${tz}`;
}

/** Short name of the local time zone (e.g. `UTC`, `CET`), or a numeric offset when none is known. */
export function localZoneAbbreviation(date: Date): string {
  const part = new Intl.DateTimeFormat('en-US', { timeZoneName: 'short' })
    .formatToParts(date)
    .find((p) => p.type === 'timeZoneName');
  return part?.value ?? 'UTC';
}

/** Seconds as `1m 23.4s`, or `4.56s` under a minute. */
export function formatDuration(ms: number): string {
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(2)}s`;
  const m = Math.floor(s / 60);
  const rest = s - m * 60;
  if (m < 60) return `${m}m ${rest.toFixed(1)}s`;
  const h = Math.floor(m / 60);
  return `${h}h ${m - h * 60}m ${Math.round(rest)}s`;
}

/** Pads every row's cells to the widest cell of its column, BART's table style. */
export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('   ')
      .trimEnd();
  return [line(header), '', ...rows.map(line)].join('\n');
}
