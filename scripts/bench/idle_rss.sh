#!/usr/bin/env bash
# Idle memory of `chatrelay run` on the embedded defaults (demo LLM, empty store), against a
# baseline measured in the same run: Python's bare `http.server`, the least a Python bot
# process carries before it does anything.
#
# Usage: scripts/bench/idle_rss.sh            (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/../.."
# BENCH_PROFILE=debug runs on debug builds (the e2e smoke run); figures come from release.
profile="${BENCH_PROFILE:-release}"
release=$([ "$profile" = release ] && echo --release || true)
cargo build $release --locked --bin chatrelay >/dev/null 2>&1
bin="$PWD/target/$profile/chatrelay"
work=$(mktemp -d)
trap 'kill $cr $py 2>/dev/null || true; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start=$(date +%s%N)
(cd "$work" && CHATRELAY__SERVER__LISTEN="127.0.0.1:$port" exec "$bin" run >"$work/log" 2>&1) &
cr=$!
until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.01; done
ready_ms=$(( ($(date +%s%N) - start) / 1000000 ))
sleep 2
cr_pid=$(pgrep -f "$bin run" | head -1)
cr_rss=$(awk '/VmRSS/ {print $2}' "/proc/$cr_pid/status")

pyport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server "$pyport" --bind 127.0.0.1 --directory "$work" >/dev/null 2>&1 &
py=$!
until curl -fs "http://127.0.0.1:$pyport/" >/dev/null 2>&1; do sleep 0.01; done
sleep 2
py_rss=$(awk '/VmRSS/ {print $2}' "/proc/$py/status")

echo "chatrelay idle RSS: ${cr_rss} KiB (start to ready: ${ready_ms} ms)"
echo "python3 -m http.server idle RSS: ${py_rss} KiB"
python3 -c "print(f'ratio chatrelay / python http.server: {$cr_rss/$py_rss:.2f}')"
