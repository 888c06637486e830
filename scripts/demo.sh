#!/usr/bin/env bash
# The whole story on one machine, narrated: a rendezvous server, alice
# listening, bob finding and calling her by name over a direct QUIC path,
# the server killed mid-call, and the call going on without it.
# Everything runs on 127.0.0.1 and in a temp dir that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# wait_for FILE PATTERN [SECONDS]: bounded wait for a line in a log.
wait_for() {
  local file=$1 pattern=$2 limit=${3:-20} i
  for ((i = 0; i < limit * 10; i++)); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for $pattern in $file:" >&2; cat "$file" >&2; return 1
}
field() { grep -o "\"$2\":\"[^\"]*\"" "$1" | head -1 | cut -d'"' -f4; }

say "Building (release)"
cargo build --release -q -p rendezvous -p peer
BIN=$PWD/target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "1. Start a rendezvous server (its key lives in its data dir)"
"$BIN/rendezvous" --listen 127.0.0.1:0 --data-dir "$WORK/server" --json 2>"$WORK/server.log" &
SERVER_PID=$!; PIDS+=("$SERVER_PID")
wait_for "$WORK/server.log" '"listening"'
ADDR=$(field "$WORK/server.log" addr)
FP=$("$BIN/rendezvous" fingerprint --data-dir "$WORK/server")
echo "server at $ADDR, fingerprint $FP"
echo "(peers pin this fingerprint: no CA, no accept-any)"
export PEER_SERVER=$ADDR PEER_SERVER_FINGERPRINT=$FP

peer_as() { local who=$1; shift; XDG_CONFIG_HOME="$WORK/$who" "$BIN/peer" "$@"; }
# spawn_peer WHO LOG ARGS...: run a peer in the background; its pid (the
# peer's own, not a subshell's) is recorded for cleanup.
spawn_peer() {
  local who=$1 log=$2; shift 2
  XDG_CONFIG_HOME="$WORK/$who" "$BIN/peer" "$@" 2>"$log" &
  LAST_PID=$!; PIDS+=("$LAST_PID")
}

say "2. alice registers her name and listens (echoing what callers send)"
spawn_peer alice "$WORK/alice.log" --name alice --json listen --echo
wait_for "$WORK/alice.log" '"registered"'
grep '"registered"' "$WORK/alice.log"

say "3. bob looks alice up: online or not, and her key -- never her address"
peer_as bob --name bob lookup alice

say "4. mallory tries to take the name 'alice' with another key"
if peer_as mallory --name alice --json listen 2>"$WORK/mallory.log"; then
  echo "unexpected: mallory got the name" >&2; exit 1
fi
grep '"name_taken"' "$WORK/mallory.log"

say "5. bob calls alice by name; the server introduces them, then steps aside"
echo "hello alice, this went straight to you" | peer_as bob --name bob call alice
echo "(above: alice's echo of what bob sent, over the direct path)"

say "6. bob pings alice for 8 s; after 2 s the server is killed (SIGKILL)"
spawn_peer bob "$WORK/ping.log" --name bob --json ping alice -c 16 -i 0.5
PING_PID=$LAST_PID
wait_for "$WORK/ping.log" '"seq":3,'
kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
echo ">>> server killed; the call does not need it"
wait "$PING_PID"
grep -c '"pong"' "$WORK/ping.log" | xargs -I{} echo "{} of 16 pings answered; each one's path:"
grep -o '"seq":[0-9]*\|"path":"[a-z]*"' "$WORK/ping.log" | paste -sd' ' | sed 's/ "seq"/\n"seq"/g' | tail -5
grep -q '"seq":15,' "$WORK/ping.log"

say "7. Done: every ping answered over a direct path, with the server dead for the last 6 s."
