#!/usr/bin/env bash
# Start-up time and idle memory with a big store: USERS users (each with a platform identity)
# and ENTRIES ledger entries, against the same daemon starting on an empty store in the same
# run (the baseline).
#
# Usage: scripts/bench/big_store.sh [USERS] [ENTRIES]   (default 100000 1000000)
set -euo pipefail
cd "$(dirname "$0")/../.."
# BENCH_PROFILE=debug runs on debug builds (the e2e smoke run); figures come from release.
profile="${BENCH_PROFILE:-release}"
release=$([ "$profile" = release ] && echo --release || true)
users="${1:-100000}"
entries="${2:-1000000}"
cargo build $release --locked --bin chatrelay >/dev/null 2>&1
cargo build $release --locked -p chatrelay-storage --example gen_store >/dev/null 2>&1
bin="$PWD/target/$profile/chatrelay"
work=$(mktemp -d)
trap 'kill $cr 2>/dev/null || true; rm -rf "$work"' EXIT
cr=""
gen_start=$(date +%s)
"$PWD/target/$profile/examples/gen_store" "$work/big/db" "$users" "$entries"
echo "generated in $(( $(date +%s) - gen_start )) s; on disk: $(du -sh "$work/big" | cut -f1)"

# start_ms DIR: time from exec to /readyz answering, then idle RSS 2 s later (KiB).
measure() {
  local dir="$1"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local start
  start=$(date +%s%N)
  CHATRELAY__SERVER__LISTEN="127.0.0.1:$port" CHATRELAY__STORAGE__PATH="$dir" \
    CHATRELAY__LOG__LEVEL=warn "$bin" run >"$work/log" 2>&1 &
  cr=$!
  until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.005; done
  local ready=$(( ($(date +%s%N) - start) / 1000000 ))
  sleep 2
  local rss
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$cr/status")
  kill "$cr"; wait "$cr" 2>/dev/null || true
  echo "$ready $rss"
}
mkdir -p "$work/empty"
for i in 1 2 3; do measure "$work/empty"; done > "$work/empty.txt"
for i in 1 2 3; do measure "$work/big"; done > "$work/big.txt"
median() { sort -n -k"$2" "$1" | sed -n 2p | cut -d' ' -f"$2"; }
e_ms=$(median "$work/empty.txt" 1); e_rss=$(median "$work/empty.txt" 2)
b_ms=$(median "$work/big.txt" 1); b_rss=$(median "$work/big.txt" 2)
echo "empty store: start to ready ${e_ms} ms, idle RSS ${e_rss} KiB (median of 3)"
echo "$users users, $entries ledger entries: start to ready ${b_ms} ms, idle RSS ${b_rss} KiB (median of 3)"
python3 -c "print(f'ratio start time big/empty: {$b_ms/max($e_ms,1):.1f}, RSS big/empty: {$b_rss/$e_rss:.2f}')"
