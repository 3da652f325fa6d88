/*
 * Concept: CRC-32C at the speed of the hardware, for the file checksums of backups and restores, the WAL scanner and
 * the incremental engine (src/util/crc32c.ts picks it, else @node-rs/crc32; both give the same values).
 *
 * Why native: @node-rs/crc32 runs the SSE4.2 crc32 instruction as one dependency chain (each step waits for the
 * previous result: ~4.5 GiB/s measured here), which made CRC-32C the largest single cost on a backup's main thread
 * (~0.65 CPU-s per 3 GB). The instruction takes 3 cycles but can start one per cycle, so three independent chains
 * over three consecutive stretches of a block run ~3 times as fast; their results are joined with the CRC's
 * linearity: the state after A|B|C is adv(adv(crc(A)) ^ crc(B)) ^ crc(C), where crc(B) and crc(C) start from a zero
 * state and adv() is the state's advance over one stretch of zero bytes (tables made at load time, ~1 ms).
 *
 * crc32c(data, initial) takes and returns finalised values, as @node-rs/crc32's crc32c does: crc32c(b, crc32c(a, 0))
 * equals crc32c(a|b, 0). Exported only on x86-64 with SSE4.2 (checked at load); elsewhere the module exports nothing
 * and the caller uses @node-rs/crc32.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <node_api.h>

#include "napi-bytes.h"

#if defined(__x86_64__)
#include <nmmintrin.h>

static uint64_t load64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* Bytes of each of the three stretches of a block: long ones for big buffers (fewer joins), short ones for what is
 * left and for WAL records of a few KiB (full-page images). */
#define LONG_STRETCH 4096
#define SHORT_STRETCH 512

/* advance tables, one per stretch length: [j][v] is the state with byte j = v (others 0) advanced over the stretch's
 * zero bytes; adv() is linear, so any state's advance is the XOR of its four bytes' entries. */
static uint32_t ADVANCE_LONG[4][256];
static uint32_t ADVANCE_SHORT[4][256];

__attribute__((target("sse4.2"))) static uint32_t advance_over_zeros(uint32_t state, size_t zeros) {
  uint64_t s = state;
  for (size_t i = 0; i < zeros / 8; i++) s = _mm_crc32_u64(s, 0);
  return (uint32_t)s;
}

static uint32_t advance(uint32_t table[4][256], uint32_t s) {
  return table[0][s & 0xff] ^ table[1][(s >> 8) & 0xff] ^ table[2][(s >> 16) & 0xff] ^ table[3][s >> 24];
}

/* Runs three chains over data[0, 3 * stretch) from state s; the state after it. */
__attribute__((target("sse4.2"), always_inline)) static inline uint32_t three_chains(uint32_t s,
                                                                                     const unsigned char *data,
                                                                                     size_t stretch,
                                                                                     uint32_t table[4][256]) {
  uint64_t a = s, b = 0, c = 0;
  const unsigned char *pa = data, *pb = data + stretch, *pc = data + 2 * stretch;
  for (size_t i = 0; i < stretch; i += 8) {
    a = _mm_crc32_u64(a, load64(pa + i));
    b = _mm_crc32_u64(b, load64(pb + i));
    c = _mm_crc32_u64(c, load64(pc + i));
  }
  return advance(table, advance(table, (uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)c;
}

/* Continues the raw (not finalised) state over data[0, length). */
__attribute__((target("sse4.2"))) static uint32_t crc32c_raw(uint32_t state, const unsigned char *data,
                                                             size_t length) {
  uint64_t s = state;
  /* Single steps up to an 8-byte boundary, so the three chains read aligned words. */
  while (length > 0 && ((uintptr_t)data & 7) != 0) {
    s = _mm_crc32_u8((uint32_t)s, *data++);
    length--;
  }
  while (length >= 3 * LONG_STRETCH) {
    s = three_chains((uint32_t)s, data, LONG_STRETCH, ADVANCE_LONG);
    data += 3 * LONG_STRETCH;
    length -= 3 * LONG_STRETCH;
  }
  while (length >= 3 * SHORT_STRETCH) {
    s = three_chains((uint32_t)s, data, SHORT_STRETCH, ADVANCE_SHORT);
    data += 3 * SHORT_STRETCH;
    length -= 3 * SHORT_STRETCH;
  }
  while (length >= 8) {
    s = _mm_crc32_u64(s, load64(data));
    data += 8;
    length -= 8;
  }
  while (length > 0) {
    s = _mm_crc32_u8((uint32_t)s, *data++);
    length--;
  }
  return (uint32_t)s;
}

/* crc32c(data: Uint8Array, initial: number) → number (finalised, unsigned). */
static napi_value crc32c(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  unsigned char *base = NULL;
  size_t length = 0;
  uint32_t initial = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      !bytes_of(env, argv[0], &base, &length) ||
      (argc >= 2 && napi_get_value_uint32(env, argv[1], &initial) != napi_ok)) {
    napi_throw_type_error(env, NULL, "crc32c: expects a Uint8Array and an optional initial CRC (number)");
    return NULL;
  }
  uint32_t state = crc32c_raw(~initial, base, length);
  napi_value result;
  napi_create_uint32(env, ~state, &result);
  return result;
}

static void make_tables(void) {
  for (int j = 0; j < 4; j++)
    for (uint32_t v = 0; v < 256; v++) {
      ADVANCE_LONG[j][v] = advance_over_zeros(v << (8 * j), LONG_STRETCH);
      ADVANCE_SHORT[j][v] = advance_over_zeros(v << (8 * j), SHORT_STRETCH);
    }
}

/* Once per process: worker threads load the addon too, and must not rewrite tables another thread reads. */
static pthread_once_t tables_made = PTHREAD_ONCE_INIT;

static napi_value init(napi_env env, napi_value exports) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("sse4.2")) return exports;
  pthread_once(&tables_made, make_tables);
  napi_value fn;
  napi_create_function(env, "crc32c", NAPI_AUTO_LENGTH, crc32c, NULL, &fn);
  napi_set_named_property(env, exports, "crc32c", fn);
  return exports;
}
#else
static napi_value init(napi_env env, napi_value exports) {
  (void)env;
  return exports;
}
#endif

NAPI_MODULE(pgbart_crc32c, init)
