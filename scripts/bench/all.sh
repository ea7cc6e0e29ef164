#!/usr/bin/env bash
# Every benchmark at three sizes (the figures in BENCHMARKS.md). About 22 minutes on 2 cores;
# the 10,000-stream run needs root (file descriptors), the PostgreSQL one a PostgreSQL
# (PG_URL, or scripts/pg-up, which needs root the first time).
set -euo pipefail
cd "$(dirname "$0")"
for n in 5000 10000 20000; do echo "== OA callbacks: $n requests at concurrency 64"; ./mp_throughput.sh "$n" 64; done
for n in 1000 3000 10000; do echo "== $n streams held 30 s"; ./streams.sh "$n" 30; done
echo "== idle"; ./idle_rss.sh
for s in "1000 10000" "10000 100000" "100000 1000000"; do echo "== store of $s users/entries"; ./big_store.sh $s; done
echo "== disk per ledger entry, 10,000 users"; ./ledger_disk.sh 10000 100000
echo "== OA latency during backups, 100,000 users"; ./backup_latency.sh 100000 100000 200 30
for u in 1 8 64; do echo "== quota, $u users"; ./quota.sh "$u" 5; done
echo "== PostgreSQL, one and two daemons, against sled"; ./pg.sh 64 5 20000 64
