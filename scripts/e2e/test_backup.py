"""Backup and restore: `chatrelay admin backup` takes a consistent snapshot from the running
daemon under write load; `chatrelay restore` puts it into an empty data directory; a daemon on
the restored data has the same users and a clean audit."""

import json
import subprocess
import threading
import urllib.request

from conftest import BINARY, Daemon


def grant(d, uid, credits, ref):
    req = urllib.request.Request(f"{d.url}/admin/users/{uid}/grant", method="POST",
                                 data=json.dumps({"credits": credits, "reason": "load", "reference": ref}).encode(),
                                 headers={"authorization": f"Bearer {d.admin_token}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


def test_backup_under_load_and_restore(upstream, tmp_path):
    a = Daemon(upstream.base_url).start()
    uids = [a.new_user(f"u{i}", credits=5)[0] for i in range(3)]
    stop = threading.Event()
    done = []

    def load():
        n = 0
        while not stop.is_set():
            grant(a, uids[n % 3], 1, f"load-{n}")
            n += 1
        done.append(n)

    t = threading.Thread(target=load)
    t.start()
    try:
        backup = tmp_path / "chatrelay.backup"
        out = a.cli("backup", str(backup)).stdout
        assert "records" in out, out
        again = a.cli("backup", str(backup), check=False)
        assert again.returncode != 0 and "exists" in again.stderr, "a backup never overwrites a file"
    finally:
        stop.set()
        t.join()
    assert done and done[0] > 0, "the load ran during the backup"
    assert a.stop() == 0

    b = Daemon(upstream.base_url)
    r = subprocess.run([str(BINARY), "--config", str(b.config), "restore", str(backup)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "restored" in r.stdout
    again = subprocess.run([str(BINARY), "--config", str(b.config), "restore", str(backup)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode != 0, "restoring over existing data is refused"
    b.start()
    try:
        audit = b.audit()
        assert audit["mismatches"] == [], audit
        for uid in uids:
            user = b.user(uid)
            assert user["balance"]["paid"] >= 5
            assert sum(e["paid_delta"] for e in user["ledger"]) <= user["balance"]["paid"]
        # The restored daemon keeps working: new writes land after the restored ones.
        assert grant(b, uids[0], 1, "after-restore") == 200
        assert b.audit()["mismatches"] == []
    finally:
        assert b.stop() == 0

    bad = tmp_path / "bad.backup"
    bad.write_text(backup.read_text()[:200])
    c = Daemon(upstream.base_url)
    r = subprocess.run([str(BINARY), "--config", str(c.config), "restore", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert not (c.dir / "data" / "db").exists() or not any((c.dir / "data" / "db").iterdir()), \
        "a broken backup leaves no database behind"
