#!/usr/bin/env bash
# Builds pgbart's two small native addons (part of `npm run build`), both optional: without a C compiler or Node's
# headers it says so and pgbart uses the portable path instead (same bytes, more CPU). scripts/install-deps.sh
# installs gcc.
#   native/aes-gcm.c → native/build/aes-gcm.node: in-place AES-256-GCM (src/storage/encryption/native-gcm.ts),
#     else node:crypto.
#   native/crc32c.c → native/build/crc32c.node: CRC-32C in three chains (src/util/crc32c.ts), else @node-rs/crc32.
set -uo pipefail
cd "$(dirname "$0")/.."
# Node's own headers (node_api.h, and the OpenSSL headers of the OpenSSL it links): <prefix>/include/node.
include=$(node -p "require('node:path').resolve(process.execPath, '../../include/node')")
if ! command -v gcc >/dev/null; then
  echo "pgbart: no C compiler (gcc): encrypted repositories use node:crypto, CRC-32C @node-rs/crc32 (run scripts/install-deps.sh)" >&2
  exit 0
fi
if [ ! -f "$include/node_api.h" ]; then
  echo "pgbart: Node's headers are not in $include: encrypted repositories use node:crypto, CRC-32C @node-rs/crc32" >&2
  exit 0
fi
mkdir -p native/build

# build NAME FALLBACK: compiles native/NAME.c into native/build/NAME.node (replaced only by a complete build).
build() {
  local out="native/build/$1.node"
  # -z now resolves every symbol when the addon loads, so a node without one (aes-gcm's OpenSSL symbols are left
  # undefined: they resolve to the OpenSSL inside the node process) makes the load fail, not a later call.
  if ! gcc -O2 -Wall -Wextra -Werror -shared -fPIC -Wl,-z,now -I"$include" -o "$out.tmp" "native/$1.c"; then
    rm -f "$out.tmp"
    echo "pgbart: native/$1.c did not build: $2" >&2
    return 0
  fi
  mv "$out.tmp" "$out"
}

if [ -f "$include/openssl/evp.h" ]; then
  build aes-gcm "encrypted repositories use node:crypto"
else
  echo "pgbart: Node's OpenSSL headers are not in $include: encrypted repositories use node:crypto" >&2
fi
build crc32c "CRC-32C uses @node-rs/crc32"
build aligned "large files are written through the page cache (no direct I/O)"
