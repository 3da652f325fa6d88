// LSN: PostgreSQL log sequence numbers as bigint, parsed, checked and formatted.

/**
 * PostgreSQL log sequence numbers. An LSN is a 64-bit byte position in the WAL stream, written
 * `X/Y` (two hex halves). We keep LSNs as bigint so arithmetic never loses precision.
 */
export type Lsn = bigint;

/** Parses `16/B374D848` into a bigint; throws on anything else. */
export function parseLsn(text: string): Lsn {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text.trim());
  if (!m) throw new Error(`invalid LSN "${text}": expected the form X/Y with hexadecimal X and Y (e.g. 0/1A2B3C4)`);
  return (BigInt('0x' + m[1]) << 32n) | BigInt('0x' + m[2]);
}

/** True when `text` is a well-formed LSN. */
export function isLsn(text: string): boolean {
  return /^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/.test(text.trim());
}

/** Formats a bigint LSN as PostgreSQL does: upper-case hex, no padding. */
export function formatLsn(lsn: Lsn): string {
  const hi = Number(lsn >> 32n);
  const lo = Number(lsn & 0xffffffffn);
  return `${hi.toString(16).toUpperCase()}/${lo.toString(16).toUpperCase()}`;
}
