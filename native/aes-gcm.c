/*
 * Concept: in-place AES-256-GCM for the encrypted repository (src/storage/encryption/native-gcm.ts).
 *
 * Why native: Node's cipher API returns every update in a fresh, zero-filled buffer that is then shrunk (a copy) and
 * copied back by the caller; measured here that costs as much CPU as the AES-GCM work itself, on the busiest path of
 * an encrypted backup. These two functions run OpenSSL's EVP AES-256-GCM over the caller's buffer in place. They use
 * the OpenSSL that Node itself links (its symbols are resolved in the node process), so the cipher is the one
 * node:crypto runs; the object format does not change (the tests compare both paths byte for byte).
 */
#include <limits.h>
#include <string.h>

#include <node_api.h>
#include <openssl/evp.h>

#include "napi-bytes.h"

#define KEY_BYTES 32
#define NONCE_BYTES 12
#define TAG_BYTES 16

/* The five arguments of both functions: key, nonce, associated data, the data (changed in place) and the tag. */
struct gcm_args {
  unsigned char *key, *nonce, *aad, *data, *tag;
  size_t key_length, nonce_length, aad_length, data_length, tag_length;
};

static int read_args(napi_env env, napi_callback_info info, struct gcm_args *a, const char *name) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 5 ||
      !bytes_of(env, argv[0], &a->key, &a->key_length) || !bytes_of(env, argv[1], &a->nonce, &a->nonce_length) ||
      !bytes_of(env, argv[2], &a->aad, &a->aad_length) || !bytes_of(env, argv[3], &a->data, &a->data_length) ||
      !bytes_of(env, argv[4], &a->tag, &a->tag_length) || a->key_length != KEY_BYTES ||
      a->nonce_length != NONCE_BYTES || a->tag_length != TAG_BYTES || a->aad_length > INT_MAX ||
      a->data_length > INT_MAX) {
    napi_throw_type_error(env, NULL, name);
    return 0;
  }
  return 1;
}

/* seal(key, nonce, aad, data, tag): encrypts data in place and writes its tag into `tag`. */
static napi_value seal(napi_env env, napi_callback_info info) {
  struct gcm_args a;
  if (!read_args(env, info, &a, "aes-gcm seal: expects key (32 bytes), nonce (12), aad, data, tag (16)")) return NULL;
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  int n = 0;
  int ok = ctx != NULL && EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, a.key, a.nonce) == 1 &&
           (a.aad_length == 0 || EVP_EncryptUpdate(ctx, NULL, &n, a.aad, (int)a.aad_length) == 1) &&
           (a.data_length == 0 || EVP_EncryptUpdate(ctx, a.data, &n, a.data, (int)a.data_length) == 1) &&
           EVP_EncryptFinal_ex(ctx, a.data + a.data_length, &n) == 1 &&
           EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_BYTES, a.tag) == 1;
  EVP_CIPHER_CTX_free(ctx);
  if (!ok) napi_throw_error(env, NULL, "aes-gcm seal: OpenSSL failed");
  return NULL;
}

/*
 * open(key, nonce, aad, data, tag): decrypts data in place; true when the tag authenticates it. On false the data
 * holds garbage that must not be used (as with node:crypto, the plaintext is only trusted after the tag check).
 */
static napi_value open_in_place(napi_env env, napi_callback_info info) {
  struct gcm_args a;
  if (!read_args(env, info, &a, "aes-gcm open: expects key (32 bytes), nonce (12), aad, data, tag (16)")) return NULL;
  unsigned char tag[TAG_BYTES];
  memcpy(tag, a.tag, TAG_BYTES); /* the tag may lie right after the data in the same buffer */
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  int n = 0;
  int ready = ctx != NULL && EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, a.key, a.nonce) == 1 &&
              (a.aad_length == 0 || EVP_DecryptUpdate(ctx, NULL, &n, a.aad, (int)a.aad_length) == 1) &&
              (a.data_length == 0 || EVP_DecryptUpdate(ctx, a.data, &n, a.data, (int)a.data_length) == 1) &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, tag) == 1;
  int authentic = ready && EVP_DecryptFinal_ex(ctx, a.data + a.data_length, &n) > 0;
  EVP_CIPHER_CTX_free(ctx);
  if (!ready) {
    napi_throw_error(env, NULL, "aes-gcm open: OpenSSL failed");
    return NULL;
  }
  napi_value result;
  napi_get_boolean(env, authentic, &result);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "seal", NAPI_AUTO_LENGTH, seal, NULL, &fn);
  napi_set_named_property(env, exports, "seal", fn);
  napi_create_function(env, "open", NAPI_AUTO_LENGTH, open_in_place, NULL, &fn);
  napi_set_named_property(env, exports, "open", fn);
  return exports;
}

NAPI_MODULE(pgbart_aes_gcm, init)
