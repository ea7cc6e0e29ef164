#!/usr/bin/env bash
# Quota reserve + settle throughput: USERS threads, one user each, for SECS seconds on one
# store; the ledger is audited against the balances afterwards. Baseline in the same run:
# plain sled inserts by the same threads.
#
# Usage: scripts/bench/quota.sh [USERS] [SECS] [OPTIONS...]   (default 64 5; OPTIONS go to
# quota_bench, e.g. `--pg URL` for PostgreSQL: see storage/examples/quota_bench.rs, and
# scripts/bench/pg.sh for one and two processes on PostgreSQL against sled)
set -euo pipefail
cd "$(dirname "$0")/../.."
# BENCH_PROFILE=debug runs on debug builds (the e2e smoke run); figures come from release.
profile="${BENCH_PROFILE:-release}"
release=$([ "$profile" = release ] && echo --release || true)
cargo build $release --locked -p chatrelay-storage --example quota_bench >/dev/null 2>&1
"$PWD/target/$profile/examples/quota_bench" "${1:-64}" "${2:-5}" "${@:3}"
