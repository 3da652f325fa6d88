#!/usr/bin/env bash
# Builds native/aes-gcm.c into native/build/aes-gcm.node: in-place AES-256-GCM for encrypted repositories
# (src/storage/encryption/native-gcm.ts). Part of `npm run build`. Optional: without a C compiler or Node's headers
# it says so and pgbart uses node:crypto instead (same bytes, more CPU). scripts/install-deps.sh installs gcc.
set -uo pipefail
cd "$(dirname "$0")/.."
out=native/build/aes-gcm.node
# Node's own headers (node_api.h, and the OpenSSL headers of the OpenSSL it links): <prefix>/include/node.
include=$(node -p "require('node:path').resolve(process.execPath, '../../include/node')")
if ! command -v gcc >/dev/null; then
  echo "pgbart: no C compiler (gcc): encrypted repositories use node:crypto (run scripts/install-deps.sh)" >&2
  exit 0
fi
if [ ! -f "$include/node_api.h" ] || [ ! -f "$include/openssl/evp.h" ]; then
  echo "pgbart: Node's headers are not in $include: encrypted repositories use node:crypto" >&2
  exit 0
fi
mkdir -p native/build
# The OpenSSL symbols are left undefined: they resolve to the OpenSSL inside the node process at load time. -z now
# resolves them all when it loads, so a node without them makes the load fail (node:crypto is used), not a later call.
if ! gcc -O2 -Wall -Wextra -Werror -shared -fPIC -Wl,-z,now -I"$include" -o "$out.tmp" native/aes-gcm.c; then
  rm -f "$out.tmp"
  echo "pgbart: native/aes-gcm.c did not build: encrypted repositories use node:crypto" >&2
  exit 0
fi
mv "$out.tmp" "$out"
