"""A short run of every benchmark script (debug builds, tiny sizes), so that they keep working;
the figures in BENCHMARKS.md come from the full release runs (scripts/bench/all.sh)."""

import os
import subprocess

import pytest

from conftest import ROOT

BENCH = ROOT / "scripts" / "bench"


def run(script, *args, timeout=600):
    env = dict(os.environ, BENCH_PROFILE="debug")
    r = subprocess.run([str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=ROOT)
    assert r.returncode == 0, f"{script} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_oa_callback_throughput_smoke():
    out = run("mp_throughput.sh", 300, 8)
    assert "c=8 | 300/300 replies right" in out and "| ratio " in out, out


def test_followers_rss_smoke():
    out = run("followers_rss.sh", 300, 150, 4)
    assert "followers=300 ok=300" in out and "answered=300/300" in out, out
    assert "MiB after 300 new followers" in out, out


def test_streams_smoke():
    out = run("streams.sh", 40, 2)
    assert "streams=40 ok=40" in out and "peak RSS:" in out and "ledger consistent: True" in out, out


def test_idle_and_big_store_smoke():
    assert "ratio chatrelay / python http.server:" in run("idle_rss.sh")
    out = run("big_store.sh", 200, 2000)
    assert "200 users, 2000 ledger entries: start to ready" in out, out



def test_ledger_disk_smoke():
    out = run("ledger_disk.sh", 100, 2000)
    assert "users=100 " in out and "entries=2000 " in out, out
    per = {line[:22].strip(): int(line.split()[-1]) for line in out.splitlines()
           if line.startswith(("as written", "after copy"))}
    assert set(per) == {"as written (du)", "after copy (du)", "as written (apparent)"}, out
    # Tiny stores are mostly sled's fixed costs (a copy can be bigger): figures need 100,000s.
    assert all(n > 0 for n in per.values()), out
    logical = int(out.split("logical per entry: ")[1].split()[0])
    assert 20 < logical < 100, out


def test_backup_latency_smoke():
    out = run("backup_latency.sh", 300, 300, 20, 2)
    assert "p99 during backups / without" in out and "snapshot pause (writers held)" in out, out


def test_quota_smoke():
    out = run("quota.sh", 4, 1)
    assert "consistent=true" in out and "reserve_settle_per_sec=" in out, out


@pytest.mark.skipif(not os.environ.get("CHATRELAY_TEST_PG_URL"), reason="needs PostgreSQL (scripts/pg-up)")
def test_pg_scale_out_smoke():
    out = run("pg.sh", 4, 1, 200, 8)
    assert "failures: 0" in out and "OA summary" in out and "quota summary" in out, out
