#!/usr/bin/env bash
# Official Account callbacks on PostgreSQL (the relational tables) against sled, in one
# sitting: scripts/bench/mp_throughput.sh on each engine (each with its own hello-world
# baseline), alternated ROUNDS times, then the PostgreSQL / sled ratio of each pair and the
# statements (round trips) per message that `/metrics` counted.
#
# Usage: scripts/bench/pg_oa.sh [REQUESTS] [CONCURRENCIES] [ROUNDS]   (default 20000 "1 64" 2)
# PostgreSQL: PG_URL, else CHATRELAY_TEST_PG_URL, else scripts/pg-up. Each PostgreSQL run uses a
# fresh schema bench_oa_<random>, dropped afterwards. BENCH_BIN_DIR as for mp_throughput.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:-20000}"
concurrencies="${2:-1 64}"
rounds="${3:-2}"
url="${PG_URL:-${CHATRELAY_TEST_PG_URL:-}}"
[ -n "$url" ] || url=$(scripts/pg-up)
out=$(mktemp)
schemas=()
trap 'for s in "${schemas[@]}"; do psql -q "$url" -c "DROP SCHEMA IF EXISTS $s CASCADE" >/dev/null 2>&1 || true; done; rm -f "$out"' EXIT
for round in $(seq "$rounds"); do
  echo "== round $round: sled" | tee -a "$out"
  scripts/bench/mp_throughput.sh "$n" "$concurrencies" | grep '^c=.* | ' | sed 's/^/sled /' | tee -a "$out"
  schema="bench_oa_$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
  schemas+=("$schema")
  echo "== round $round: postgres (schema $schema)" | tee -a "$out"
  STORAGE_TOML=$(printf 'backend = "postgres"\nurl = "%s"\nschema = "%s"' "$url" "$schema") \
    scripts/bench/mp_throughput.sh "$n" "$concurrencies" | grep '^c=.* | ' | sed 's/^/pg /' | tee -a "$out"
done
python3 - "$out" <<'PY'
import re, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"(sled|pg) c=(\d+) \| (\d+)/(\d+) replies right \| chatrelay (\d+) req/s p50 (\S+) ms p99 (\S+) ms \| hello (\d+) req/s.*?\| ratio (\S+)", line)
    if m:
        runs.setdefault((m.group(1), m.group(2)), []).append(m)
print("\nPostgreSQL / sled, pair by pair:")
for (engine, c), ms in sorted(runs.items()):
    if engine != "pg":
        continue
    for i, pg in enumerate(ms):
        sled = runs.get(("sled", c), [])[i]
        rt = re.search(r"statements/msg (\S+)", pg.string)
        print(f"c={c} round {i + 1}: pg {pg.group(5)} req/s (p99 {pg.group(7)} ms, {pg.group(9)}x hello) / "
              f"sled {sled.group(5)} req/s (p99 {sled.group(7)} ms, {sled.group(9)}x hello) = "
              f"{int(pg.group(5)) / int(sled.group(5)):.2f}; statements per message {rt.group(1) if rt else '?'}")
PY
