#!/usr/bin/env bash
# Makes sure a local PostgreSQL answers on 127.0.0.1:5432 and prints a superuser URL for tests.
# Installs Debian's postgresql when absent and starts the cluster when it is down (CI runs as
# root on a fresh machine). Idempotent.
set -euo pipefail
log() { echo "postgres.sh: $*" >&2; }
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  log "installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -q "^$ver main$"; then
  log "creating cluster $ver/main"
  pg_createcluster "$ver" main >&2
fi
if ! pg_lsclusters -h | grep -q "^$ver *main .* online"; then
  log "starting cluster $ver/main"
  pg_ctlcluster "$ver" main start >&2
fi
port=$(pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $3}')
for _ in $(seq 1 50); do
  pg_isready -q -h 127.0.0.1 -p "$port" && break
  sleep 0.2
done
# Tests run many servers at once, each with its own pool: make room for them.
if [ "$(su postgres -c "psql -tAq -p $port -c 'SHOW max_connections'")" -lt 400 ]; then
  log "raising max_connections to 400"
  su postgres -c "psql -q -p $port -c 'ALTER SYSTEM SET max_connections = 400'" >/dev/null
  pg_ctlcluster "$ver" main restart >&2
fi
# A password lets tests connect over TCP without touching pg_hba.conf.
su postgres -c "psql -q -p $port -c \"ALTER USER postgres PASSWORD 'batchai'\"" >/dev/null
# Drop databases earlier test runs left behind.
if [ "${BATCHAI_PG_CLEAN:-1}" = 1 ]; then
  su postgres -c "psql -tAq -p $port -c \"SELECT datname FROM pg_database WHERE datname ~ '^batchai_(test|store|bench|sdk)_'\"" |
    while read -r db; do
      [ -n "$db" ] && su postgres -c "dropdb -p $port --if-exists '$db'" >&2 || true
    done
fi
echo "postgres://postgres:batchai@127.0.0.1:$port/postgres"
