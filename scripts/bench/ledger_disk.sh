#!/usr/bin/env bash
# Disk per ledger entry (issue 21): `gen_store` (release) writes USERS users and ENTRIES ledger
# entries (grants, every fourth round a debit); the same USERS with no entry are the baseline
# (same run). Per entry = (store - baseline) / ENTRIES, as written and after a copy through a
# backup (export + restore: sled's log without its garbage). `du` counts allocated blocks.
#
# Usage: scripts/bench/ledger_disk.sh [USERS] [ENTRIES]   (default 10000 100000)
# GEN_STORE=path runs another gen_store binary (e.g. one built from an older commit) for a
# before/after in one sitting; the copy always uses this tree's `copy_store`.
set -euo pipefail
cd "$(dirname "$0")/../.."
users="${1:-10000}"
entries="${2:-100000}"
# BENCH_PROFILE=debug runs on debug builds (the e2e smoke run); figures come from release.
profile="${BENCH_PROFILE:-release}"
release=$([ "$profile" = release ] && echo --release || true)
cargo build $release --locked -p chatrelay-storage --example gen_store --example copy_store >/dev/null 2>&1
gen="${GEN_STORE:-$PWD/target/$profile/examples/gen_store}"
copy="$PWD/target/$profile/examples/copy_store"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bytes() { du -sb --apparent-size "$1" | cut -f1; }
blocks() { du -s -B1 "$1" | cut -f1; }
"$gen" "$work/base" "$users" 0 >/dev/null
"$gen" "$work/full" "$users" "$entries" >"$work/gen.txt"
"$copy" "$work/base" "$work/base-copy" >"$work/copy-base.txt"
"$copy" "$work/full" "$work/full-copy" >"$work/copy.txt"
per() { python3 -c "print(f'{($1 - $2) / $entries:.0f}')"; }
echo "$(tr '\n' ' ' <"$work/gen.txt")"
logical() { sed -n 's/.* bytes=\([0-9]*\).*/\1/p' "$1"; }
echo "logical (backup's raw keys+values): $(tr '\n' ' ' <"$work/copy.txt")"
echo "logical per entry: $(per "$(logical "$work/copy.txt")" "$(logical "$work/copy-base.txt")") bytes"
printf '%-22s %14s %14s %10s\n' "" "store (bytes)" "baseline" "per entry"
printf '%-22s %14s %14s %10s\n' "as written (du)" "$(blocks "$work/full")" "$(blocks "$work/base")" \
  "$(per "$(blocks "$work/full")" "$(blocks "$work/base")")"
printf '%-22s %14s %14s %10s\n' "after copy (du)" "$(blocks "$work/full-copy")" "$(blocks "$work/base-copy")" \
  "$(per "$(blocks "$work/full-copy")" "$(blocks "$work/base-copy")")"
printf '%-22s %14s %14s %10s\n' "as written (apparent)" "$(bytes "$work/full")" "$(bytes "$work/base")" \
  "$(per "$(bytes "$work/full")" "$(bytes "$work/base")")"
