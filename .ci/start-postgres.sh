#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the tests of parallel Optuna workers.
#
# Installs the Debian package `postgresql` when its binaries are missing, creates a data folder
# (trust authentication, loopback only), starts the server, creates the database, and exports
# FASHION_TEST_POSTGRES_URL when sourced (what .ci/run does) or prints the URL when run.
# Idempotent: a running server and an existing database are reused.
#
#   source .ci/start-postgres.sh          # exports FASHION_TEST_POSTGRES_URL
#   .ci/start-postgres.sh                 # prints postgresql://postgres@127.0.0.1:55432/fashion_test
#   .ci/start-postgres.sh stop            # stops the server and deletes its data folder
#
# Settings: FASHION_PG_DIR (/tmp/fashion-ci-postgres), FASHION_PG_PORT (55432), FASHION_PG_DB (fashion_test).

# Everything runs in a subshell, so `set -e` and the helpers do not leak into a shell that sources this.
_fashion_pg() (
  set -euo pipefail
  dir="${FASHION_PG_DIR:-/tmp/fashion-ci-postgres}"
  port="${FASHION_PG_PORT:-55432}"
  db="${FASHION_PG_DB:-fashion_test}"
  say() { echo "start-postgres: $*" >&2; }

  bindir() {  # the newest installed server's binaries (Debian keeps them off PATH)
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$d" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
    d="$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")"
    [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ] && echo "$d"
  }

  bin="$(bindir || true)"
  if [ -z "$bin" ]; then
    [ "$(id -u)" = 0 ] || { say "PostgreSQL is not installed and installing needs root (apt-get install postgresql)"; exit 1; }
    say "installing the Debian package postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    bin="$(bindir)"
  fi

  # The server refuses to run as root: as root, run it as the package's `postgres` user.
  as_server() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
  }

  if [ "${1:-}" = stop ]; then
    if [ -f "$dir/data/PG_VERSION" ]; then
      as_server "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    fi
    rm -rf "$dir"
    say "stopped; removed $dir"
    exit 0
  fi

  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    say "initdb $dir/data"
    as_server "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  if ! as_server "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    say "starting the server on 127.0.0.1:$port (log: $dir/server.log)"
    # listen on loopback only; the unix socket goes into the data folder, not /var/run
    as_server "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200" start >&2 \
      || { tail -n 20 "$dir/server.log" >&2; exit 1; }
  fi
  psql=("$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -tAq)
  if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    "${psql[@]}" -c "CREATE DATABASE \"$db\"" >&2
    say "created database $db"
  fi
  echo "postgresql://postgres@127.0.0.1:$port/$db"
)

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  # sourced: export the URL; a failure returns non-zero to the caller (CI stops there, loudly)
  if _fashion_pg_url="$(_fashion_pg "$@")"; then
    if [ "${1:-}" != stop ]; then
      export FASHION_TEST_POSTGRES_URL="$_fashion_pg_url"
      echo "FASHION_TEST_POSTGRES_URL=$FASHION_TEST_POSTGRES_URL"
    fi
    unset _fashion_pg_url
  else
    unset _fashion_pg_url
    return 1
  fi
else
  _fashion_pg "$@"
fi
