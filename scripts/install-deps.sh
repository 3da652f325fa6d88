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

# The Debian package creates the unprivileged `postgres` user that runs test clusters.
id postgres >/dev/null 2>&1 || { echo "pgbart: the postgres OS user is missing" >&2; exit 1; }

if [ -f package-lock.json ]; then npm ci --no-fund --no-audit; else npm install --no-fund --no-audit; fi
