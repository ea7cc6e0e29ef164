"""Migrations onto PostgreSQL's relational tables, with the real binary (issue 21, item 5):

- `chatrelay migrate-data --from sled:DIR` copies a single-server installation into the
  relational tables (`users`, `ledger`, `orders`, ...) of an empty schema and checks a census;
  a second copy into the same schema is refused and changes nothing.
- A daemon refuses a schema of the older one-table layout (`chatrelay_kv`) and says to run
  `chatrelay migrate`; on a schema this build's daemon wrote, `migrate` says it is already
  relational.
- `chatrelay migrate` on the embedded store opens it (which upgrades it) and prints its census.

What the relational tables hold is read with `psql` (Debian's postgresql-client; psycopg is not
installed). Needs CHATRELAY_TEST_PG_URL (export CHATRELAY_TEST_PG_URL=$(scripts/pg-up)).
"""

import json
import os
import re
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

PG_URL = os.environ.get("CHATRELAY_TEST_PG_URL")
if not PG_URL:
    pytest.skip("CHATRELAY_TEST_PG_URL is unset: the migration tests need PostgreSQL "
                "(export CHATRELAY_TEST_PG_URL=$(scripts/pg-up); scripts/test does it)",
                allow_module_level=True)
if not shutil.which("psql"):
    pytest.skip("psql is not installed (apt-get install postgresql-client)", allow_module_level=True)

from conftest import BINARY, COST, MODEL, Daemon, psql_rows as psql  # noqa: E402


def scalar(sql):
    rows = psql(sql)
    assert len(rows) == 1 and len(rows[0]) == 1, rows
    return rows[0][0]


def relations(schema):
    """The tables and sequences of `schema`."""
    return {r[0] for r in psql(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'S')")}


def counts(schema):
    """Rows of users, ledger, orders and tokens, and the sums of paid and held credits."""
    row = psql(f"""SELECT (SELECT count(*) FROM "{schema}".users),
                          (SELECT count(*) FROM "{schema}".ledger),
                          (SELECT count(*) FROM "{schema}".orders),
                          (SELECT COALESCE(sum(paid), 0) FROM "{schema}".balances),
                          (SELECT COALESCE(sum(held), 0) FROM "{schema}".balances),
                          (SELECT count(*) FROM "{schema}".tokens)""")[0]
    return dict(zip(["users", "ledger", "orders", "paid", "held", "tokens"], map(int, row)))


@pytest.fixture
def schema():
    name = "s_mig_" + secrets.token_hex(6)
    yield name
    psql(f"SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{name}\" CASCADE")


def chat(d, token, content="hi"):
    """One metered `/v1/chat/completions` answer: the HTTP status."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}]}).encode()
    req = urllib.request.Request(d.url + "/v1/chat/completions", data=body, method="POST")
    req.add_header("content-type", "application/json")
    req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def fill(d):
    """Users with grants, a revoke, metered answers: (uids, audit). The daemon is stopped after."""
    d.start()
    try:
        alice, alice_token = d.new_user("alice", credits=20)
        bob, bob_token = d.new_user("bob", credits=7)
        carol, _ = d.new_user("carol")
        d.cli("revoke", str(alice), "2", "--reason", "a mistaken grant")
        for token in (alice_token, alice_token, bob_token):
            assert chat(d, token) == 200
        audit = d.audit()
        assert audit["total_paid"] == 20 - 2 - 2 * COST + 7 - COST, audit
    finally:
        assert d.stop() == 0, d.logs()
    return (alice, bob, carol), audit


def run(d, *args):
    return subprocess.run([str(BINARY), "-c", str(d.config), *args],
                          capture_output=True, text=True, timeout=120)


def verified_figures(stdout):
    """The `verified:` line's balances, paid and held sums."""
    lines = [line for line in stdout.splitlines() if line.startswith("verified:")]
    assert len(lines) == 1, f"no single `verified:` line in:\n{stdout}"
    m = re.search(r"(\d+) balances, paid credits (\d+) and held credits (\d+)", lines[0])
    assert m, lines[0]
    return tuple(map(int, m.groups()))


def table_rows(stdout):
    """The `table    rows` lines."""
    return {m.group(1): int(m.group(2)) for m in
            (re.match(r"^(\w+)\s+(\d+)\s*$", line) for line in stdout.splitlines()) if m}


def test_migrate_data_copies_sled_into_the_relational_tables(upstream, schema):
    """A sled installation copied with `migrate-data` lands in `users`, `ledger`, `balances`
    with the daemon's own audit figures; the old layout's table is never made; a second copy
    is refused and changes nothing."""
    src = Daemon(upstream.base_url)
    uids, audit = fill(src)
    out = run(src, "migrate-data", "--from", f"sled:{src.dir / 'data'}", "--to", PG_URL, "--schema", schema)
    assert out.returncode == 0, f"migrate-data failed:\n{out.stdout}\n{out.stderr}"
    balances, paid, held = verified_figures(out.stdout)
    assert (balances, paid, held) == (audit["users"], audit["total_paid"], audit["total_held"]), \
        (out.stdout, audit)
    rows = table_rows(out.stdout)
    assert rows.get("users") == audit["users"] and rows.get("ledger") == audit["ledger_entries"], out.stdout

    found = counts(schema)
    assert (found["users"], found["ledger"], found["paid"], found["held"]) == \
        (audit["users"], audit["ledger_entries"], audit["total_paid"], audit["total_held"]), (found, audit)
    assert found["orders"] == 0
    names = dict(psql(f'SELECT uid, name FROM "{schema}".users ORDER BY uid'))
    assert [names.get(str(u)) for u in uids] == ["alice", "bob", "carol"], names
    # The revoke is a ledger entry like any other, readable with SQL.
    assert scalar(f"SELECT delta FROM \"{schema}\".ledger WHERE uid = {uids[0]} AND reason = 'a mistaken grant'") == "-2"
    assert "chatrelay_kv" not in relations(schema)
    assert scalar(f"SELECT count(*) FROM \"{schema}\".meta WHERE key = 'import_finished_at_ms'") == "1"

    again = run(src, "migrate-data", "--from", f"sled:{src.dir / 'data'}", "--to", PG_URL, "--schema", schema)
    assert again.returncode != 0, f"a second copy must be refused:\n{again.stdout}"
    assert "not empty" in again.stderr, again.stderr
    assert "verified:" not in again.stdout
    assert counts(schema) == found, "a refused copy changed the schema"


def test_a_daemon_refuses_the_one_table_layout_and_migrate_names_it(upstream, schema):
    """A schema holding the older one-table layout (`chatrelay_kv` with rows, as a PostgreSQL
    daemon of an earlier build left it) is never opened: the daemon refuses to start and says
    to run `chatrelay migrate`, creating no relational table beside it. (This build writes no
    one-table data any more; the migration of a real one is
    `rel::tests::migrate::a_one_table_schema_migrates_in_place_and_then_opens`, which fills
    one through the key-value engine.)"""
    psql(f'CREATE SCHEMA "{schema}"')
    psql(f'CREATE TABLE "{schema}".chatrelay_kv (tree text NOT NULL, k bytea NOT NULL, '
         'v bytea NOT NULL, PRIMARY KEY (tree, k))')
    psql(f"INSERT INTO \"{schema}\".chatrelay_kv VALUES ('meta', 'schema_version', '2')")
    storage = f'backend = "postgres"\nurl = "{PG_URL}"\nschema = "{schema}"\n'
    d = Daemon(upstream.base_url, storage_toml=storage)
    with pytest.raises(RuntimeError, match="daemon exited early"):
        d.start()
    assert d.proc.returncode != 0
    assert "chatrelay migrate" in d.logs(), d.logs()
    assert relations(schema) == {"chatrelay_kv"}, relations(schema)


def test_migrate_on_a_relational_schema_only_reports_its_version(upstream, schema):
    """A PostgreSQL daemon of this build writes the relational tables; `migrate` then finds
    nothing to move and says the schema is already relational, changing nothing."""
    storage = f'backend = "postgres"\nurl = "{PG_URL}"\nschema = "{schema}"\n'
    d = Daemon(upstream.base_url, storage_toml=storage)
    uids, audit = fill(d)
    assert "chatrelay_kv" not in relations(schema)
    found = counts(schema)
    assert (found["users"], found["ledger"], found["paid"], found["held"]) == \
        (audit["users"], audit["ledger_entries"], audit["total_paid"], audit["total_held"]), (found, audit)
    again = run(d, "migrate")
    assert again.returncode == 0, again.stderr
    m = re.search(r"schema \S+ is at version (\d+) \((\d+) applied now, (\d+) before\)", again.stdout)
    assert m and f"already relational, version {m.group(1)}" in again.stdout, again.stdout
    assert (int(m.group(2)), int(m.group(3))) == (0, int(m.group(1))), again.stdout
    assert "verified:" not in again.stdout
    assert counts(schema) == found

    # The README's queries for operators run as written on what the daemon wrote.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("What operators ask, in SQL:", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    code = "\n".join(line for line in block.splitlines() if not line.strip().startswith("--"))
    queries = [q.strip() for q in code.split(";") if q.strip()]
    assert len(queries) == 4, queries
    answers = [psql(f'SET search_path TO "{schema}"; {q}') for q in queries]
    ledger_rows = answers[1]
    assert ledger_rows == [] or all(len(r) == 7 for r in ledger_rows), ledger_rows
    spent = {int(r[0]): int(r[1]) for r in answers[2]}
    assert sum(spent.values()) == 3 * COST, spent  # the three metered answers of fill()


def test_migrate_on_the_embedded_store_prints_its_census(upstream):
    """With the embedded store `migrate` opens it (the store upgrades itself) and prints its
    schema version and census, with the daemon's figures."""
    d = Daemon(upstream.base_url)
    nothing = run(d, "migrate")
    assert nothing.returncode == 0 and "nothing to migrate" in nothing.stdout, (nothing.stdout, nothing.stderr)
    assert not (d.dir / "data" / "db").exists(), "migrate must not create a store"
    _, audit = fill(d)
    out = run(d, "migrate")
    assert out.returncode == 0, out.stderr
    assert re.search(r"is at schema version \d+", out.stdout), out.stdout
    figures = {m.group(1).strip(): int(m.group(2)) for m in
               (re.match(r"^(.+?)\s{2,}(-?\d+)\s*$", line) for line in out.stdout.splitlines()) if m}
    assert figures.get("users") == audit["users"], out.stdout
    assert figures.get("ledger entries") == audit["ledger_entries"], out.stdout
    assert figures.get("paid credits (sum)") == audit["total_paid"], out.stdout
