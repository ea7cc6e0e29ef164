#!/usr/bin/env bash
# Memory as new followers arrive: N encrypted safe-mode text messages, each from a new
# follower, through the real daemon's Official Account callback (verify, decrypt, dedupe,
# new user + identity, reserve, answer, settle, remember, encrypted reply), with the default
# configuration (only the listen address, the data directory, the account and an instant
# demo LLM are set). After every STEP followers: the daemon's RSS and the store's size on
# disk; at the end the RSS once more after 5 s idle.
#
# Usage: scripts/bench/followers_rss.sh [FOLLOWERS] [STEP] [CONCURRENCY]
#        (default 100000 10000 16)
# Extra `[storage]` keys: STORAGE_TOML='cache_capacity_mb = 16'. Environment for the daemon
# only: DAEMON_ENV='MALLOC_ARENA_MAX=16' (glibc's own default on 2 cores; the daemon sets
# 2). A wrapper: DAEMON_WRAP='heaptrack -o /tmp/h' (the RSS figures stay the daemon's own).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=oa_config.sh
source scripts/bench/oa_config.sh
n="${1:-100000}"
step="${2:-10000}"
c="${3:-16}"
cargo build $release --locked --bin chatrelay --example mp_load >/dev/null 2>&1
bin="$PWD/target/$profile/chatrelay"
load="$PWD/target/$profile/examples/mp_load"
work=$(mktemp -d)
cr=""
daemon=""
trap 'for p in $daemon $cr; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/chatrelay.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[storage]
path = "$work/data"
${STORAGE_TOML:-}
[llm]
provider = "demo"
demo_piece_delay_ms = 0
[log]
level = "warn"
[[wechat_mp]]
id = "bench"
app_id = "wx1234567890abcdef"
token = "bench-token"
encoding_aes_key = "$aes"
TOML
# shellcheck disable=SC2086
env ${DAEMON_ENV:-} ${DAEMON_WRAP:-} "$bin" --config "$work/chatrelay.toml" run 2>"$work/log" &
cr=$!
until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.05; done
# With a wrapper, the daemon is its child.
daemon=$(pgrep -n -f "$bin --config $work/chatrelay.toml" || echo "$cr")
rss() { awk '/VmRSS/ {print $2}' "/proc/$daemon/status"; }
disk() { du -sk "$work/data" | cut -f1; }
echo "followers=0 rss_kib=$(rss) store_kib=$(disk)"
done_n=0
ok_all=0
while [ "$done_n" -lt "$n" ]; do
  k=$(( n - done_n < step ? n - done_n : step ))
  # Each mp_load run has its own process id in its followers' openids and MsgIds: every
  # message is a new follower, across runs too.
  out=$("$load" mp "http://127.0.0.1:$port/wechat/mp/bench" bench-token "$aes" wx1234567890abcdef "$k" "$c")
  ok=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$out")
  rps=$(sed -n 's/.* rps=\([0-9]*\).*/\1/p' <<<"$out")
  ok_all=$(( ok_all + ok ))
  done_n=$(( done_n + k ))
  echo "followers=$done_n ok=$ok_all rps=$rps rss_kib=$(rss) store_kib=$(disk)"
done
sleep 5
echo "after 5 s idle: rss_kib=$(rss) store_kib=$(disk) answered=$ok_all/$n"
python3 -c "print(f'RSS: {$(rss)/1024:.1f} MiB after $n new followers')"
