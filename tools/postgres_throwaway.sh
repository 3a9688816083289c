#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests and for trying search workers on one machine.
#
#   url=$(bash tools/postgres_throwaway.sh start /tmp/pg)   # prints postgresql://hpjax@127.0.0.1:PORT/hpjax
#   bash tools/postgres_throwaway.sh stop /tmp/pg
#
# A new cluster in DIR (which must not hold one), listening on 127.0.0.1 only, on a free port,
# trusting local connections, without fsync (nothing in it is meant to outlive it). Run as
# root, the server runs as the postgres user (PostgreSQL refuses root). Needs PostgreSQL's
# initdb and pg_ctl on PATH or under /usr/lib/postgresql/*/bin.
set -euo pipefail
action="${1:?usage: postgres_throwaway.sh start|stop DIR}"
dir="${2:?usage: postgres_throwaway.sh start|stop DIR}"
bin="$(dirname "$(readlink -f "$(command -v pg_ctl 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/pg_ctl | tail -1)")")"
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "$action" in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    as_owner "$bin/initdb" -D "$dir/data" -U hpjax -A trust --no-sync >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o \
      "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
      start >/dev/null
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U hpjax hpjax
    echo "postgresql://hpjax@127.0.0.1:$port/hpjax"
    ;;
  stop)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
    ;;
  *)
    echo "usage: postgres_throwaway.sh start|stop DIR" >&2
    exit 2
    ;;
esac
