"""Compact ledger values (issue 21): the daemon writes the money records (ledger, its reference
index, balances) as compact binary, format byte 1, decoded here by an independent reader of the
documented layout (storage/src/quota/value.rs); and a store whose records are still the JSON of
older versions (a backup taken before, restored) keeps working: same ledger, idempotent on its
old references, new entries continue it, clean audit."""

import hashlib
import json
import subprocess
import urllib.request

from conftest import BINARY, Daemon

KINDS = {1: "usage", 2: "grant", 3: "purchase", 4: "refund", 5: "adjust"}


class Reader:
    def __init__(self, raw):
        self.raw, self.at = raw, 0

    def byte(self):
        b = self.raw[self.at]
        self.at += 1
        return b

    def varint(self):
        n, shift = 0, 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return n

    def ivarint(self):
        z = self.varint()
        return (z >> 1) ^ -(z & 1)

    def text(self):
        n = self.varint()
        s = self.raw[self.at:self.at + n].decode()
        self.at += n
        return s


def entry_from_binary(key, raw):
    assert raw[0] == 1, raw
    r = Reader(raw[1:])
    return {"uid": int.from_bytes(key[:8], "big"), "seq": int.from_bytes(key[8:], "big"),
            "kind": KINDS[r.byte()], "at_ms": r.ivarint(), "free_delta": r.ivarint(),
            "paid_delta": r.ivarint(), "paid_after": r.varint(), "reason": r.text(),
            "reference": r.text()}


def ref_from_binary(raw):
    assert raw[0] == 1, raw
    r = Reader(raw[1:])
    return {"uid": r.varint(), "seq": r.varint()}


def balance_from_binary(raw):
    assert raw[0] == 1, raw
    r = Reader(raw[1:])
    b = {"paid": r.varint(), "held": r.varint(), "free_day": r.ivarint(),
         "free_used": r.varint(), "next_seq": r.varint()}
    assert r.byte() == 0, "no plan in this test"
    return b


def grant(d, uid, credits, ref):
    req = urllib.request.Request(f"{d.url}/admin/users/{uid}/grant", method="POST",
                                 data=json.dumps({"credits": credits, "reason": "e2e", "reference": ref}).encode(),
                                 headers={"authorization": f"Bearer {d.admin_token}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def read_backup(path):
    lines = path.read_text().splitlines()
    header, footer = json.loads(lines[0]), json.loads(lines[-1])
    records = [json.loads(line) for line in lines[1:-1]]
    assert footer["records"] == len(records)
    return header, records


def write_backup(path, header, records):
    lines = [json.dumps(r, separators=(",", ":")) for r in records]
    sha = hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()
    footer = {"end": True, "records": len(lines), "sha256": sha}
    path.write_text("\n".join([json.dumps(header), *lines, json.dumps(footer)]) + "\n")


def money(records):
    """The ledger, ledger_refs and balances records as (tree, key bytes, value bytes)."""
    return [(r["t"], bytes.fromhex(r["k"]), bytes.fromhex(r["v"])) for r in records
            if r["t"] in ("ledger", "ledger_refs", "balances")]


def test_binary_values_and_a_restored_json_store(upstream, tmp_path):
    a = Daemon(upstream.base_url).start()
    try:
        uid, _ = a.new_user("old", credits=50)
        grant(a, uid, 7, "ref-1")
        grant(a, uid, 3, "ref-2")
        ledger_a = a.user(uid)["ledger"]
        backup = tmp_path / "binary.backup"
        a.cli("backup", str(backup))
    finally:
        assert a.stop() == 0

    # What the daemon wrote is binary, and reads back as the CLI shows it.
    header, records = read_backup(backup)
    rows = money(records)
    assert {t for t, _, _ in rows} == {"ledger", "ledger_refs", "balances"}
    entries = {}
    for tree, key, value in rows:
        assert value[0] == 1, f"{tree} value is not format 1: {value[:20]!r}"
        if tree == "ledger":
            e = entry_from_binary(key, value)
            entries[e["seq"]] = e
            assert len(value) < 40 + len(e["reason"]) + len(e["reference"])
        elif tree == "ledger_refs":
            at = ref_from_binary(value)
            assert entries[at["seq"]]["reference"] == key.decode()
        else:
            b = balance_from_binary(value)
            assert b["paid"] == 60 and b["next_seq"] == 4
    for shown in ledger_a:
        mine = entries[shown["seq"]]
        for field in ("kind", "at_ms", "paid_delta", "paid_after", "reason", "reference"):
            assert mine[field] == shown[field], (field, mine, shown)

    # The same records as an older version (schema 1) wrote them: JSON.
    assert header["schema_version"] == 2, header
    header["schema_version"] = 1
    for r in records:
        key, value = bytes.fromhex(r["k"]), bytes.fromhex(r["v"])
        if r["t"] == "meta" and key == b"schema_version":
            r["v"] = b"1".hex()
        elif r["t"] == "ledger":
            r["v"] = json.dumps(entry_from_binary(key, value)).encode().hex()
        elif r["t"] == "ledger_refs":
            r["v"] = json.dumps(ref_from_binary(value)).encode().hex()
        elif r["t"] == "balances":
            r["v"] = json.dumps(balance_from_binary(value)).encode().hex()
    old = tmp_path / "json.backup"
    write_backup(old, header, records)

    b = Daemon(upstream.base_url)
    r = subprocess.run([str(BINARY), "--config", str(b.config), "restore", str(old)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    b.start()
    try:
        assert b.audit()["mismatches"] == []
        assert b.user(uid)["ledger"] == ledger_a
        assert b.paid(uid) == 60
        # An old reference is still idempotent; a new one continues the ledger.
        grant(b, uid, 7, "ref-1")
        assert b.paid(uid) == 60
        grant(b, uid, 5, "ref-3")
        ledger_b = b.user(uid)["ledger"]
        assert [e["seq"] for e in ledger_b][:2] == [4, 3], ledger_b
        assert ledger_b[0]["paid_after"] == 65 and ledger_b[1:] == ledger_a
        assert b.audit()["mismatches"] == []
        mixed = tmp_path / "mixed.backup"
        b.cli("backup", str(mixed))
    finally:
        assert b.stop() == 0
    # The store was upgraded to schema 2 when opened (an older build now refuses it), and it
    # holds both forms: the restored JSON and the new binary records.
    header, records = read_backup(mixed)
    assert header["schema_version"] == 2, header
    firsts = {(t, v[:1]) for t, _, v in money(records)}
    assert ("ledger", b"{") in firsts and ("ledger", b"\x01") in firsts, firsts
    assert ("balances", b"\x01") in firsts, "the balance was rewritten in the new form"
