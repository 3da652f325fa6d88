// WAL streamer: WAL received over a physical replication connection while a backup runs (xlog_method = stream).

import { closeSync, ftruncateSync, openSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { segmentName } from '../wal/segment-name.js';
import { replicationClient } from './replication-client.js';
import { BartError, errorMessage } from '../util/errors.js';
import { log } from '../util/log.js';
import { formatLsn, type Lsn } from '../util/lsn.js';
import { writeAllSync } from '../util/write-all.js';

/** Where to stream from; the password comes from ~/.pgpass or PGPASSWORD. */
export interface StreamSource {
  host: string;
  port: number;
  user: string;
}

/** The internals of node-postgres we need for the COPY BOTH sub-protocol of streaming replication. */
interface ReplicationConnection {
  on(event: 'copyData', listener: (msg: { chunk: Buffer }) => void): void;
  sendCopyFromChunk(chunk: Buffer): void;
  endCopyFrom(): void;
}

const MICROS_2000 = 946684800000n * 1000n; // PostgreSQL epoch (2000-01-01) in Unix microseconds

/**
 * Receives WAL over a physical replication connection while a backup runs (xlog_method = stream),
 * the way `pg_basebackup -X stream` does: a temporary replication slot created before the backup
 * starts keeps the server from recycling WAL we still need; segments are written full size (the
 * tail of the last one stays zero) into `outDir`.
 */
export class WalStreamer {
  private received: Lsn = 0n;
  private fd: number | undefined;
  private fdSegNo = -1n;
  private readonly segments = new Set<string>();
  private streaming: Promise<unknown> | undefined;
  private failure: unknown;
  private statusTimer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly client: pg.Client,
    private readonly slot: string,
    readonly timeline: number,
    private readonly segmentSize: number,
    private readonly outDir: string,
  ) {}

  /** Opens the replication connection and creates the temporary slot (call before pg_backup_start). */
  static async open(source: StreamSource, segmentSize: number, outDir: string): Promise<WalStreamer> {
    const client = replicationClient(source, 'pgbart wal stream', 10_000);
    try {
      await client.connect();
      const id = await client.query('IDENTIFY_SYSTEM');
      const timeline = Number((id.rows[0] as { timeline: string }).timeline);
      const slot = `pgbart_${process.pid}_${Date.now().toString(36)}`;
      await client.query(`CREATE_REPLICATION_SLOT ${slot} TEMPORARY PHYSICAL RESERVE_WAL`);
      return new WalStreamer(client, slot, timeline, segmentSize, outDir);
    } catch (err) {
      await client.end().catch(() => undefined);
      throw new BartError(
        `cannot open a replication connection to ${source.host}:${source.port} for xlog_method = stream: ${errorMessage(err)} (check pg_hba.conf "replication" entries and max_wal_senders)`,
      );
    }
  }

  /** Starts streaming from the beginning of the segment that holds `startLsn`. */
  begin(startLsn: Lsn): void {
    const from = startLsn - (startLsn % BigInt(this.segmentSize));
    this.received = from;
    const connection = (this.client as unknown as { connection: ReplicationConnection }).connection;
    connection.on('copyData', (msg) => {
      try {
        this.onCopyData(msg.chunk, connection);
      } catch (err) {
        this.failure ??= err;
      }
    });
    this.streaming = this.client
      .query(`START_REPLICATION SLOT ${this.slot} PHYSICAL ${formatLsn(from)} TIMELINE ${this.timeline}`)
      .catch((err) => {
        this.failure ??= err;
      });
    this.statusTimer = setInterval(() => this.sendStatus(connection), 1000);
  }

  private onCopyData(chunk: Buffer, connection: ReplicationConnection): void {
    if (chunk[0] === 0x77) {
      // XLogData: 'w', dataStart, walEnd, sendTime, then WAL bytes.
      let at = chunk.readBigUInt64BE(1);
      let data = chunk.subarray(25);
      while (data.length > 0) {
        const segSize = BigInt(this.segmentSize);
        const segNo = at / segSize;
        const offset = Number(at % segSize);
        const take = Math.min(data.length, this.segmentSize - offset);
        this.writeAt(segNo, offset, data.subarray(0, take));
        data = data.subarray(take);
        at += BigInt(take);
      }
      if (at > this.received) this.received = at;
    } else if (chunk[0] === 0x6b && chunk[17] === 1) {
      this.sendStatus(connection); // keepalive asking for a reply
    }
  }

  private writeAt(segNo: bigint, offset: number, data: Buffer): void {
    if (segNo !== this.fdSegNo) {
      if (this.fd !== undefined) closeSync(this.fd);
      const name = segmentName(this.timeline, segNo, this.segmentSize);
      const path = join(this.outDir, `${name}.partial`);
      this.fd = openSync(path, this.segments.has(name) ? 'r+' : 'w+', 0o600);
      if (!this.segments.has(name)) ftruncateSync(this.fd, this.segmentSize);
      this.segments.add(name);
      this.fdSegNo = segNo;
    }
    writeAllSync(this.fd!, data, offset);
  }

  private sendStatus(connection: ReplicationConnection): void {
    const msg = Buffer.alloc(34);
    msg[0] = 0x72; // 'r': standby status update
    msg.writeBigUInt64BE(this.received, 1);
    msg.writeBigUInt64BE(this.received, 9);
    msg.writeBigUInt64BE(0n, 17);
    msg.writeBigUInt64BE(BigInt(Date.now()) * 1000n - MICROS_2000, 25);
    msg[33] = 0;
    try {
      connection.sendCopyFromChunk(msg);
    } catch {
      /* connection gone: the stop reports it */
    }
  }

  /**
   * Waits until WAL up to `stopLsn` has arrived, ends streaming, and returns the segment files
   * (names, sorted) now complete in outDir.
   */
  async finish(stopLsn: Lsn, timeoutMs = 120_000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.received < stopLsn) {
      if (this.failure) throw new BartError(`WAL streaming failed: ${errorMessage(this.failure)}`);
      if (Date.now() > deadline)
        throw new BartError(
          `WAL streaming did not reach the backup's stop location ${formatLsn(stopLsn)} within ${timeoutMs / 1000} s (received up to ${formatLsn(this.received)})`,
        );
      await new Promise((r) => setTimeout(r, 20));
    }
    clearInterval(this.statusTimer);
    const connection = (this.client as unknown as { connection: ReplicationConnection }).connection;
    connection.endCopyFrom();
    await this.streaming;
    await this.close();
    const names = [...this.segments].sort();
    for (const name of names) renameSync(join(this.outDir, `${name}.partial`), join(this.outDir, name));
    log.debug(`streamed WAL ${names[0]} .. ${names[names.length - 1]} up to ${formatLsn(this.received)}`);
    return names;
  }

  /** Closes the connection (the temporary slot goes with it). */
  async close(): Promise<void> {
    clearInterval(this.statusTimer);
    if (this.fd !== undefined) {
      closeSync(this.fd);
      this.fd = undefined;
    }
    await this.client.end().catch(() => undefined);
  }
}
