/*
 * Concept: where a buffer lies in memory, for direct I/O (src/util/direct-writer.ts).
 *
 * Why native: a write with O_DIRECT needs its buffer at an address that is a multiple of the device's block size,
 * and JavaScript cannot see addresses. misalignment(buffer, alignment) says how far the buffer's first byte is past
 * the previous multiple of `alignment` (a power of two), so the caller can take an aligned view of a slightly larger
 * buffer. Nothing else: memory stays V8's, owned and freed as any Buffer.
 */
#include <stdint.h>

#include <node_api.h>

#include "napi-bytes.h"

/* misalignment(data: Uint8Array, alignment: number) → number: address(data) mod alignment. */
static napi_value misalignment(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  unsigned char *base = NULL;
  size_t length = 0;
  uint32_t alignment = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
      !bytes_of(env, argv[0], &base, &length) || napi_get_value_uint32(env, argv[1], &alignment) != napi_ok ||
      alignment == 0 || (alignment & (alignment - 1)) != 0) {
    napi_throw_type_error(env, NULL, "misalignment: expects a Uint8Array and a power of two");
    return NULL;
  }
  napi_value result;
  napi_create_uint32(env, (uint32_t)((uintptr_t)base & (alignment - 1)), &result);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "misalignment", NAPI_AUTO_LENGTH, misalignment, NULL, &fn);
  napi_set_named_property(env, exports, "misalignment", fn);
  return exports;
}

NAPI_MODULE(pgbart_aligned, init)
