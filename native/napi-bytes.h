/*
 * Concept: the one argument check the addons share — a Uint8Array (a Buffer is one) and where its bytes are.
 */
#ifndef PGBART_NAPI_BYTES_H
#define PGBART_NAPI_BYTES_H

#include <node_api.h>

/* The bytes of a Uint8Array argument in *data and *length; 0 when it is anything else. */
static inline int bytes_of(napi_env env, napi_value value, unsigned char **data, size_t *length) {
  bool is_typed_array = false;
  if (napi_is_typedarray(env, value, &is_typed_array) != napi_ok || !is_typed_array) return 0;
  napi_typedarray_type type;
  void *base = NULL;
  napi_value array_buffer;
  size_t offset;
  if (napi_get_typedarray_info(env, value, &type, length, &base, &array_buffer, &offset) != napi_ok) return 0;
  if (type != napi_uint8_array) return 0;
  *data = base;
  return 1;
}

#endif
