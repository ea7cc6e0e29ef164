"""Scale-out end to end: two real daemons on one PostgreSQL database (`[storage] backend =
"postgres"`, the same url and schema) behave as one service. Money is exact whichever daemon a
request lands on, and conflicts between them are retried, never shown to users; work is done
once (an Official Account retry on the other daemon, a payment notification delivered to both);
leader-only jobs (zsxq polling) move to the other daemon when the leader dies; a single-server
installation moves onto PostgreSQL with `migrate-data`; migrations are applied once, by
`migrate` or by daemons starting together.

Needs CHATRELAY_TEST_PG_URL (scripts/pg-up starts the local PostgreSQL and prints it; scripts/test
exports it). Each test works in a schema of its own, dropped at the end.
"""

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

PG_URL = os.environ.get("CHATRELAY_TEST_PG_URL")
if not PG_URL:
    pytest.skip("CHATRELAY_TEST_PG_URL is unset: the scale-out tests need PostgreSQL "
                "(export CHATRELAY_TEST_PG_URL=$(scripts/pg-up); scripts/test does it)",
                allow_module_level=True)

from conftest import ANSI, BINARY, COST, MODEL, Daemon, psql_rows  # noqa: E402
from fake_openai import ANSWER  # noqa: E402
from fake_wechat import FakeWechat  # noqa: E402
from fake_zsxq import FakeZsxq  # noqa: E402
from test_payments import (PUBLIC_URL, PayDaemon, alipay, assert_credited_once, concurrently,  # noqa: E402,F401
                           create_order, pay_toml, paykeys, post_wechat_notify, purchases, status_of,
                           wait_for, wxpay)
from test_wechat_mp import WeChat  # noqa: E402

# How long a daemon that does not lead a job may take to lead it once the leader is gone
# (it retries every 2 s; PostgreSQL frees a dead session's advisory locks at once).
TAKEOVER_SECS = 15


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def pg_storage(schema, pool_size=8):
    """The `[storage]` keys of a daemon sharing `schema` of the test database."""
    return f'backend = "postgres"\nurl = "{PG_URL}"\nschema = "{schema}"\npool_size = {pool_size}\n'


def drop_schema(name):
    """Best effort: a test's schema is dropped when it ends (psql from Debian's postgresql)."""
    if not shutil.which("psql"):
        return
    r = subprocess.run(["psql", PG_URL, "-qAt", "-v", "ON_ERROR_STOP=1", "-c",
                        f"SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{name}\" CASCADE"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        print(f"could not drop schema {name}: {r.stderr.strip()}")


@pytest.fixture
def schema():
    """A fresh schema name; nothing exists in it until a daemon (or `migrate`) creates it."""
    name = "s_e2e_" + secrets.token_hex(6)
    yield name
    drop_schema(name)


@contextlib.contextmanager
def running(*daemons):
    """Starts the daemons one after the other; at the end stops those still running and
    expects each to exit 0 (a daemon the test killed is left as it is)."""
    started = []
    try:
        for d in daemons:
            started.append(d.start())
        yield daemons
    except BaseException:
        for d in started:
            with contextlib.suppress(Exception):
                d.stop()
        raise
    codes = {}
    for name, d in zip("ABCDEFG", started):
        if d.proc.poll() is None:
            codes[name] = (d.stop(), d)
    bad = {name: code for name, (code, _) in codes.items() if code != 0}
    assert not bad, "daemons did not exit 0 on SIGTERM: " + "; ".join(
        f"{name} exited {code}: {codes[name][1].logs(1500)}" for name, code in bad.items())


def chat(d, token, content="hi", timeout=30):
    """One metered `/v1/chat/completions` answer: (HTTP status, JSON body)."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}]}).encode()
    req = urllib.request.Request(d.url + "/v1/chat/completions", data=body, method="POST")
    req.add_header("content-type", "application/json")
    req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"raw": raw[:300].decode(errors="replace")}


def full_user(d, uid):
    """`admin user show` with the whole ledger."""
    return json.loads(d.cli("--json", "user", "show", str(uid), "--ledger", "100000").stdout)


def ledger_chain_problems(ledger):
    """What is wrong with a user's ledger as a sequence: every entry's paid_after must be the
    previous one's plus its paid_delta (no lost update), never below zero, seqs unique."""
    problems, paid = [], 0
    entries = sorted(ledger, key=lambda e: e["seq"])
    if len({e["seq"] for e in entries}) != len(entries):
        problems.append(f"duplicate seqs: {[e['seq'] for e in entries]}")
    for e in entries:
        paid += e["paid_delta"]
        if e["paid_after"] != paid:
            problems.append(f"seq {e['seq']}: paid_after {e['paid_after']}, expected {paid} (entry {e})")
            paid = e["paid_after"]
        if e["paid_after"] < 0:
            problems.append(f"seq {e['seq']}: paid_after below zero: {e}")
    return problems


def assert_audit_clean(*daemons, holds_allowed=False):
    """Every ledger sums to its balance; nothing is held once every request has ended (unless a
    daemon was killed mid-answer: its holds wait for their expiry)."""
    for name, d in zip("AB", daemons):
        report = d.audit()
        assert report["mismatches"] == [], f"admin audit on daemon {name} found mismatches: {report}"
        if not holds_allowed:
            assert report["open_reservations"] == 0 and report["total_held"] == 0, \
                f"credits still held after every request ended (daemon {name}): {report}"


def leads(d, job):
    """Whether the daemon's log says it took `job` (`leading job` with `job=<job>`)."""
    return any("leading job" in line and re.search(rf"\bjob=\"?{re.escape(job)}\b", line)
               for line in d.log_lines())


# ---------------------------------------------------------------------------------------------
# 1. Money: requests alternating between the daemons never overspend
# ---------------------------------------------------------------------------------------------

def test_chat_alternating_between_two_daemons_never_overspends(upstream, schema):
    """A user with credits for 10 answers (and 1 left over) fires 40 concurrent metered
    requests, alternating daemons A and B: exactly 10 are answered and charged, the others are
    refused as insufficient quota, the balance never goes below zero, and both daemons agree."""
    credits, n = 10 * COST + 1, 40
    a = Daemon(upstream.base_url, storage_toml=pg_storage(schema), free_daily=0, llm_timeout=10)
    b = Daemon(upstream.base_url, storage_toml=pg_storage(schema), free_daily=0, llm_timeout=10)
    with running(a, b):
        uid, token = a.new_user("spender", credits=credits)
        assert b.paid(uid) == credits, "daemon B does not see the user and grant made through A"
        calls_before = upstream.chat_request_count()

        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                for name, d in (("A", a), ("B", b)):
                    try:
                        samples.append((name, d.user(uid)["balance"]))
                    except AssertionError:
                        pass

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            results = concurrently(n, lambda i: chat(a if i % 2 == 0 else b, token, f"question {i}"))
        finally:
            stop.set()
            sampler.join(timeout=30)

        errors = [(i, r) for i, r in enumerate(results) if isinstance(r, Exception)]
        assert not errors, f"requests failed at the HTTP level: {errors[:5]}"
        answered = [i for i, (st, _) in enumerate(results) if st == 200]
        refused = [i for i, (st, body) in enumerate(results)
                   if st == 429 and (body.get("error") or {}).get("code") == "insufficient_quota"]
        other = [(i, "AB"[i % 2], st, body) for i, (st, body) in enumerate(results)
                 if i not in answered and i not in refused]
        assert not other, (f"every request must be answered (200) or refused as insufficient_quota (429); "
                           f"others: {other[:5]}\nA: {a.logs(1500)}\nB: {b.logs(1500)}")
        for i in answered:
            assert results[i][1]["choices"][0]["message"]["content"] == ANSWER, results[i]
        assert len(answered) <= credits // COST, \
            f"OVERSPENT: {len(answered)} answers at {COST} credits from a balance of {credits}"
        assert len(answered) == credits // COST, \
            f"{len(answered)} answers although the balance paid for {credits // COST} (refused: {len(refused)})"
        assert refused, "no request was refused although more were sent than the balance pays for"
        print(f"answered by A: {sum(1 for i in answered if i % 2 == 0)}, by B: {sum(1 for i in answered if i % 2)}")
        assert upstream.chat_request_count() - calls_before == len(answered), \
            "one upstream call per answer, none for a refusal"

        bad = [(name, bal) for name, bal in samples
               if bal["paid"] < 0 or bal["available"] < 0 or bal["held"] < 0 or bal["available"] > credits]
        assert samples and not bad, f"balance out of bounds while the requests ran: {bad[:5]}"

        spent = len(answered) * COST
        views = {name: full_user(d, uid) for name, d in (("A", a), ("B", b))}
        for name, view in views.items():
            bal, ledger = view["balance"], view["ledger"]
            assert (bal["paid"], bal["held"]) == (credits - spent, 0), f"daemon {name}: balance {bal}"
            usage = [e for e in ledger if e["kind"] == "usage"]
            assert len(usage) == len(answered), f"daemon {name}: {len(usage)} usage entries for {len(answered)} answers"
            assert all(e["paid_delta"] == -COST for e in usage), [e for e in usage if e["paid_delta"] != -COST]
            assert sum(e["paid_delta"] for e in ledger) == bal["paid"], f"daemon {name}: ledger does not sum to the balance"
            assert sum(-e["paid_delta"] for e in usage) == spent
            problems = ledger_chain_problems(ledger)
            assert not problems, f"daemon {name}: the ledger is not one sequence of changes: {problems[:5]}"
        assert views["A"]["balance"] == views["B"]["balance"] and views["A"]["ledger"] == views["B"]["ledger"], \
            "the two daemons show different balances or ledgers for the same user"
        assert_audit_clean(a, b)


def test_contention_across_daemons_fails_no_paid_request(upstream, schema):
    """Ten rounds: a user with credits for exactly 20 answers sends 20 requests at once, half to
    each daemon. They all update one balance, so their transactions conflict; conflicts must be
    retried, never shown to the user: every request is answered and charged (no 5xx, no false
    'insufficient'), and nothing stays held."""
    per_round, rounds = 20, 10
    a = Daemon(upstream.base_url, storage_toml=pg_storage(schema), free_daily=0, llm_timeout=10)
    b = Daemon(upstream.base_url, storage_toml=pg_storage(schema), free_daily=0, llm_timeout=10)
    with running(a, b):
        failures = []
        for round_ in range(rounds):
            uid, token = a.new_user(f"busy{round_}", credits=per_round * COST)
            results = concurrently(per_round, lambda i: chat(a if i % 2 == 0 else b, token, f"round {round_} #{i}"))
            bad = [(i, "AB"[i % 2], r if isinstance(r, Exception) else (r[0], r[1].get("error")))
                   for i, r in enumerate(results) if isinstance(r, Exception) or r[0] != 200]
            balance = a.user(uid)["balance"]
            if bad or (balance["paid"], balance["held"]) != (0, 0):
                failures.append(f"round {round_}: failed requests {bad}; balance after {balance}")
        assert not failures, (f"paid requests failed under cross-daemon contention ({len(failures)} of {rounds} rounds):\n  "
                              + "\n  ".join(failures)
                              + "\nwarnings: " + "\n".join(line for d in (a, b) for line in d.log_lines()
                                                             if " WARN " in line or " ERROR " in line)[-3000:])
        assert_audit_clean(a, b)


# ---------------------------------------------------------------------------------------------
# 2. An Official Account message delivered to both daemons is answered once
# ---------------------------------------------------------------------------------------------

MP = dict(id="main", app_id="wx5ca1e0u70000001", token="e2e-token-scale",
          aes_key=base64.b64encode(bytes(range(1, 33))).decode().rstrip("="))
PASSIVE_MS, WINDOW_MS = 1000, 3000


def mp_toml(wechat_api):
    return f"""
[[wechat_mp]]
id = "{MP['id']}"
app_id = "{MP['app_id']}"
app_secret = "secret-scale"
token = "{MP['token']}"
encoding_aes_key = "{MP['aes_key']}"
api_base = "{wechat_api.url}"
passive_wait_ms = {PASSIVE_MS}
retry_window_ms = {WINDOW_MS}
"""


@pytest.mark.parametrize("pattern", ["retries", "concurrent"])
def test_official_account_message_on_both_daemons_is_answered_once(upstream, schema, pattern):
    """The same message (one MsgId) reaches daemon A, then B, then A — as WeChat's retries
    after timeouts do when a load balancer spreads them (`retries`: the LLM is slower than a
    try, so the first two time out), or all three at once (`concurrent`, a fast LLM). One LLM
    call, one charge; the user gets the answer, and only once (a passive reply, or a push when
    no try could carry it — not both)."""
    wechat_api = FakeWechat()
    a = Daemon(upstream.base_url, extra_toml=mp_toml(wechat_api), storage_toml=pg_storage(schema),
               free_daily=100, llm_timeout=10)
    b = Daemon(upstream.base_url, extra_toml=mp_toml(wechat_api), storage_toml=pg_storage(schema),
               free_daily=100, llm_timeout=10)
    try:
        with running(a, b):
            wa, wb = WeChat(a, MP), WeChat(b, MP)
            openid = "o_scale_" + secrets.token_hex(4)
            question = f"两个实例上的同一个问题 {secrets.token_hex(4)}"
            xml = wa.text_xml(openid, question, secrets.randbelow(10**18))
            outcomes, sent_at = {}, {}

            def deliver(k, name, timeout):
                wx = wa if name == "A" else wb
                sent_at[k] = time.time()
                try:
                    status, body = wx.post_raw(xml, openid, timeout=timeout)
                except (socket.timeout, TimeoutError):
                    outcomes[k] = (name, "timeout")
                    return
                except urllib.error.URLError as e:
                    if isinstance(e.reason, (socket.timeout, TimeoutError)):
                        outcomes[k] = (name, "timeout")
                        return
                    raise
                assert status == 200, f"try {k} on daemon {name}: HTTP {status} {body[:200]!r}"
                reply = wx.open_reply(body)
                outcomes[k] = (name, reply["Content"] if reply else None)

            started = time.time()
            if pattern == "retries":
                upstream.mode, upstream.delay = "delayed", 2.6
                deliver(1, "A", 1.2)
                deliver(2, "B", 1.2)
                deliver(3, "A", 5.0)
            else:
                errors = [r for r in concurrently(3, lambda i: deliver(i + 1, "ABA"[i], 5.0)) if r is not None]
                assert not errors, errors
            # When each daemon first saw the message (its retry window starts then).
            first_seen = {name: min(t for k, t in sent_at.items() if outcomes[k][0] == name) for name in "AB"}

            def llm_calls():
                return [r for r in upstream.requests if question in json.dumps(r[2], ensure_ascii=False)]

            def pushed():
                return [s["text"]["content"] for s in wechat_api.sent_to(openid)]

            passive = [k for k, (_, reply) in outcomes.items() if reply == ANSWER]
            # Once every daemon's retry window is over, a daemon whose tries carried no answer
            # pushes it; wait past that, and fail as soon as the user has it twice.
            quiet_until = max(first_seen.values()) + WINDOW_MS / 1000 + 1.5
            while time.time() < quiet_until:
                assert len(pushed()) + (1 if passive else 0) <= 1, \
                    (f"the user got the answer twice: passive replies {outcomes}, pushed {pushed()}"
                     f"\nA: {a.logs(1500)}\nB: {b.logs(1500)}")
                time.sleep(0.1)

            print(f"tries: {outcomes}; pushed: {pushed()}")
            calls = llm_calls()
            assert len(calls) == 1, (f"one message delivered 3 times to 2 daemons made {len(calls)} LLM calls "
                                     f"(tries: {outcomes}, {time.time() - started:.1f}s)")
            found = json.loads(a.cli("--json", "user", "find", openid).stdout)
            assert len(found) == 1, f"one WeChat user must be one chatrelay user: {found}"
            uid = found[0]["uid"]
            for name, d in (("A", a), ("B", b)):
                usage = [e for e in full_user(d, uid)["ledger"] if e["kind"] == "usage"]
                assert len(usage) == 1, f"daemon {name}: {len(usage)} charges for one message: {usage}"
                assert usage[0]["free_delta"] == -COST, usage
            if pattern == "concurrent":
                assert passive, f"a fast answer must come back in a passive reply; tries: {outcomes}"
            else:
                assert passive or pushed() == [ANSWER], \
                    f"the answer never reached the user: tries {outcomes}, pushed {pushed()}"
            assert len(pushed()) + (1 if passive else 0) == 1, \
                f"the user must get the answer exactly once: tries {outcomes}, pushed {pushed()}"
            assert_audit_clean(a, b)
    finally:
        wechat_api.stop()


# ---------------------------------------------------------------------------------------------
# 3. One payment notified 20 times across both daemons is credited once
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pay_fakes(paykeys, wxpay, alipay):
    """The merchant's keys and the fake WeChat Pay / Alipay gateways of test_payments.py (their
    teardown checks that every request the daemons signed verified)."""
    return SimpleNamespace(keys=paykeys, wxpay=wxpay, alipay=alipay)


def pay_daemon(upstream, pay_fakes, storage_toml=None, **kwargs):
    """A daemon selling the packs of test_payments.py; reconciliation only for orders older
    than 600 s, so that only notifications credit here."""
    return PayDaemon(upstream.base_url,
                     extra_toml=pay_toml(pay_fakes.keys, pay_fakes.wxpay, pay_fakes.alipay, 900, 600),
                     extra_env={"CHATRELAY__SERVER__PUBLIC_URL": PUBLIC_URL},
                     storage_toml=storage_toml, **kwargs)


def test_payment_notified_20_times_across_both_daemons_credits_once(upstream, schema, pay_fakes):
    """WeChat Pay delivers one payment's notification 20 times at once, half to each daemon
    (identical copies and re-signed retries of the same event): every delivery is acknowledged,
    the order is credited once (one purchase entry, balance up by the pack once), on both."""
    wxpay = pay_fakes.wxpay
    a = pay_daemon(upstream, pay_fakes, pg_storage(schema))
    b = pay_daemon(upstream, pay_fakes, pg_storage(schema))
    with running(a, b):
        uid, token = a.new_user("buyer", credits=5)
        oid = create_order(a, token, "p10", "wechat")["id"]
        assert status_of(b, token, oid) == "created", "daemon B does not see the order made through A"
        wxpay.pay(oid)
        event = "EV-SCALE-" + oid[-12:]
        same = wxpay.notification(oid, 100, event_id=event)
        deliveries = [same if i % 4 < 2 else wxpay.notification(oid, 100, event_id=event) for i in range(20)]

        results = concurrently(20, lambda i: post_wechat_notify(a if i % 2 == 0 else b, *deliveries[i]))
        bad = [(i, "AB"[i % 2], r if isinstance(r, Exception) else (r[0], r[2][:200]))
               for i, r in enumerate(results) if isinstance(r, Exception) or r[0] not in (200, 204)]
        assert not bad, (f"every delivery of a valid notification must be acknowledged (200/204): {bad[:6]}"
                         f"\nA: {a.logs(1500)}\nB: {b.logs(1500)}")

        for d in (a, b):
            assert_credited_once(d, uid, token, oid, 10, paid_before=5)
        ledger = full_user(a, uid)["ledger"]
        assert [e["kind"] for e in sorted(ledger, key=lambda e: e["seq"])] == ["grant", "purchase"], ledger
        assert not ledger_chain_problems(ledger), ledger_chain_problems(ledger)
        # A late retry on either daemon is still acknowledged and changes nothing.
        for d in (b, a):
            st, _, _ = post_wechat_notify(d, *wxpay.notification(oid, 100, event_id=event))
            assert st in (200, 204)
        assert a.paid(uid) == 15 and len(purchases(b, uid)) == 1
        assert_audit_clean(a, b)


# ---------------------------------------------------------------------------------------------
# 4. zsxq: the polling leader dies, the other daemon takes over, nothing answered twice
# ---------------------------------------------------------------------------------------------

ZSXQ_GROUP = "51111888226666"


def zsxq_toml(fake):
    return f"""
[[zsxq]]
id = "star"
group_id = "{ZSXQ_GROUP}"
access_token = "good-token"
schedule = "* * * * * *"
silenced = true
api_base = "{fake.url}"
min_interval_ms = 500
"""


def test_zsxq_leader_killed_the_other_daemon_takes_over(upstream, schema):
    """Both daemons are configured with the same zsxq group; one leads its polling (job
    `zsxq:star`). Questions keep arriving; the leader is SIGKILLed: the other daemon leads the
    job within 15 s and answers the new questions, and no question is ever answered twice —
    although the listing is stale (answered questions keep being listed)."""
    fake = FakeZsxq()
    fake.list_answered_too = True
    job = "zsxq:star"
    topics, lock, feeding = [], threading.Lock(), threading.Event()

    def add_topic():
        with lock:
            tid = 8_800_000 + len(topics)
            fake.add(tid, f"扩容测试的第 {tid} 个问题")
            topics.append((tid, time.time()))

    def feed():
        while feeding.is_set():
            add_topic()
            time.sleep(1.0)  # a little slower than one daemon answers (min_interval_ms 500)

    for _ in range(3):
        add_topic()
    a = Daemon(upstream.base_url, extra_toml=zsxq_toml(fake), storage_toml=pg_storage(schema), free_daily=1000)
    b = Daemon(upstream.base_url, extra_toml=zsxq_toml(fake), storage_toml=pg_storage(schema), free_daily=1000)
    feeder = threading.Thread(target=feed)
    try:
        with running(a, b):
            both_up = time.time()
            feeding.set()
            feeder.start()
            wait_for(lambda: all(fake.answers_for(t) for t, _ in topics[:3]), 20, "the first questions answered")
            # By now the one that does not lead has tried (every 2 s) at least once.
            wait_for(lambda: time.time() - both_up > 3, 5, "both daemons to have tried to lead")
            leaders = [name for name, d in (("A", a), ("B", b)) if leads(d, job)]
            assert len(leaders) == 1, (f"exactly one daemon must lead {job}; leading: {leaders}"
                                       f"\nA: {a.logs(1500)}\nB: {b.logs(1500)}")
            (leader, survivor), other = ((a, b), "B") if leaders == ["A"] else ((b, a), "A")

            leader.proc.kill()
            leader.proc.wait(timeout=10)
            killed_at = time.time()
            try:
                wait_for(lambda: leads(survivor, job), TAKEOVER_SECS, f"daemon {other} to lead {job}")
            except AssertionError as e:
                raise AssertionError(f"{e}\nsurvivor: {survivor.logs(2500)}") from None
            took = time.time() - killed_at
            print(f"{job} taken over {took:.1f}s after the leader was killed")

            wait_for(lambda: any(fake.answers_for(t) for t, added in list(topics) if added > killed_at), 20,
                     f"a question asked after the kill to be answered by daemon {other}")
            feeding.clear()
            feeder.join(timeout=5)
            with lock:
                ids = [t for t, _ in topics]
            try:
                wait_for(lambda: all(fake.answers_for(t) for t in ids), 30, "every question answered")
            except AssertionError as e:
                missing = [t for t in ids if not fake.answers_for(t)]
                raise AssertionError(f"{e}: unanswered {missing}\nsurvivor: {survivor.logs(2500)}") from None
            # More polls over the stale listing, which still shows every question.
            polls = len(fake.list_requests)
            wait_for(lambda: len(fake.list_requests) >= polls + 2, 10, "two more polls")
            twice = {t: len(fake.answers_for(t)) for t in ids if len(fake.answers_for(t)) != 1}
            assert not twice, f"questions answered more than once (id: times): {twice} of {len(ids)}"
            assert len(ids) >= 6, f"only {len(ids)} questions were asked"
            assert_audit_clean(survivor, holds_allowed=True)
    finally:
        feeding.clear()
        if feeder.is_alive():
            feeder.join(timeout=5)
        fake.stop()


# ---------------------------------------------------------------------------------------------
# 5. migrate-data: a single-server installation moves onto PostgreSQL
# ---------------------------------------------------------------------------------------------

def migrate_data(d, schema):
    """`chatrelay migrate-data --from sled:<d's data dir> --to $PG --schema <schema>`."""
    env = dict(os.environ, **getattr(d, "extra_env", {}))
    return subprocess.run([str(BINARY), "-c", str(d.config), "migrate-data", "--from", f"sled:{d.dir / 'data'}",
                           "--to", PG_URL, "--schema", schema],
                          capture_output=True, text=True, timeout=120, env=env)


def tables_of(schema):
    """The tables of `schema`."""
    return {r[0] for r in psql_rows(f"SELECT tablename FROM pg_tables WHERE schemaname = '{schema}'")}


def moved_installation(upstream, schema, pay_fakes):
    """A single-server (sled) daemon with users, grants, a revoke, answers, a credited and an
    open order, stopped and copied with `migrate-data` into the relational tables of an empty
    schema. Returns what the sled daemon showed before, and the command's output."""
    wxpay = pay_fakes.wxpay
    src = pay_daemon(upstream, pay_fakes)  # sled
    with running(src):
        alice, alice_token = src.new_user("alice", credits=20)
        bob, bob_token = src.new_user("bob", credits=7)
        carol, carol_token = src.new_user("carol")
        src.cli("revoke", str(alice), "2", "--reason", "a mistaken grant")
        for _ in range(2):
            assert chat(src, alice_token)[0] == 200
        paid_oid = create_order(src, bob_token, "p10", "wechat")["id"]
        wxpay.pay(paid_oid)
        st, _, body = post_wechat_notify(src, *wxpay.notification(paid_oid, 100))
        assert st in (200, 204), body
        assert chat(src, bob_token)[0] == 200
        open_oid = create_order(src, carol_token, "p50", "alipay")["id"]
        uids = (alice, bob, carol)
        before = {uid: full_user(src, uid) for uid in uids}
        audit_before = src.audit()
        orders_before = json.loads(src.cli("--json", "order", "list").stdout)
        assert {o["id"] for o in orders_before} == {paid_oid, open_oid}
        assert before[alice]["balance"]["paid"] == 20 - 2 - 2 * COST
        assert before[bob]["balance"]["paid"] == 7 + 10 - COST

    out = migrate_data(src, schema)
    assert out.returncode == 0, f"migrate-data failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return SimpleNamespace(src=src, uids=uids, tokens=(alice_token, bob_token, carol_token), before=before,
                           audit=audit_before, orders=orders_before, paid_oid=paid_oid, open_oid=open_oid,
                           out=out)


def test_migrate_data_round_trip(upstream, schema, pay_fakes):
    """A sled installation copied with `migrate-data` (see `moved_installation`): the copy is
    verified (exit 0, a `verified:` line with the balance count and sums, a line per table),
    lands in the relational tables (`users`, `ledger`, `orders` read with SQL, the old one-table
    layout never made), and copying again into the now non-empty schema is refused and changes
    nothing."""
    if not shutil.which("psql"):
        pytest.skip("psql is not installed (apt-get install postgresql-client)")
    moved = moved_installation(upstream, schema, pay_fakes)
    out, audit_before, before, uids = moved.out, moved.audit, moved.before, moved.uids
    verified = [line for line in out.stdout.splitlines() if line.startswith("verified:")]
    assert len(verified) == 1, f"no `verified:` line in:\n{out.stdout}"
    m = re.search(r"(\d+) balances\D*?(\d+)\D*?(\d+)", verified[0])
    assert m and "paid" in verified[0] and "held" in verified[0], verified[0]
    balances, paid_sum, held_sum = map(int, m.groups())
    assert (paid_sum, held_sum) == (audit_before["total_paid"], audit_before["total_held"]) == \
        (sum(before[u]["balance"]["paid"] for u in uids), 0), (verified[0], audit_before)
    assert 2 <= balances <= audit_before["users"], (verified[0], audit_before)
    trees = dict((m.group(1), int(m.group(2))) for m in
                 (re.match(r"^(\w+)\s+(\d+)\s*$", line) for line in out.stdout.splitlines()) if m)
    assert trees.get("users") == audit_before["users"], f"users line vs audit {audit_before}:\n{out.stdout}"
    assert trees.get("ledger") == audit_before["ledger_entries"], f"ledger line vs audit {audit_before}:\n{out.stdout}"

    def copied():
        return psql_rows(f"""SELECT (SELECT count(*) FROM "{schema}".users),
                                    (SELECT count(*) FROM "{schema}".ledger),
                                    (SELECT sum(paid) FROM "{schema}".balances),
                                    (SELECT string_agg(id || ':' || status || ':' || amount_fen, ',' ORDER BY id)
                                     FROM "{schema}".orders)""")[0]
    found = copied()
    orders = ",".join(sorted(f"{o['id']}:{o['status']}:{o['amount_fen']}" for o in moved.orders))
    assert found == [str(audit_before["users"]), str(audit_before["ledger_entries"]),
                     str(audit_before["total_paid"]), orders], (found, audit_before, moved.orders)
    assert "chatrelay_kv" not in tables_of(schema)

    again = migrate_data(moved.src, schema)
    assert again.returncode != 0, f"migrate-data into a schema holding data must refuse:\n{again.stdout}"
    assert "empty" in again.stderr.lower(), f"the refusal must say the destination is not empty: {again.stderr}"
    assert "verified:" not in again.stdout
    assert copied() == found, "a refused migrate-data changed the destination"


def test_a_daemon_serves_a_moved_installation(upstream, schema, pay_fakes):
    """A daemon on the schema `migrate-data` filled shows the same users, balances, ledgers and
    orders as the sled daemon did, old tokens still work, new uids come after the old ones."""
    moved = moved_installation(upstream, schema, pay_fakes)
    uids, before, audit_before = moved.uids, moved.before, moved.audit
    alice, _, carol = uids
    alice_token, _, carol_token = moved.tokens
    dst = pay_daemon(upstream, pay_fakes, pg_storage(schema))
    with running(dst):
        for uid in uids:
            after = full_user(dst, uid)
            differ = sorted(k for k in set(before[uid]) | set(after) if before[uid].get(k) != after.get(k))
            assert not differ, (f"user {uid} differs after the move in {differ}:\n"
                                f"sled: {json.dumps({k: before[uid].get(k) for k in differ})[:1500]}\n"
                                f"postgres: {json.dumps({k: after.get(k) for k in differ})[:1500]}")
        audit_after = dst.audit()
        assert audit_after == audit_before, f"audit before {audit_before}, after {audit_after}"
        assert json.loads(dst.cli("--json", "order", "list").stdout) == moved.orders
        assert status_of(dst, carol_token, moved.open_oid) == "created"
        # The moved installation keeps working: old tokens, orders, new users.
        status, body = chat(dst, alice_token)
        assert status == 200 and body["choices"][0]["message"]["content"] == ANSWER, (status, body)
        assert dst.paid(alice) == before[alice]["balance"]["paid"] - COST
        newcomer, _ = dst.new_user("dave")
        assert newcomer > max(uids), f"new uid {newcomer} reuses the moved installation's ids {uids}"
        assert dst.audit()["mismatches"] == []
        # Backups of a PostgreSQL store are PostgreSQL's: a clear refusal, no file.
        refused = dst.cli("backup", str(dst.dir / "backup.txt"), check=False)
        assert refused.returncode != 0 and "pg_dump" in refused.stderr, (refused.stdout, refused.stderr)
        assert not (dst.dir / "backup.txt").exists()


# ---------------------------------------------------------------------------------------------
# 6. migrate: migrations applied once, alone or by daemons starting together
# ---------------------------------------------------------------------------------------------

def run_migrate(d, schema, full=False):
    """`chatrelay migrate` with d's configuration: (version, applied now, applied before) of
    the relational tables (and with `full`, the output too)."""
    r = subprocess.run([str(BINARY), "-c", str(d.config), "migrate"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"migrate failed ({r.returncode}): {r.stdout}{r.stderr}"
    m = re.search(rf"schema {schema} is at version (\d+) \((\d+) applied now, (\d+) before\)", r.stdout)
    assert m, f"unexpected migrate output: {r.stdout!r}"
    found = tuple(map(int, m.groups()))
    return (found, r.stdout) if full else found


def test_migrate_alone_and_daemons_starting_together(upstream, schema):
    """`chatrelay migrate` on a new schema creates it and applies every migration; run again it
    applies none. Two daemons starting at the same moment on a new schema both come up (the
    schema and its migrations are made once, under a lock) and share what they store — tried
    on three new schemas, as the race is short."""
    alone = schema + "_m"
    try:
        m = Daemon(upstream.base_url, storage_toml=pg_storage(alone))
        version, applied, before = run_migrate(m, alone)
        assert version >= 1 and (applied, before) == (version, 0), (version, applied, before)
        assert run_migrate(m, alone) == (version, 0, version)
    finally:
        drop_schema(alone)

    for attempt in range(3):
        fresh = f"{schema}_{attempt}"
        a = Daemon(upstream.base_url, storage_toml=pg_storage(fresh))
        b = Daemon(upstream.base_url, storage_toml=pg_storage(fresh))
        try:
            results = concurrently(2, lambda i: (a, b)[i].start())
            failed = [f"{name}: {r}" for name, r in zip("AB", results) if isinstance(r, Exception)]
            assert not failed, f"two daemons starting together on a new schema (attempt {attempt}): " + \
                "\n".join(ANSI.sub("", f) for f in failed)
            uid, _ = b.new_user("first")
            assert a.user(uid)["user"]["name"] == "first"
            codes = [d.stop() for d in (a, b)]
            assert codes == [0, 0], f"exit codes {codes}\nA: {a.logs(1500)}\nB: {b.logs(1500)}"
            # With the daemons stopped, `migrate` finds their store whole: on the one-table
            # layout (the key-value engine) it moves it into the relational tables, with the
            # one user in the census; on the relational tables, nothing is left to apply.
            one_table = shutil.which("psql") and "chatrelay_kv" in tables_of(fresh)
            found, out = run_migrate(a, fresh, full=True)
            if one_table:
                assert found == (version, version, 0), out
                assert re.search(r"^verified: .*\b1 users\b", out, re.M), out
                assert "chatrelay_kv" not in tables_of(fresh)
            else:
                assert found == (version, 0, version), "the daemons left a migration unapplied: " + out
        finally:
            for d in (a, b):
                d.stop()
            drop_schema(fresh)
