#!/usr/bin/env bash
# Official Account callback throughput in safe mode with an instant LLM (the demo provider
# with no delay): verify, decrypt, parse, dedupe, quota, answer, encrypt. Baseline in the same
# run: a bare axum hello-world loaded by the same client at the same concurrency.
#
# Usage: scripts/bench/mp_throughput.sh [REQUESTS] [CONCURRENCY] [USERS]   (default 20000 64,
# and a new follower per message; USERS spreads the messages over that many followers)
# With LLM_SECS=1 the answers come from a fake upstream that takes that long (instead of the
# instant demo): then what matters is that every reply is inside WeChat's 5 s (max_ms).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=oa_config.sh
source scripts/bench/oa_config.sh
n="${1:-20000}"
c="${2:-64}"
users="${3:-$n}"
cargo build $release --locked --bin chatrelay --example mp_load --example stream_load >/dev/null 2>&1
bin="$PWD/target/$profile/chatrelay"
load="$PWD/target/$profile/examples/mp_load"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

port=$(freeport)
hello_port=$(freeport)
llm=""   # the instant demo provider
if [ -n "${LLM_SECS:-}" ]; then
  up_port=$(freeport)
  # Two tokens, the second LLM_SECS after the first: an answer that takes LLM_SECS.
  "$PWD/target/$profile/examples/stream_load" upstream "127.0.0.1:$up_port" 2 "$(( LLM_SECS * 1000 ))" &
  pids+=($!)
  llm=$(printf '[llm]\nbase_url = "http://127.0.0.1:%s/v1"\napi_keys = ["sk-bench"]\nmodel = "bench"' "$up_port")
fi
oa_toml "$port" "$work/data" "" "$llm" > "$work/chatrelay.toml"
"$bin" --config "$work/chatrelay.toml" run 2>"$work/log" &
pids+=($!)
"$load" hello "127.0.0.1:$hello_port" &
pids+=($!)
until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.05; done
until curl -fs "http://127.0.0.1:$hello_port/" >/dev/null 2>&1; do sleep 0.05; done

"$load" get "http://127.0.0.1:$hello_port/" 2000 "$c" >/dev/null     # warm-up
base=$("$load" get "http://127.0.0.1:$hello_port/" "$n" "$c")
mp=$("$load" mp "http://127.0.0.1:$port/wechat/mp/bench" bench-token "$aes" wx1234567890abcdef "$n" "$c" "$users")
echo "baseline (bare axum hello-world): $base"
echo "chatrelay OA safe-mode callback:  $mp"
python3 - "$base" "$mp" <<'PY'
import sys
def parse(line): return dict(kv.split("=") for kv in line.split())
b, m = parse(sys.argv[1]), parse(sys.argv[2])
print(f"ratio rps chatrelay/baseline: {float(m['rps'])/float(b['rps']):.2f}")
print(f"overhead p50: {float(m['p50_ms'])-float(b['p50_ms']):.2f} ms, p99: {float(m['p99_ms'])-float(b['p99_ms']):.2f} ms")
PY
pid=$(pgrep -f "$bin --config $work/chatrelay.toml" | head -1)
echo "chatrelay RSS after the run: $(awk '/VmRSS/ {print $2}' /proc/$pid/status) KiB"
