#!/usr/bin/env bash
# Official Account callback throughput in safe mode, as issue 21 measures it: every message
# is verified, decrypted, parsed, deduplicated, metered (reserve + settle), answered by an
# OpenAI-compatible upstream over HTTP that answers at once (`mp_load upstream`: the whole
# response in one write, TCP_NODELAY), remembered, and answered with an encrypted passive
# reply, which the client decrypts and checks (it must repeat the message's own text). A
# unique MsgId and a new follower per message. Baseline in the same run, at each concurrency:
# a bare axum hello-world loaded by the same client.
#
# Usage: scripts/bench/mp_throughput.sh [REQUESTS] [CONCURRENCIES] [USERS]
#   defaults: 20000 "1 8 64", a new follower per message (USERS spreads the messages over that
#   many followers). At concurrency 1 the run is REQUESTS/4 messages (C1_REQUESTS overrides).
# With LLM_SECS=1 the answers come from a fake upstream that takes that long (`stream_load
# upstream`, two tokens LLM_SECS apart): then what matters is that every reply is inside
# WeChat's 5 s (max_ms). BENCH_PROFILE=debug for smoke runs; figures come from release.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=oa_config.sh
source scripts/bench/oa_config.sh
n="${1:-20000}"
concurrencies="${2:-1 8 64}"
users="${3:-}"
# STORAGE_TOML: extra `[storage]` keys (e.g. `cache_capacity_mb = 8`).
# BENCH_BIN_DIR: run the binaries found there (chatrelay, mp_load, stream_load) instead of
# building them (to compare a saved build with the current one).
bins="${BENCH_BIN_DIR:-$PWD/target/$profile}"
[ -n "${BENCH_BIN_DIR:-}" ] || cargo build $release --locked --bin chatrelay --example mp_load --example stream_load >/dev/null 2>&1
bin="$bins/chatrelay"
load="$bins/mp_load"
[ -x "$load" ] || load="$bins/examples/mp_load"
stream_load="$bins/stream_load"
[ -x "$stream_load" ] || stream_load="$bins/examples/stream_load"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

port=$(freeport)
hello_port=$(freeport)
up_port=$(freeport)
if [ -n "${LLM_SECS:-}" ]; then
  # Two tokens, the second LLM_SECS after the first: an answer that takes LLM_SECS.
  "$stream_load" upstream "127.0.0.1:$up_port" 2 "$(( LLM_SECS * 1000 ))" &
  export MP_CHECK=encrypted
else
  "$load" upstream "127.0.0.1:$up_port" &
fi
pids+=($!)
llm=$(printf '[llm]\nbase_url = "http://127.0.0.1:%s/v1"\napi_keys = ["sk-bench"]\nmodel = "bench"' "$up_port")
oa_toml "$port" "$work/data" "${STORAGE_TOML:-}" "$llm" > "$work/chatrelay.toml"
"$bin" --config "$work/chatrelay.toml" run 2>"$work/log" &
pids+=($!)
"$load" hello "127.0.0.1:$hello_port" &
pids+=($!)
until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.05; done
until curl -fs "http://127.0.0.1:$hello_port/" >/dev/null 2>&1; do sleep 0.05; done

metric() { curl -fs "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
"$load" get "http://127.0.0.1:$hello_port/" 2000 8 >/dev/null     # warm-up
for c in $concurrencies; do
  count=$n
  [ "$c" = 1 ] && count="${C1_REQUESTS:-$(( n / 4 ))}"
  base=$("$load" get "http://127.0.0.1:$hello_port/" "$count" "$c")
  f0=$(metric chatrelay_store_flushes_total || echo 0)
  r0=$(metric chatrelay_store_flush_requests_total || echo 0)
  s0=$(metric chatrelay_store_lane_step_seconds_total || echo 0)
  l0=$(metric chatrelay_store_lane_flush_seconds_total || echo 0)
  q0=$(metric chatrelay_store_statements_total || echo 0)
  mp=$("$load" mp "http://127.0.0.1:$port/wechat/mp/bench" bench-token "$aes" wx1234567890abcdef "$count" "$c" ${users:+"$users"})
  f1=$(metric chatrelay_store_flushes_total || echo 0)
  r1=$(metric chatrelay_store_flush_requests_total || echo 0)
  s1=$(metric chatrelay_store_lane_step_seconds_total || echo 0)
  l1=$(metric chatrelay_store_lane_flush_seconds_total || echo 0)
  q1=$(metric chatrelay_store_statements_total || echo 0)
  echo "c=$c baseline (bare axum hello-world): $base"
  echo "c=$c chatrelay OA safe-mode callback:  $mp"
  python3 - "$c" "$base" "$mp" "${f0:-0}" "${f1:-0}" "${r0:-0}" "${r1:-0}" "${s0:-0}" "${s1:-0}" "${l0:-0}" "${l1:-0}" "${q0:-0}" "${q1:-0}" <<'PY'
import sys
c = sys.argv[1]
def parse(line): return dict(kv.split("=") for kv in line.split()[:7])
b, m = parse(sys.argv[2]), parse(sys.argv[3])
f0, f1, r0, r1, s0, s1, l0, l1, q0, q1 = (float(x or 0) for x in sys.argv[4:14])
secs = float(m['secs']) or 1.0
n = float(m['requests'])
print(f"c={c} | {m['ok']}/{m['requests']} replies right | chatrelay {float(m['rps']):.0f} req/s p50 {m['p50_ms']} ms p99 {m['p99_ms']} ms"
      f" | hello {float(b['rps']):.0f} req/s p50 {b['p50_ms']} ms p99 {b['p99_ms']} ms"
      f" | ratio {float(m['rps'])/float(b['rps']):.4f} | flushes/msg {(f1-f0)/n:.3f}, flush requests/msg {(r1-r0)/n:.3f}"
      f" | write lane busy: steps {(s1-s0)/secs:.0%}, flushes {(l1-l0)/secs:.0%} of the run"
      + (f" | PostgreSQL statements/msg {(q1-q0)/n:.2f}" if q1 > q0 else ""))
PY
done
pid=$(pgrep -f "$bin --config $work/chatrelay.toml" | head -1)
echo "chatrelay RSS after the run: $(awk '/VmRSS/ {print $2}' /proc/$pid/status) KiB"
