#!/usr/bin/env bash
# Official Account message latency while `GET /admin/backup` runs, on a store with USERS users
# (each with an identity) and ENTRIES ledger entries. The baseline is the same load on the
# same daemon without a backup, in the same run: PHASE_SECS of messages at RATE per second
# without backup, then PHASE_SECS with backups taken back to back, then PHASE_SECS without
# again. Latencies count from when each message was due (mp_load with MP_RATE).
#
# Usage: scripts/bench/backup_latency.sh [USERS] [ENTRIES] [RATE] [PHASE_SECS]
#        (default 100000 100000 200 30)
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=oa_config.sh
source scripts/bench/oa_config.sh
users="${1:-100000}"
entries="${2:-100000}"
rate="${3:-200}"
secs="${4:-30}"
cargo build $release --locked --bin chatrelay --example mp_load >/dev/null 2>&1
cargo build $release --locked -p chatrelay-storage --example gen_store >/dev/null 2>&1
bin="$PWD/target/$profile/chatrelay"
load="$PWD/target/$profile/examples/mp_load"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

gen_start=$(date +%s)
"$PWD/target/$profile/examples/gen_store" "$work/data/db" "$users" "$entries" >/dev/null
echo "store: $users users, $entries ledger entries, generated in $(( $(date +%s) - gen_start )) s, $(du -sh "$work/data" | cut -f1) on disk"

port=$(freeport)
oa_toml "$port" "$work/data" > "$work/chatrelay.toml"
# The backup's snapshot pause is logged at debug level.
NO_COLOR=1 RUST_LOG="warn,chatrelay_storage::backup=debug" \
  "$bin" --config "$work/chatrelay.toml" run 2>"$work/log" &
cr=$!
pids+=($cr)
until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
  kill -0 "$cr" 2>/dev/null || { cat "$work/log" >&2; exit 1; }
  sleep 0.05
done
url="http://127.0.0.1:$port/wechat/mp/bench"
n=$(( rate * secs ))

# PHASE_SECS of messages at RATE/s, each from a new follower.
phase() { MP_RATE="$rate" "$load" mp "$url" bench-token "$aes" wx1234567890abcdef "$n" 64 "$n"; }

backups() {
  local count=0
  while [ ! -e "$work/stop" ]; do
    curl -fsS -H "Authorization: Bearer bench-admin-token-0123456789" \
      "http://127.0.0.1:$port/admin/backup" -o "$work/backup.ndjson"
    count=$((count + 1))
  done
  echo "$count" > "$work/backups"
}

MP_RATE="$rate" "$load" mp "$url" bench-token "$aes" wx1234567890abcdef "$rate" 16 >/dev/null  # warm-up
before=$(phase)
backup_start=$(date +%s%N)
curl -fsS -H "Authorization: Bearer bench-admin-token-0123456789" \
  "http://127.0.0.1:$port/admin/backup" -o "$work/backup.ndjson"
one_backup_ms=$(( ($(date +%s%N) - backup_start) / 1000000 ))
records=$(( $(wc -l < "$work/backup.ndjson") - 2 ))
backups &
bpid=$!
pids+=($bpid)
during=$(phase)
touch "$work/stop"
wait "$bpid"
after=$(phase)
echo "one backup alone: ${one_backup_ms} ms, $records records, $(du -h "$work/backup.ndjson" | cut -f1)"
echo "backups taken during the loaded phase: $(cat "$work/backups")"
echo "without backup (before): $before"
echo "during backups:          $during"
echo "without backup (after):  $after"
python3 - "$before" "$during" "$after" "$work/log" <<'PY'
import re, sys
def parse(line): return dict(kv.split("=") for kv in line.split())
b, d, a = (parse(x) for x in sys.argv[1:4])
for name, p in (("before", b), ("during", d), ("after", a)):
    assert p["ok"] == p["requests"], f"{name}: not every message was answered: {p}"
base = max(float(b["p99_ms"]), float(a["p99_ms"]))
print(f"p99 during backups / without (worse of before and after): {float(d['p99_ms'])/base:.2f}")
print(f"p50 during backups / without: {float(d['p50_ms'])/max(float(b['p50_ms']), float(a['p50_ms'])):.2f}")
log = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[4], encoding="utf-8").read())
pauses = [int(m) for m in re.findall(r"pause_us=(\d+)", log)]
if pauses:
    pauses.sort()
    print(f"snapshot pause (writers held) over {len(pauses)} backups: median {pauses[len(pauses)//2]/1000:.2f} ms, max {pauses[-1]/1000:.2f} ms")
PY
