#!/usr/bin/env bash
# A throwaway PostgreSQL server on this machine, for the tests and for trying search workers.
#
#   url=$(bash tools/postgres_throwaway.sh start /tmp/pg)  # postgresql://hpjax:PASSWORD@127.0.0.1:PORT/hpjax
#   bash tools/postgres_throwaway.sh restart /tmp/pg       # restarts it (same port and password)
#   bash tools/postgres_throwaway.sh halt /tmp/pg          # stops it, keeping /tmp/pg (restart)
#   bash tools/postgres_throwaway.sh stop /tmp/pg          # stops it and removes /tmp/pg
#
# A new cluster in DIR (which must not hold one), listening on 127.0.0.1 only, on a free port,
# with a random password (in the printed URL), without fsync: nothing in it is meant to outlive
# it. Run as root, the server runs as the postgres user (PostgreSQL refuses root). Needs
# PostgreSQL's initdb and pg_ctl on PATH or under /usr/lib/postgresql/*/bin (Debian's
# postgresql package). For workers on several machines use a server they all reach.
set -euo pipefail
usage="usage: postgres_throwaway.sh start|restart|halt|stop DIR"
action="${1:?$usage}"
dir="${2:?$usage}"
pg_ctl_path="$(command -v pg_ctl 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -1 || true)"
if [ -z "$pg_ctl_path" ]; then
  echo "postgres_throwaway.sh: PostgreSQL's pg_ctl not found (install Debian's postgresql)" >&2
  exit 1
fi
bin="$(dirname "$(readlink -f "$pg_ctl_path")")"
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "$action" in
  start)
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    chmod 700 "$dir"
    if ! as_owner test -w "$dir"; then
      echo "postgres_throwaway.sh: the postgres user cannot reach $dir (is a parent directory private?)" >&2
      exit 1
    fi
    password="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
    printf '%s\n' "$password" >"$dir/password"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir/password"; fi
    as_owner "$bin/initdb" -D "$dir/data" -U hpjax --auth=scram-sha-256 --pwfile="$dir/password" \
      --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    for attempt in 1 2 3; do  # a free port can be taken between the probe and the server
      port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
      if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o \
        "-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
        start >/dev/null; then
        break
      fi
      if [ "$attempt" = 3 ]; then tail -n 20 "$dir/server.log" >&2; exit 1; fi
    done
    if ! PGPASSWORD="$password" "$bin/createdb" -h 127.0.0.1 -p "$port" -U hpjax hpjax; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
      exit 1
    fi
    echo "postgresql://hpjax:$password@127.0.0.1:$port/hpjax"
    ;;
  restart)  # the same server, port and password: what a worker sees of a server restart
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w restart >/dev/null
    ;;
  halt)  # the server down, its cluster kept (restart brings it back)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  stop)
    if [ -d "$dir/data" ]; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
    fi
    rm -rf "$dir"
    ;;
  *)
    echo "$usage" >&2
    exit 2
    ;;
esac
