#!/usr/bin/env bash
# Many concurrent `/v1/chat/completions` streams held open: the daemon's memory while N
# streams are open, and the time to the first token through the daemon against the same
# client talking to the fake upstream directly (the baseline, same run).
#
# Usage: scripts/bench/streams.sh [STREAMS] [HOLD_SECS]   (default 10000 30)
# Needs about 4 file descriptors per stream (raised here; run as root or with a high hard
# limit for 10,000 streams).
# UPSTREAM_H2=1: the fake upstream speaks HTTP/2 without TLS and the daemon is configured
# with `llm.http2_prior_knowledge` (one connection to the upstream for every stream, as with
# an HTTPS upstream that offers HTTP/2); the baseline client then uses HTTP/2 too.
# BENCH_BIN_DIR=DIR: the daemon (and stream_load, if there) from DIR, a saved build, unbuilt.
# DAEMON_ENV='MALLOC_ARENA_MAX=4' and DAEMON_WRAP='heaptrack -o /tmp/hs' (the RSS figures stay
# the daemon's own) as in followers_rss.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
# BENCH_PROFILE=debug runs on debug builds (the e2e smoke run); figures come from release.
profile="${BENCH_PROFILE:-release}"
release=$([ "$profile" = release ] && echo --release || true)
n="${1:-10000}"
hold="${2:-30}"
ulimit -n "$(( n * 4 + 4096 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# A saved build is run as it is (a build here would rebuild it whenever another worktree
# commits: build.rs watches the shared refs).
[ -n "${BENCH_BIN_DIR:-}" ] || cargo build $release --locked --bin chatrelay --example stream_load >/dev/null 2>&1
bin="${BENCH_BIN_DIR:-$PWD/target/$profile}/chatrelay"
load="$PWD/target/$profile/examples/stream_load"
[ -x "${BENCH_BIN_DIR:-}/stream_load" ] && load="$BENCH_BIN_DIR/stream_load"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One token a second for HOLD_SECS: every stream stays open that long.
up_port=$(freeport)
h2="${UPSTREAM_H2:-0}"
"$load" "$([ "$h2" = 1 ] && echo upstream-h2 || echo upstream)" "127.0.0.1:$up_port" "$hold" 1000 &
pids+=($!)
port=$(freeport)
cat > "$work/chatrelay.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
admin_token = "bench-admin-token-0123456789"
# The default (1,024 requests at once) would refuse most of the streams.
max_concurrent_requests = $(( n + 1024 ))
[storage]
path = "$work/data"
[llm]
base_url = "http://127.0.0.1:$up_port/v1"
api_keys = ["sk-bench"]
model = "bench"
timeout_secs = 60
idle_timeout_secs = 30
http2_prior_knowledge = $([ "$h2" = 1 ] && echo true || echo false)
[quota]
free_daily = 0
[bot]
rate_limit_per_minute = 0
[log]
level = "warn"
TOML
# shellcheck disable=SC2086
env ${DAEMON_ENV:-} ${DAEMON_WRAP:-} "$bin" --config "$work/chatrelay.toml" run 2>"$work/log" &
pids+=($!)
cr=$!
until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.05; done
# With a wrapper, the daemon is its child.
cr=$(pgrep -n -f "$bin --config $work/chatrelay.toml" || echo "$cr")
pids+=("$cr")
admin() { "$bin" --config "$work/chatrelay.toml" admin "$@"; }
uid=$(admin user create --name bench)
admin grant "$uid" 100000000 --reason bench >/dev/null
token=$(admin token create "$uid")
rss() { awk '/VmRSS/ {print $2}' "/proc/$cr/status"; }
idle_rss=$(rss)

base=$(STREAM_LOAD_H2="$h2" "$load" streams "http://127.0.0.1:$up_port/v1/chat/completions" sk-bench "$n")
peak=0
( while kill -0 "$cr" 2>/dev/null; do r=$(rss); [ "$r" -gt "$(cat "$work/peak" 2>/dev/null || echo 0)" ] && echo "$r" > "$work/peak"; sleep 0.5; done ) &
pids+=($!)
via=$("$load" streams "http://127.0.0.1:$port/v1/chat/completions" "$token" "$n")
peak=$(cat "$work/peak")
after=$(rss)
echo "baseline (client straight to the fake upstream): $base"
echo "through chatrelay:                                $via"
echo "chatrelay RSS: idle ${idle_rss} KiB, peak with $n streams ${peak} KiB, after ${after} KiB"
python3 - "$base" "$via" "$peak" <<'PY'
import sys
def parse(line): return dict(kv.split("=") for kv in line.split())
b, v = parse(sys.argv[1]), parse(sys.argv[2])
print(f"ttfb overhead p50: {float(v['ttfb_p50_ms'])-float(b['ttfb_p50_ms']):.2f} ms, p99: {float(v['ttfb_p99_ms'])-float(b['ttfb_p99_ms']):.2f} ms")
print(f"peak RSS: {int(sys.argv[3])/1024:.1f} MiB")
PY
# Probes stop reading after their first token; the daemon notices at its next write and
# settles what they got. Wait for that before auditing.
for _ in $(seq 1 $(( hold * 4 + 40 ))); do
  open=$(admin --json audit | python3 -c 'import json,sys; print(json.load(sys.stdin)["open_reservations"])')
  [ "$open" = 0 ] && break
  sleep 0.25
done
admin --json audit | python3 -c 'import json,sys; a=json.load(sys.stdin); print("ledger consistent:", not a["mismatches"], "open reservations:", a["open_reservations"])'
