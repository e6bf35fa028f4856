#!/usr/bin/env bash
# Test set-up for the catalogue tests on PostgreSQL: Debian's postgresql package (installed when
# missing), a throw-away cluster in a temporary folder on a free port, started now and left
# running for the test run; prints the database URL for PADIM_TEST_POSTGRES.
# Usage: eval "$(bash tests/setup_postgres.sh)"   (sets PADIM_TEST_POSTGRES)
set -euo pipefail
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ]; then
  echo "installing Debian's postgresql package for the catalogue tests" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    postgresql >/dev/null
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
port=${PADIM_PG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
data=$(mktemp -d /tmp/padim-pg.XXXXXX)
if [ "$(id -u)" -eq 0 ]; then  # initdb refuses root: the cluster belongs to postgres
  chown postgres:postgres "$data"
  run() { su postgres -s /bin/sh -c "$*"; }
else
  run() { sh -c "$*"; }
fi
run "'$bin/initdb' -D '$data/db' -A trust -U postgres" >/dev/null
run "'$bin/pg_ctl' -D '$data/db' -l '$data/log' -w -o \"-k '$data' -p $port -c listen_addresses=127.0.0.1 -c fsync=on\" start" >/dev/null
"$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE padim_test" >/dev/null
echo "export PADIM_TEST_POSTGRES=postgresql+psycopg://postgres@127.0.0.1:$port/padim_test"
echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($data)" >&2
