#!/usr/bin/env bash
# Scale-out on PostgreSQL, in one run: sled on one process/daemon against PostgreSQL with one
# and with two processes/daemons sharing one schema.
#
# 1. Quota reserve + settle (storage/examples/quota_bench.rs), USERS threads in all, SECS
#    seconds each: sled, one process (baseline: plain sled inserts); PostgreSQL, one process
#    (baseline: plain autocommit INSERTs over the same pool size); PostgreSQL, two processes
#    of USERS/2 threads on one schema, first with their own users (USERS users), then sharing
#    theirs (USERS/2 users, each written by one thread in each process). After each run the
#    ledger is audited, and the number of ledger entries must be exactly the users' grants
#    plus the reserve + settle pairs the processes counted (none lost, none twice).
# 2. Official Account callbacks in safe mode (examples/mp_load.rs, demo LLM, REQUESTS at
#    CONCURRENCY from FOLLOWERS followers): one daemon on sled, one daemon on PostgreSQL, two
#    daemons on one PostgreSQL schema (different ports, the load spread round-robin over
#    both). Baseline: a bare axum hello-world, same client, same run. Each daemon's ledger is
#    audited afterwards.
#
# Usage: scripts/bench/pg.sh [USERS] [SECS] [REQUESTS] [CONCURRENCY] [FOLLOWERS]
#        (default 64 5 20000 64, and a new follower per message)
# PostgreSQL: PG_URL, else CHATRELAY_TEST_PG_URL, else scripts/pg-up (the local cluster).
# Every run uses fresh schemas bench_<random>_*, dropped at the end. PG_POOL: connections per
# process/daemon (default 16, the daemon's default). PG_PARTS="quota mp" picks the parts.
# Exits 1 if any operation failed or any audit found a mismatch (after printing everything).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=oa_config.sh
source scripts/bench/oa_config.sh
users="${1:-64}"
secs="${2:-5}"
n="${3:-20000}"
c="${4:-64}"
followers="${5:-$n}"
pool="${PG_POOL:-16}"
parts="${PG_PARTS:-quota mp}"
url="${PG_URL:-${CHATRELAY_TEST_PG_URL:-}}"
[ -n "$url" ] || url=$(scripts/pg-up)
half=$(( users / 2 > 0 ? users / 2 : 1 ))

cargo build $release --locked -p chatrelay-storage --example quota_bench >/dev/null 2>&1
cargo build $release --locked --bin chatrelay --example mp_load >/dev/null 2>&1
qb="$PWD/target/$profile/examples/quota_bench"
bin="$PWD/target/$profile/chatrelay"
load="$PWD/target/$profile/examples/mp_load"

prefix="bench_$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
work=$(mktemp -d)
pids=()
failures=0
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  for s in q1 q2 q3 mp1 mp2; do
    psql -q "$url" -c "DROP SCHEMA IF EXISTS ${prefix}_$s CASCADE" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# The value of KEY in `key=value` output.
val() { grep -o "\b$1=[^ ]*" | head -1 | cut -d= -f2; }
fail() { echo "FAILED: $*"; failures=$((failures + 1)); }
# The database's rolled-back transactions so far (each conflict retried is one; shared with
# whatever else uses the database meanwhile). Backends report on exit, so read it after.
rollbacks() { psql -qAt "$url" -c "select xact_rollback from pg_stat_database where datname = current_database()"; }
# Where the two cores went during a phase: `cpu_mark`, then `cpu_report` prints the machine's
# idle share and the CPU seconds of a local PostgreSQL (its postmaster's own, its live
# backends' and its exited backends' times; none with a remote server).
postmaster=$(pgrep -o -x postgres || true)
pg_ticks() {
  local t=0 p
  [ -n "$postmaster" ] || { echo 0; return; }
  for p in $postmaster $(pgrep -P "$postmaster"); do
    t=$(( t + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$t"
}
machine_ticks() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat; }
cpu_mark() { cpu0=($(machine_ticks)); pg0=$(pg_ticks); }
cpu_report() {
  local now pg1
  now=($(machine_ticks)); pg1=$(pg_ticks)
  awk -v all=$(( now[0] - cpu0[0] )) -v idle=$(( now[1] - cpu0[1] )) -v pg=$(( pg1 - pg0 )) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "cpu: machine idle %.0f%%, postgres %.1f s of %.1f s (all cores)\n", 100 * idle / all, pg / hz, all / hz }'
}

version=$(psql -qAt "$url" -c 'show server_version') || { echo "pg.sh: cannot reach PostgreSQL (PG_URL)" >&2; exit 1; }
echo "PostgreSQL $version, $(nproc) cores, profile $profile"

# ---------------------------------------------------------------------------------------------
if [[ " $parts " == *" quota "* ]]; then
  echo "== quota reserve + settle: $users threads in all, $secs s, pool $pool per process"
  out_sled=$("$qb" "$users" "$secs") || fail "quota on sled"
  echo "$out_sled" | sed 's/^/  sled 1 process: /'
  r0=$(rollbacks)
  # The baseline on its own, so that the CPU figures are the reserve + settle run's.
  base_pg=$("$qb" "$users" "$secs" --pg "$url" --schema "${prefix}_q1" --pool "$pool" --baseline-only) || fail "PostgreSQL baseline"
  cpu_mark
  out_pg1=$("$qb" "$users" "$secs" --pg "$url" --schema "${prefix}_q1" --pool "$pool" --no-baseline) || fail "quota on PostgreSQL, one process"
  sleep 0.5
  out_pg1="$base_pg
$out_pg1 rollbacks=$(( $(rollbacks) - r0 ))
$(cpu_report)"
  echo "$out_pg1" | sed 's/^/  pg 1 process:   /'

  # Two processes at once on one schema, made (migrated) first so that neither one's timed
  # seconds include it.
  two() { # SCHEMA OFFSET_B LABEL
    local schema=$1 off_b=$2 label=$3 bar="$work/barrier.$1" p1 p2 s1=0 s2=0
    mkdir -p "$bar"
    "$qb" --pg "$url" --schema "$schema" --audit-only >/dev/null
    local r0; r0=$(rollbacks)
    cpu_mark
    "$qb" "$half" "$secs" --pg "$url" --schema "$schema" --pool "$pool" --users-offset 0 \
      --no-baseline --no-audit --barrier "$bar" >"$work/$schema.a" 2>&1 &
    p1=$!
    "$qb" "$half" "$secs" --pg "$url" --schema "$schema" --pool "$pool" --users-offset "$off_b" \
      --no-baseline --no-audit --barrier "$bar" >"$work/$schema.b" 2>&1 &
    p2=$!
    # Both set up (or one gave up): start them together.
    while [ "$(ls "$bar" | grep -c '^ready')" -lt 2 ] && kill -0 "$p1" 2>/dev/null && kill -0 "$p2" 2>/dev/null; do
      sleep 0.02
    done
    touch "$bar/go"
    wait "$p1" || s1=$?
    wait "$p2" || s2=$?
    sleep 0.5
    echo "rollbacks=$(( $(rollbacks) - r0 ))" >>"$work/$schema.a"
    cpu_report >>"$work/$schema.a"
    sed "s/^/  $label A: /" "$work/$schema.a"
    sed "s/^/  $label B: /" "$work/$schema.b"
    [ "$s1" = 0 ] && [ "$s2" = 0 ] || fail "$label: a process failed ($s1, $s2)"
    local audit
    audit=$("$qb" --pg "$url" --schema "$schema" --audit-only 2>&1) || fail "$label: audit"
    echo "  $label audit: $audit"
    local ops_a ops_b users_n entries open
    ops_a=$(val ops <"$work/$schema.a"); ops_b=$(val ops <"$work/$schema.b")
    users_n=$(echo "$audit" | val users); entries=$(echo "$audit" | val ledger_entries)
    open=$(echo "$audit" | val open_reservations)
    if [ "${entries:-x}" != "$(( ${users_n:-0} + ${ops_a:-0} + ${ops_b:-0} ))" ] || [ "${open:-x}" != 0 ]; then
      fail "$label: $entries ledger entries for $users_n grants + $ops_a + $ops_b operations, $open open reservations"
    fi
  }
  two "${prefix}_q2" "$half" "pg 2 processes, own users"
  two "${prefix}_q3" 0 "pg 2 processes, shared users"
  # One line per run, for the table.
  python3 - "$work" "$prefix" "$out_sled" "$out_pg1" <<'PY'
import sys, re
work, prefix, sled, pg1 = sys.argv[1:5]
def kv(text):
    return dict(m.groups() for m in re.finditer(r"(\w+)=([^\s]+)", text))
def cpu(text):
    m = re.search(r"cpu: (.*)", text)
    return f"\n      {m.group(0)}" if m else ""
s, p = kv(sled), kv(pg1)
sled_rate = float(s.get("reserve_settle_per_sec", 0)) or 1
pg_rate = float(p.get("reserve_settle_per_sec", 0)) or 1
base_sled = float(s.get("baseline_sled_inserts_per_sec", 0)) or 1
base_pg = float(p.get("baseline_pg_inserts_per_sec", 0)) or 1
print(f"quota summary: reserve + settle pairs per second; same-run baselines: sled inserts {base_sled:.0f}/s, "
      f"PostgreSQL autocommit inserts {base_pg:.0f}/s")
print(f"  sled, 1 process                 {sled_rate:>7.0f}/s  errors={s.get('errors','?')}  p50={s.get('p50','?')} ms  "
      f"p99={s.get('p99','?')} ms  /sled_1p=1.000  /baseline={sled_rate / base_sled:.3f}")
rbo = int(p.get("rollbacks", 0)) / max(1, int(p.get("ops", 0)))
print(f"  pg, 1 process                   {pg_rate:>7.0f}/s  errors={p.get('errors','?')}  p50={p.get('p50','?')} ms  "
      f"p99={p.get('p99','?')} ms  /sled_1p={pg_rate / sled_rate:.3f}  /baseline={pg_rate / base_pg:.3f}  "
      f"rollbacks/op={rbo:.2f}{cpu(pg1)}")
for tag, label in (("q2", "pg, 2 processes, own users"), ("q3", "pg, 2 processes, shared users")):
    ta = open(f"{work}/{prefix}_{tag}.a").read()
    a, b = kv(ta), kv(open(f"{work}/{prefix}_{tag}.b").read())
    ra, rb = float(a.get("reserve_settle_per_sec", 0)), float(b.get("reserve_settle_per_sec", 0))
    ops = int(a.get("ops", 0)) + int(b.get("ops", 0))
    rbo = int(a.get("rollbacks", 0)) / max(1, ops)
    print(f"  {label:<31} {ra + rb:>7.0f}/s  (A {ra:.0f} + B {rb:.0f})  errors={a.get('errors','?')}+{b.get('errors','?')}  "
          f"p50={a.get('p50','?')}/{b.get('p50','?')} ms  p99={a.get('p99','?')}/{b.get('p99','?')} ms  "
          f"/sled_1p={(ra + rb) / sled_rate:.3f}  /baseline={(ra + rb) / base_pg:.3f}  /pg_1p={(ra + rb) / pg_rate:.3f}  "
          f"rollbacks/op={rbo:.2f}{cpu(ta)}")
PY
fi

# ---------------------------------------------------------------------------------------------
if [[ " $parts " == *" mp "* ]]; then
  echo "== Official Account callbacks: $n requests at concurrency $c from $followers followers"
  daemon() { # NAME PORT STORAGE_TOML -> starts it, waits until ready
    local name=$1 port=$2
    oa_toml "$port" "$work/$name" "$3" >"$work/$name.toml"
    "$bin" --config "$work/$name.toml" run 2>"$work/$name.log" &
    pids+=($!)
    local pid=$! tries=0
    until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
      if ! kill -0 "$pid" 2>/dev/null || [ $((tries += 1)) -gt 1200 ]; then
        echo "daemon $name did not start:"; tail -20 "$work/$name.log"; exit 1
      fi
      sleep 0.05
    done
  }
  # Waits for the daemon's open reservations to settle, then prints its audit in one line.
  audit() { # NAME
    local a open=1
    for _ in $(seq 1 100); do
      a=$("$bin" --config "$work/$1.toml" admin --json audit)
      open=$(echo "$a" | python3 -c 'import json,sys; print(json.load(sys.stdin)["open_reservations"])')
      [ "$open" = 0 ] && break
      sleep 0.1
    done
    echo "$a" | python3 -c 'import json,sys; a=json.load(sys.stdin); print("users=%s ledger_entries=%s open_reservations=%s consistent=%s" % (a["users"], a["ledger_entries"], a["open_reservations"], not a["mismatches"]))'
  }
  check() { # LABEL LOAD_LINE AUDIT_LINE
    local ok consistent open
    ok=$(echo "$2" | head -1 | val ok); consistent=$(echo "$3" | val consistent); open=$(echo "$3" | val open_reservations)
    [ "$ok" = "$n" ] || fail "$1: $ok of $n replies right"
    [ "$consistent" = True ] && [ "$open" = 0 ] || fail "$1: audit $3"
  }
  stop() { for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }

  hello_port=$(freeport)
  "$load" hello "127.0.0.1:$hello_port" &
  pids+=($!)
  hello_pid=$!
  until curl -fs "http://127.0.0.1:$hello_port/" >/dev/null 2>&1; do sleep 0.05; done
  "$load" get "http://127.0.0.1:$hello_port/" 2000 "$c" >/dev/null     # warm-up
  base=$("$load" get "http://127.0.0.1:$hello_port/" "$n" "$c")
  stop "$hello_pid"
  echo "  baseline (bare axum hello-world): $base"
  mp() { "$load" mp "$1" bench-token "$aes" wx1234567890abcdef "$n" "$c" "$followers"; }

  p=$(freeport); daemon sled "$p" ""
  cpu_mark
  out_sled=$(mp "http://127.0.0.1:$p/wechat/mp/bench")
  cpu_sled=$(cpu_report)
  a_sled=$(audit sled); stop "${pids[-1]}"
  echo "  sled, 1 daemon:   $out_sled"; echo "    audit: $a_sled"; echo "    $cpu_sled"
  check "OA sled, 1 daemon" "$out_sled" "$a_sled"

  pgconf() { printf 'backend = "postgres"\nurl = "%s"\nschema = "%s"\npool_size = %s' "$url" "$1" "$pool"; }
  p=$(freeport); daemon pg1 "$p" "$(pgconf "${prefix}_mp1")"
  r0=$(rollbacks)
  cpu_mark
  out_pg1=$(mp "http://127.0.0.1:$p/wechat/mp/bench")
  cpu_pg1=$(cpu_report)
  a_pg1=$(audit pg1); stop "${pids[-1]}"
  sleep 0.5
  echo "  pg, 1 daemon:     $out_pg1"; echo "    audit: $a_pg1; rollbacks: $(( $(rollbacks) - r0 ))"; echo "    $cpu_pg1"
  check "OA PostgreSQL, 1 daemon" "$out_pg1" "$a_pg1"

  # The second daemon starts once the first is ready (and has migrated the schema).
  pa=$(freeport); daemon pg2a "$pa" "$(pgconf "${prefix}_mp2")"; da=${pids[-1]}
  pb=$(freeport); daemon pg2b "$pb" "$(pgconf "${prefix}_mp2")"; db=${pids[-1]}
  r0=$(rollbacks)
  cpu_mark
  out_pg2=$(mp "http://127.0.0.1:$pa/wechat/mp/bench,http://127.0.0.1:$pb/wechat/mp/bench")
  cpu_pg2=$(cpu_report)
  a_pg2=$(audit pg2a); stop "$da" "$db"
  sleep 0.5
  echo "  pg, 2 daemons:    $(echo "$out_pg2" | head -1)"
  echo "$out_pg2" | tail -n +2 | sed 's/^/    /'
  echo "    audit: $a_pg2; rollbacks: $(( $(rollbacks) - r0 ))"; echo "    $cpu_pg2"
  check "OA PostgreSQL, 2 daemons" "$out_pg2" "$a_pg2"
  for d in sled pg1 pg2a pg2b; do
    if grep -qiE "\b(ERROR|panicked)\b" "$work/$d.log"; then
      echo "  $d logged errors:"; grep -iE "\b(ERROR|panicked)\b" "$work/$d.log" | head -5 | sed 's/^/    /'
    fi
  done
  python3 - "$base" "$out_sled" "$out_pg1" "$out_pg2" <<'PY'
import sys
def parse(text): return dict(kv.split("=", 1) for kv in text.splitlines()[0].split())
b, *runs = map(parse, sys.argv[1:])
print(f"OA summary (requests/s; same-run baseline hello-world {b['rps']}/s)")
sled = float(runs[0]["rps"])
for label, r in zip(("sled, 1 daemon", "pg, 1 daemon", "pg, 2 daemons"), runs):
    print(f"  {label:<16} {float(r['rps']):>7.0f}/s  ok={r['ok']}  p50={r['p50_ms']} ms  p99={r['p99_ms']} ms  max={r['max_ms']} ms  "
          f"ratio_to_baseline={float(r['rps']) / float(b['rps']):.3f}  ratio_to_sled={float(r['rps']) / sled:.2f}")
PY
fi

echo "failures: $failures"
[ "$failures" = 0 ]
