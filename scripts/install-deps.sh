#!/usr/bin/env bash
# Installs the Debian packages pgbart's demo and tests need (run as root on Debian 12), then the npm
# dependencies. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || packages+=(postgresql-15)
[ -x /usr/lib/postgresql/15/bin/pg_waldump ] || packages+=(postgresql-client-15)
command -v lz4 >/dev/null || packages+=(lz4)
command -v zstd >/dev/null || packages+=(zstd)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || packages+=(openssh-server)
command -v ssh >/dev/null || packages+=(openssh-client)
command -v getent >/dev/null || packages+=(libc-bin)
# In-place AES-GCM for encrypted repositories (native/aes-gcm.c, built by npm run build; optional at run time).
command -v gcc >/dev/null || packages+=(gcc libc6-dev)
# A real S3 server for the object-storage tests: Ceph RADOS Gateway needs a monitor and an OSD beside it.
command -v radosgw >/dev/null || packages+=(radosgw)
command -v ceph-mon >/dev/null || packages+=(ceph-mon)
command -v ceph-osd >/dev/null || packages+=(ceph-osd)

if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "pgbart: these Debian packages are missing: ${packages[*]} (run this script as root)" >&2
    exit 1
  fi
  echo "pgbart: installing Debian packages: ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

# archive_command and restore_command run bart as the cluster's OS user (postgres), and bart itself
# switches to the BART user: both must be able to reach this checkout. A clone under a 0700 home
# directory (e.g. /root) is made traversable (o+x only: nothing becomes listable or readable).
if [ "$(id -u)" -eq 0 ]; then
  dir=$(pwd -P)
  while [ "$dir" != "/" ]; do
    [ -n "$(find "$dir" -maxdepth 0 -perm -o=x)" ] || chmod o+x "$dir"
    dir=$(dirname "$dir")
  done
fi

# The Debian package creates the unprivileged `postgres` user that runs test clusters.
id postgres >/dev/null 2>&1 || { echo "pgbart: the postgres OS user is missing" >&2; exit 1; }

if [ -f package-lock.json ]; then npm ci --no-fund --no-audit; else npm install --no-fund --no-audit; fi
