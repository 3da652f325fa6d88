// Concept: in-place AES-256-GCM — the small native addon of native/aes-gcm.c when it was built, else nothing (the
// callers then use node:crypto; both produce the same bytes).

import { loadNativeAddon } from '../../util/native-addon.js';

/**
 * AES-256-GCM over the caller's buffer, with no fresh memory per call. Node's cipher API returns each update in a new
 * zero-filled buffer that is shrunk (a copy) and copied back: measured here (perf, 1.7 GB sealed in the sealing
 * worker) that took 0.9–1.2 CPU-s against 0.57 for the same work in place, on the busiest path of an encrypted
 * backup on two cores.
 */
export interface InPlaceGcm {
  /** Encrypts `data` in place with AES-256-GCM (32-byte key, 12-byte nonce) and writes its tag into `tag` (16). */
  seal(key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, data: Uint8Array, tag: Uint8Array): void;
  /**
   * Decrypts `data` in place; true when `tag` authenticates it (with the key, nonce and associated data). After
   * false, `data` holds bytes that must not be used.
   */
  open(key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, data: Uint8Array, tag: Uint8Array): boolean;
}

let loaded: { addon: InPlaceGcm | undefined } | undefined;

/**
 * The addon, or undefined when it was not built (no C compiler or no Node headers at build time) or
 * `PGBART_NATIVE_GCM=off` asks for node:crypto (the tests compare both paths; the benchmark can time both).
 * Loaded at the first call, not at import: commands that never seal or open a chunk (an unencrypted
 * ARCHIVE-PUSH, once per WAL segment) do not pay for the dlopen.
 */
export function inPlaceGcm(): InPlaceGcm | undefined {
  loaded ??= { addon: loadAddon() };
  return loaded.addon;
}

function loadAddon(): InPlaceGcm | undefined {
  const addon = loadNativeAddon('aes-gcm', 'PGBART_NATIVE_GCM');
  return typeof addon?.seal === 'function' && typeof addon.open === 'function'
    ? (addon as unknown as InPlaceGcm)
    : undefined;
}
