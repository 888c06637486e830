#!/usr/bin/env bash
# cluster-bench.sh: rendezvous-load against one node and against two nodes
# of a cluster, in one run, for the ratios of issue 12's "Performance":
# registrations/s, lookups/s and calls/s at the caller's node and across
# nodes, the brokering time of each (cross − same), and each node's CPU per
# operation (capacity per node, which is what grows with machines).
#
# Starts a private nats-server on loopback (user + password), and — when
# `rendezvous --help` lists `--store` — a private PostgreSQL in a temp dir
# (one fresh database per case); otherwise every node keeps its names in
# its own embedded store. Everything is torn down on exit.
#
#   scripts/cluster-bench.sh                # 2,000 peers, 4,000 calls of each kind
#   PEERS=4000 CALLS=2000 OUT=/tmp/bench scripts/cluster-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PEERS=${PEERS:-2000}
CALLS=${CALLS:-4000}
LOOKUP_SECS=${LOOKUP_SECS:-4}
LATENCY_CALLS=${LATENCY_CALLS:-200}
NATS=${NATS:-nats-server}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

say() { printf '\n== %s\n' "$*" >&2; }
# free_port: a TCP port on 127.0.0.1 nobody answers on (bounded tries).
free_port() {
  local i p
  for ((i = 0; i < 50; i++)); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  echo "no free port after 50 tries" >&2; return 1
}
# wait_port PORT SECONDS: bounded wait until something listens on PORT.
wait_port() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1 after $2 s" >&2; return 1
}

say "Building (release)"
cargo build --release -q -p rendezvous -p load
BIN=$PWD/target/release
WORK=$(mktemp -d)
NATS_PID=
PG_DATA=
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  if [ -n "$NATS_PID" ]; then kill "$NATS_PID" 2>/dev/null || true; wait "$NATS_PID" 2>/dev/null || true; fi
  if [ -n "$PG_DATA" ]; then as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -m immediate -t 20 stop >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

command -v "$NATS" >/dev/null || [ -x "$NATS" ] || { [ -x /usr/sbin/nats-server ] && NATS=/usr/sbin/nats-server; } \
  || { echo "nats-server not found (apt-get install nats-server, or NATS=/path)" >&2; exit 1; }
NATS_PORT=$(free_port)
NATS_MON=$(free_port)
NATS_PASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
say "nats-server on 127.0.0.1:$NATS_PORT"
"$NATS" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" --user bench --pass "$NATS_PASS" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
{ wait_port "$NATS_PORT" 10 && wait_port "$NATS_MON" 10; } || { cat "$WORK/nats.log" >&2; exit 1; }
BUS="nats://bench:$NATS_PASS@127.0.0.1:$NATS_PORT"

STORE1=()
STORE2=()
if "$BIN/rendezvous" --help | grep -q -- '--store'; then
  [ -x "$PGBIN/initdb" ] || PGBIN=$(dirname "$(command -v initdb)")
  PG_PORT=$(free_port)
  PG_DATA=$WORK/pg
  PG_PASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  say "PostgreSQL on 127.0.0.1:$PG_PORT (data in $PG_DATA)"
  mkdir -p "$PG_DATA" && echo "$PG_PASS" >"$WORK/pgpass"
  [ "$(id -u)" = 0 ] && chown -R postgres "$WORK" && chmod 755 "$WORK"
  as_pg "$PGBIN/initdb" -D "$PG_DATA" -U bench --pwfile="$WORK/pgpass" \
    --auth-host=scram-sha-256 --auth-local=trust >"$WORK/initdb.log" 2>&1 \
    || { cat "$WORK/initdb.log" >&2; exit 1; }
  as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -l "$WORK/pg.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $WORK" start >/dev/null \
    || { cat "$WORK/pg.log" >&2; exit 1; }
  for db in one two; do
    PGPASSWORD=$PG_PASS "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U bench "$db"
  done
  STORE1=(--store "postgres://bench:$PG_PASS@127.0.0.1:$PG_PORT/one")
  STORE2=(--store "postgres://bench:$PG_PASS@127.0.0.1:$PG_PORT/two")
  say "names on the shared PostgreSQL store (a fresh database per case)"
else
  say "this rendezvous has no --store: each node keeps names in its own embedded store, so registrations/s are per node, not on a shared store"
fi

COMMON=(--bus "$BUS" --peers "$PEERS" --calls "$CALLS" --lookup-secs "$LOOKUP_SECS"
  --latency-calls "$LATENCY_CALLS" --bus-pid "$NATS_PID" --bus-monitor "127.0.0.1:$NATS_MON")
say "1 node (baseline)"
"$BIN/rendezvous-load" --nodes 1 "${COMMON[@]}" "${STORE1[@]}" --json-out "$WORK/one.json"
say "2 nodes"
"$BIN/rendezvous-load" --nodes 2 "${COMMON[@]}" "${STORE2[@]}" --json-out "$WORK/two.json" \
  --baseline "$WORK/one.json"
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp "$WORK/one.json" "$WORK/two.json" "$OUT/"; fi
