"""Payments end to end: the real binary against fake WeChat Pay v3 and Alipay gateways (fake_pay.py)
that check the daemon's request signatures and sign their answers and notifications exactly as
the providers do. Everything runs on 127.0.0.1.

Daemons used (module-scoped, started on first use):
  shop       order_ttl 900 s, reconciliation every 1 s but only for orders older than 600 s, so the
             notification tests see only the notification path;
  reconciler order_ttl 900 s, min age 1 s: missed notifications are found by querying;
  expiring   order_ttl 2 s, min age 1 s: expired orders are closed at the provider, then locally.
"""

import concurrent.futures
import contextlib
import csv
import io
import json
import os
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from conftest import COST, MODEL, Daemon, psql_rows
from fake_pay import ALIPAY, WECHAT, FakeAlipay, FakeWechatPay, new_rsa_key, private_pem, yuan

PUBLIC_URL = "https://pay.example.test"
PRODUCTS = {
    "p10": dict(id="p10", name="10 次对话", price_fen=100, credits=10),
    "p50": dict(id="p50", name="50 次对话", price_fen=450, credits=50),
}
STATUSES = {"created", "credited", "closed", "refunded"}


class PayDaemon(Daemon):
    """A Daemon whose process (and admin CLI) also gets `extra_env`: `[server]` already exists in
    the generated config, so `server.public_url` comes from CHATRELAY__SERVER__PUBLIC_URL."""

    def __init__(self, *args, extra_env=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_env = dict(extra_env or {})

    @contextlib.contextmanager
    def _env(self):
        saved = {k: os.environ.get(k) for k in self.extra_env}
        os.environ.update(self.extra_env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def start(self):
        with self._env():
            return super().start()

    def cli(self, *args, check=True):
        with self._env():
            return super().cli(*args, check=check)


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def paykeys(tmp_path_factory):
    """The merchant's own keys (the daemon signs with them; the fakes verify with the public half)."""
    d = tmp_path_factory.mktemp("paykeys")
    merchant, app = new_rsa_key(), new_rsa_key()
    (d / "merchant_key.pem").write_bytes(private_pem(merchant))
    (d / "app_private.pem").write_bytes(private_pem(app))
    return SimpleNamespace(dir=d, merchant=merchant, app=app)


def assert_signed_requests_only(wxpay, alipay):
    """Every request the daemon sent so far verified at the fakes (right key, right string)."""
    assert wxpay.bad_auth == 0, f"WeChat Pay refused the daemon's Authorization: {wxpay.auth_failures}"
    assert alipay.bad_sign == 0, f"Alipay refused the daemon's requests: {alipay.sign_failures}"


@pytest.fixture(scope="module")
def wxpay(paykeys):
    fake = FakeWechatPay(paykeys.merchant.public_key())
    (paykeys.dir / "platform_pub.pem").write_bytes(fake.platform_public_pem())
    yield fake
    fake.stop()
    # Teardown runs after every daemon of the module has stopped.
    assert fake.bad_auth == 0, f"WeChat Pay refused the daemon's Authorization: {fake.auth_failures}"


@pytest.fixture(scope="module")
def alipay(paykeys):
    fake = FakeAlipay(paykeys.app.public_key())
    (paykeys.dir / "alipay_public.pem").write_bytes(fake.alipay_public_pem())
    yield fake
    fake.stop()
    assert fake.bad_sign == 0, f"Alipay refused the daemon's requests: {fake.sign_failures}"


def pay_toml(paykeys, wxpay, alipay, ttl, min_age):
    products = "".join(f"""
[[products]]
id = "{p['id']}"
name = "{p['name']}"
price_fen = {p['price_fen']}
credits = {p['credits']}
""" for p in PRODUCTS.values())
    return products + f"""
[pay]
order_ttl_secs = {ttl}
reconcile_interval_secs = 1
reconcile_min_age_secs = {min_age}

[pay.wechat]
mch_id = "{WECHAT['mch_id']}"
app_id = "{WECHAT['app_id']}"
serial_no = "{WECHAT['serial_no']}"
private_key_file = "{paykeys.dir / 'merchant_key.pem'}"
api_v3_key = "{WECHAT['api_v3_key']}"
platform_public_key_file = "{paykeys.dir / 'platform_pub.pem'}"
public_key_id = "{WECHAT['public_key_id']}"
api_base = "{wxpay.url}"

[pay.alipay]
app_id = "{ALIPAY['app_id']}"
private_key_file = "{paykeys.dir / 'app_private.pem'}"
alipay_public_key_file = "{paykeys.dir / 'alipay_public.pem'}"
gateway = "{alipay.gateway}"
"""


def new_pay_daemon(upstream, paykeys, wxpay, alipay, ttl=900, min_age=600, storage_toml=None):
    return PayDaemon(upstream.base_url, extra_toml=pay_toml(paykeys, wxpay, alipay, ttl, min_age),
                     extra_env={"CHATRELAY__SERVER__PUBLIC_URL": PUBLIC_URL}, storage_toml=storage_toml)


@pytest.fixture(params=["sled", "postgres"])
def engine_storage(request):
    """The `[storage]` keys of each engine: the embedded store, and the relational tables on a
    fresh PostgreSQL schema (skipped without CHATRELAY_TEST_PG_URL), dropped afterwards."""
    if request.param == "sled":
        yield None
        return
    url = os.environ.get("CHATRELAY_TEST_PG_URL")
    if not url:
        pytest.skip("CHATRELAY_TEST_PG_URL is unset (export CHATRELAY_TEST_PG_URL=$(scripts/pg-up))")
    schema = "s_e2e_" + secrets.token_hex(6)
    yield f'backend = "postgres"\nurl = "{url}"\nschema = "{schema}"\n'
    psql_rows(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def running(d):
    d.start()
    try:
        yield d
    except BaseException:
        d.stop()
        raise
    code = d.stop()
    assert code == 0, f"daemon exited with {code}: {d.logs()}"


@pytest.fixture(scope="module")
def shop(upstream, paykeys, wxpay, alipay):
    with running(new_pay_daemon(upstream, paykeys, wxpay, alipay, ttl=900, min_age=600)) as d:
        yield d


@pytest.fixture(scope="module")
def reconciler(upstream, paykeys, wxpay, alipay):
    with running(new_pay_daemon(upstream, paykeys, wxpay, alipay, ttl=900, min_age=1)) as d:
        yield d


@pytest.fixture(scope="module")
def expiring(upstream, paykeys, wxpay, alipay):
    with running(new_pay_daemon(upstream, paykeys, wxpay, alipay, ttl=2, min_age=1)) as d:
        yield d


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def http(d, method, path, token=None, body=None, raw=None, headers=None, timeout=10):
    """(status, headers, body bytes); never raises for HTTP errors."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(d.url + path, data=data, method=method)
    if body is not None:
        req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def create_order(d, token, product="p10", channel="wechat"):
    st, _, body = http(d, "POST", "/api/orders", token, {"product_id": product, "channel": channel})
    assert st == 200, f"POST /api/orders {product}/{channel}: HTTP {st} {body[:300]!r}\n{d.logs()[-1500:]}"
    return json.loads(body)


def get_order(d, token, oid):
    st, _, body = http(d, "GET", f"/api/orders/{oid}", token)
    assert st == 200, f"GET /api/orders/{oid}: HTTP {st} {body[:300]!r}"
    order = json.loads(body)
    assert order.get("status") in STATUSES, f"order {oid}: status {order.get('status')!r} is not one of {STATUSES}"
    return order


def status_of(d, token, oid):
    return get_order(d, token, oid)["status"]


def purchases(d, uid):
    return [e for e in d.user(uid)["ledger"] if e["kind"] == "purchase"]


def assert_credited_once(d, uid, token, oid, credits, paid_before=0):
    paid = d.paid(uid)
    entries = [e for e in purchases(d, uid) if e["reference"] == f"order:{oid}"]
    assert len(entries) == 1, f"order {oid}: expected one purchase entry with reference order:{oid}, got {entries}"
    assert entries[0]["paid_delta"] == credits, f"purchase entry credits: {entries[0]}"
    assert paid == paid_before + credits, f"order {oid}: balance.paid is {paid}, expected {paid_before + credits}"
    st = status_of(d, token, oid)
    assert st == "credited", f"order {oid}: status {st!r}, expected 'credited'"


def assert_audit_clean(d):
    report = d.audit()
    assert report["mismatches"] == [], f"admin audit found mismatches: {report['mismatches']}"


def wait_for(pred, timeout, what, interval=0.1):
    deadline = time.time() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def post_wechat_notify(d, headers, body):
    return http(d, "POST", "/pay/wechat/notify", raw=body, headers=headers)


def post_alipay_notify(d, body):
    return http(d, "POST", "/pay/alipay/notify", raw=body,
                headers={"content-type": "application/x-www-form-urlencoded; charset=utf-8"})


def concurrently(n, fn):
    """Runs fn(i) in n threads released together; returns the results (or exceptions) in order."""
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait(timeout=10)
        try:
            return fn(i)
        except Exception as e:  # noqa: BLE001 - reported by the caller's assertion
            return e

    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def paid_order(d, fake, channel, token, product="p10"):
    """Creates an order and has the user pay it at the (fake) provider; nothing is notified."""
    order = create_order(d, token, product, channel)
    fake.pay(order["id"])
    return order


def notify_paid(d, wxpay, alipay, channel, oid, total_fen):
    """Delivers one valid payment notification; asserts it was accepted."""
    if channel == "wechat":
        st, _, body = post_wechat_notify(d, *wxpay.notification(oid, total_fen))
        assert st in (200, 204), f"valid WeChat notification for {oid}: HTTP {st} {body[:300]!r}\n{d.logs()[-1500:]}"
    else:
        st, _, body = post_alipay_notify(d, alipay.notification(oid, total_fen))
        assert (st, body) == (200, b"success"), \
            f"valid Alipay notification for {oid}: HTTP {st} {body[:300]!r}\n{d.logs()[-1500:]}"


# ---------------------------------------------------------------------------------------------
# 1. Products and order creation
# ---------------------------------------------------------------------------------------------

def test_products_and_wechat_order_creation(shop, wxpay, alipay):
    uid, token = shop.new_user("buyer1")
    _, other = shop.new_user("nosy")

    st, _, body = http(shop, "GET", "/api/products", token)
    assert st == 200, f"GET /api/products: HTTP {st} {body[:300]!r}"
    listing = json.loads(body)
    assert sorted(listing["products"], key=lambda p: p["id"]) == list(PRODUCTS.values()), listing
    assert sorted(listing["channels"]) == ["alipay", "wechat"], listing

    before = time.time()
    order = create_order(shop, token, "p10", "wechat")
    oid = order["id"]
    assert re.fullmatch(r"[0-9A-Za-z_-]{6,32}", oid), \
        f"order id {oid!r} must be a valid out_trade_no for both WeChat Pay and Alipay"
    assert order["status"] == "created" and order["channel"] == "wechat", order
    assert (order["amount_fen"], order["credits"]) == (100, 10), order
    assert before + 900 - 60 <= order["expires_at"] <= time.time() + 900 + 60, \
        f"expires_at {order['expires_at']} is not about now + order_ttl_secs (900)"

    calls = wxpay.native_calls_for(oid)
    assert len(calls) == 1, f"WeChat Pay saw {len(calls)} native order requests for {oid}: {calls}"
    call = calls[0]
    assert call["amount"] == {"total": 100, "currency": "CNY"}, f"amount sent to WeChat Pay: {call['amount']}"
    assert call["mchid"] == WECHAT["mch_id"] and call["appid"] == WECHAT["app_id"], call
    assert call["notify_url"].startswith(PUBLIC_URL + "/") and call["notify_url"].endswith("/pay/wechat/notify"), \
        f"notify_url {call['notify_url']!r} must be server.public_url + /pay/wechat/notify"
    assert order["code_url"] == wxpay.order(oid)["code_url"], "code_url must be the one WeChat Pay returned"

    known = {c["out_trade_no"] for c in wxpay.native_calls}
    again = create_order(shop, token, "p10", "wechat")
    assert again["id"] == oid and again["code_url"] == order["code_url"], \
        f"asking again for an open p10/wechat order must return the same order: {order} vs {again}"
    assert {c["out_trade_no"] for c in wxpay.native_calls} == known, \
        "asking again must not create another order at WeChat Pay"

    shown = get_order(shop, token, oid)
    assert shown["id"] == oid and shown["status"] == "created" and shown["code_url"] == order["code_url"], shown

    st, hdrs, svg = http(shop, "GET", f"/api/orders/{oid}/qr.svg", token)
    assert st == 200, f"qr.svg: HTTP {st} {svg[:200]!r}"
    assert hdrs.get("content-type", "").startswith("image/svg+xml"), hdrs.get("content-type")
    assert svg.lstrip().startswith((b"<?xml", b"<svg")) and b"</svg>" in svg, svg[:200]

    for path in (f"/api/orders/{oid}", f"/api/orders/{oid}/qr.svg"):
        st, _, body = http(shop, "GET", path, other)
        assert st == 404, f"another user's GET {path}: HTTP {st} {body[:200]!r}, expected 404"
    st, _, _ = http(shop, "GET", f"/api/orders/{oid}")
    assert st == 401, f"GET an order without a token: HTTP {st}, expected 401"
    st, _, _ = http(shop, "GET", "/api/orders/NOSUCHORDER0000001", token)
    assert st == 404, f"GET an unknown order: HTTP {st}, expected 404"

    big = create_order(shop, token, "p50", "wechat")
    assert big["id"] != oid and (big["amount_fen"], big["credits"]) == (450, 50), big
    assert [c["amount"]["total"] for c in wxpay.native_calls_for(big["id"])] == [450]

    ali = create_order(shop, token, "p10", "alipay")
    assert ali["id"] != oid and ali["channel"] == "alipay", ali
    pre = alipay.calls_for("alipay.trade.precreate", ali["id"])
    assert len(pre) == 1, f"Alipay saw {len(pre)} precreate calls for {ali['id']}"
    params, biz = pre[0]
    assert biz["total_amount"] == "1.00" and biz.get("subject"), biz
    assert (params.get("notify_url") or "").startswith(PUBLIC_URL + "/") and \
        params["notify_url"].endswith("/pay/alipay/notify"), f"Alipay notify_url: {params.get('notify_url')!r}"
    assert ali["code_url"] == alipay.trade(ali["id"])["qr_code"], "code_url must be Alipay's qr_code"

    for bad, allowed in (({"product_id": "p999", "channel": "wechat"}, (400, 404)),
                         ({"product_id": "p10", "channel": "paypal"}, (400,))):
        st, _, body = http(shop, "POST", "/api/orders", token, bad)
        assert st in allowed, f"POST /api/orders {bad}: HTTP {st} {body[:200]!r}, expected {allowed}"
    st, _, _ = http(shop, "POST", "/api/orders", None, {"product_id": "p10", "channel": "wechat"})
    assert st == 401, f"POST /api/orders without a token: HTTP {st}, expected 401"

    listed = json.loads(shop.cli("--json", "order", "list", "--status", "created").stdout)
    assert {oid, big["id"], ali["id"]} <= {o["id"] for o in listed}, listed
    assert all(o["status"] == "created" for o in listed), listed
    assert shop.paid(uid) == 0
    assert_signed_requests_only(wxpay, alipay)


# ---------------------------------------------------------------------------------------------
# 2. WeChat: one payment, 50 concurrent deliveries
# ---------------------------------------------------------------------------------------------

def test_wechat_notification_50_times_concurrently_credits_once(shop, wxpay):
    uid, token = shop.new_user("buyer2")
    oid = paid_order(shop, wxpay, "wechat", token)["id"]
    event = "EV-2026112710000000001-" + oid[-8:]
    same = wxpay.notification(oid, 100, event_id=event)
    # Half identical copies, half re-signed retries of the same event (new nonce and signature).
    deliveries = [same] * 25 + [wxpay.notification(oid, 100, event_id=event) for _ in range(25)]

    results = concurrently(50, lambda i: post_wechat_notify(shop, *deliveries[i]))
    statuses = [r if isinstance(r, Exception) else r[0] for r in results]
    bad = [(i, r if isinstance(r, Exception) else (r[0], r[2][:200])) for i, r in enumerate(results)
           if isinstance(r, Exception) or r[0] not in (200, 204)]
    assert not bad, f"every delivery of a valid notification must get 200/204; failures: {bad[:5]} ({statuses})"

    assert_credited_once(shop, uid, token, oid, 10)
    show = json.loads(shop.cli("--json", "order", "show", oid).stdout)
    assert show["order"]["status"] == "credited", show
    assert isinstance(show["events"], list) and show["events"], f"order show has no events: {show}"
    assert oid in {o["id"] for o in json.loads(shop.cli("--json", "order", "list", "--status", "credited").stdout)}
    assert_audit_clean(shop)

    # People get a table; the accountant gets CSV (with a BOM for Excel), filtered by day.
    table = shop.cli("order", "list", "--status", "credited", "--uid", str(uid)).stdout
    assert table.splitlines()[0].split()[:3] == ["ORDER", "UID", "PRODUCT"] and oid in table, table
    csv_path = shop.dir / f"orders-{oid}.csv"
    today = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 8 * 3600))
    out = shop.cli("order", "export", str(csv_path), "--uid", str(uid), "--from", today, "--to", today).stdout
    assert "1 orders written" in out, out
    raw = csv_path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf"), "UTF-8 BOM"
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert [(r["id"], r["status"], r["amount_fen"], r["amount_yuan"]) for r in rows] == [(oid, "credited", "100", "1.00")], rows
    again = shop.cli("order", "export", str(csv_path), check=False)
    assert again.returncode != 0 and "exists" in again.stderr, "an export never overwrites a file"

    # A late retry (after the crediting is done) is still acknowledged and changes nothing.
    st, _, _ = post_wechat_notify(shop, *wxpay.notification(oid, 100, event_id=event))
    assert st in (200, 204)
    assert shop.paid(uid) == 10 and len(purchases(shop, uid)) == 1


# ---------------------------------------------------------------------------------------------
# 3. WeChat: bad notifications change nothing
# ---------------------------------------------------------------------------------------------

def test_wechat_bad_notifications_change_nothing(shop, wxpay):
    uid, token = shop.new_user("buyer3")
    oid = create_order(shop, token, "p10", "wechat")["id"]
    now = int(time.time())
    cases = [
        # (what, (headers, body), expected statuses)
        ("forged signature (another key)", wxpay.notification(oid, 100, tamper="forge"), (401,)),
        ("stale timestamp (now - 400)", wxpay.notification(oid, 100, ts=now - 400), (401,)),
        ("future timestamp (now + 400)", wxpay.notification(oid, 100, ts=now + 400), (401,)),
        ("body tampered after signing", wxpay.notification(oid, 100, tamper="body"), (401,)),
        ("WECHATPAY/SIGNTEST/ probe", wxpay.notification(oid, 100, tamper="signtest"), (401,)),
        ("unknown Wechatpay-Serial", wxpay.notification(oid, 100, tamper="serial"), range(400, 500)),
        ("resource encrypted with another APIv3 key", wxpay.notification(oid, 100, tamper="v3key"), range(400, 500)),
        ("amount 1 fen off", wxpay.notification(oid, 101), (400,)),
        ("wrong mchid", wxpay.notification(oid, 100, mchid="1900000002"), (400,)),
        ("wrong appid", wxpay.notification(oid, 100, appid="wxpayapp00000002"), (400,)),
        ("unknown order", wxpay.notification("NOSUCHORDER0000003", 100), (404,)),
    ]
    problems = []
    for what, (headers, body), expected in cases:
        st, _, reply = post_wechat_notify(shop, headers, body)
        if st not in expected:
            problems.append(f"{what}: HTTP {st} {reply[:200]!r}, expected {expected if isinstance(expected, tuple) else 'a 4xx'}")
        else:
            try:
                err = json.loads(reply)
                if err.get("code") != "FAIL" or "message" not in err:
                    problems.append(f"{what}: body {reply[:200]!r} is not {{\"code\":\"FAIL\",\"message\":...}}")
            except ValueError:
                problems.append(f"{what}: body {reply[:200]!r} is not JSON")
        paid, status = shop.paid(uid), status_of(shop, token, oid)
        if (paid, status) != (0, "created"):
            problems.append(f"{what}: changed the order: balance.paid={paid}, status={status!r}")
    assert not problems, "bad WeChat notifications:\n  " + "\n  ".join(problems)
    assert purchases(shop, uid) == []

    # The order was not spoiled: the genuine notification still credits it.
    wxpay.pay(oid)
    notify_paid(shop, wxpay, None, "wechat", oid, 100)
    assert_credited_once(shop, uid, token, oid, 10)
    assert_audit_clean(shop)


# ---------------------------------------------------------------------------------------------
# 4. Alipay notifications
# ---------------------------------------------------------------------------------------------

def test_alipay_notifications(shop, alipay):
    uid, token = shop.new_user("buyer4")
    oid = create_order(shop, token, "p10", "alipay")["id"]

    st, _, body = post_alipay_notify(shop, alipay.notification(oid, 100, status="WAIT_BUYER_PAY"))
    assert (st, body) == (200, b"success"), f"WAIT_BUYER_PAY notification: HTTP {st} {body[:200]!r}"
    assert shop.paid(uid) == 0 and status_of(shop, token, oid) == "created", "WAIT_BUYER_PAY must change nothing"

    cases = [
        ("forged signature (another key)", alipay.notification(oid, 100, tamper="forge")),
        ("wrong app_id", alipay.notification(oid, 100, app_id="2021000000000002")),
        ("wrong total_amount (1.01)", alipay.notification(oid, 101)),
        ("trade_status flipped after signing", alipay.notification(oid, 100, tamper="field")),
        ("buyer_id changed after signing",
         alipay.notification(oid, 100, tamper=lambda p: dict(p, buyer_id="2088999999999999"))),
        ("sign removed", alipay.notification(oid, 100, tamper=lambda p: {k: v for k, v in p.items() if k != "sign"})),
    ]
    problems = []
    for what, form in cases:
        st, _, reply = post_alipay_notify(shop, form)
        if reply == b"success" or not 400 <= st < 500:
            problems.append(f"{what}: HTTP {st} {reply[:100]!r}, expected a 4xx that is not 'success'")
        paid, status = shop.paid(uid), status_of(shop, token, oid)
        if (paid, status) != (0, "created"):
            problems.append(f"{what}: changed the order: balance.paid={paid}, status={status!r}")
    assert not problems, "bad Alipay notifications:\n  " + "\n  ".join(problems)

    alipay.pay(oid)
    form = alipay.notification(oid, 100)
    results = concurrently(20, lambda i: post_alipay_notify(shop, form))
    bad = [(i, r if isinstance(r, Exception) else (r[0], r[2][:100])) for i, r in enumerate(results)
           if isinstance(r, Exception) or (r[0], r[2]) != (200, b"success")]
    assert not bad, f"every delivery of a valid TRADE_SUCCESS notification must get 200 'success': {bad[:5]}"
    assert_credited_once(shop, uid, token, oid, 10)

    # A later TRADE_CLOSED (e.g. Alipay's own bookkeeping) is acknowledged and changes nothing.
    st, _, body = post_alipay_notify(shop, alipay.notification(oid, 100, status="TRADE_CLOSED"))
    assert (st, body) == (200, b"success"), f"TRADE_CLOSED notification: HTTP {st} {body[:200]!r}"
    assert_credited_once(shop, uid, token, oid, 10)
    assert_audit_clean(shop)


# ---------------------------------------------------------------------------------------------
# 5. SIGKILL right after the acknowledgement loses nothing
# ---------------------------------------------------------------------------------------------

def test_credit_survives_sigkill_right_after_the_ack(upstream, paykeys, wxpay, alipay, engine_storage):
    d = new_pay_daemon(upstream, paykeys, wxpay, alipay, storage_toml=engine_storage)
    with running(d):
        for round_, channel in enumerate(("wechat", "alipay", "wechat")):
            uid, token = d.new_user(f"killed{round_}")
            fake = wxpay if channel == "wechat" else alipay
            oid = paid_order(d, fake, channel, token)["id"]
            notify_paid(d, wxpay, alipay, channel, oid, 100)
            d.proc.kill()  # at once, after the 204 / success
            d.proc.wait(timeout=10)
            d.start()
            try:
                assert_credited_once(d, uid, token, oid, 10)
            except AssertionError as e:
                raise AssertionError(f"round {round_} ({channel}): the acknowledged credit was lost by SIGKILL: {e}")
            assert_audit_clean(d)
            # The provider retries (it may not have seen our answer): still one credit.
            notify_paid(d, wxpay, alipay, channel, oid, 100)
            assert_credited_once(d, uid, token, oid, 10)


# ---------------------------------------------------------------------------------------------
# 6. Missed notification: reconciliation finds the payment
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channel", ["wechat", "alipay"])
def test_missed_notification_is_found_by_reconciliation(reconciler, wxpay, alipay, channel):
    fake = wxpay if channel == "wechat" else alipay
    uid, token = reconciler.new_user(f"quiet-{channel}")
    unpaid = create_order(reconciler, token, "p50", channel)["id"]
    oid = paid_order(reconciler, fake, channel, token)["id"]

    wait_for(lambda: status_of(reconciler, token, oid) == "credited", 20,
             f"the {channel} order paid without a notification to be credited by reconciliation")
    assert_credited_once(reconciler, uid, token, oid, 10)

    def queried(no):
        if channel == "wechat":
            return wxpay.queries_for(no)
        return len(alipay.calls_for("alipay.trade.query", no))

    assert queried(oid) >= 1, f"the {channel} provider never saw a query for {oid}"
    # The unpaid order is queried too and stays open, crediting nothing.
    wait_for(lambda: queried(unpaid) >= 1, 10, f"a query for the unpaid order {unpaid}")
    time.sleep(1.2)
    assert status_of(reconciler, token, unpaid) == "created", "an unpaid order must stay open"
    assert reconciler.paid(uid) == 10, "only the paid order is credited"
    assert_audit_clean(reconciler)


# ---------------------------------------------------------------------------------------------
# 7. Expiry: closed at the provider, then locally; a late verified payment still counts
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channel", ["wechat", "alipay"])
def test_order_closed_locally_then_paid_is_credited(expiring, wxpay, alipay, channel):
    fake = wxpay if channel == "wechat" else alipay
    uid, token = expiring.new_user(f"late-{channel}")
    order = create_order(expiring, token, "p10", channel)
    oid = order["id"]
    assert order["expires_at"] <= time.time() + 2 + 5, f"expires_at {order['expires_at']} ignores order_ttl_secs = 2"

    wait_for(lambda: status_of(expiring, token, oid) == "closed", 25,
             f"the expired {channel} order to be closed by reconciliation")
    if channel == "wechat":
        assert "closed" in wxpay.closes_for(oid), \
            f"closed locally without closing at WeChat Pay first (close calls: {wxpay.closes_for(oid)})"
    else:
        assert alipay.calls_for("alipay.trade.close", oid), "closed locally without alipay.trade.close first"
        assert alipay.trade(oid)["status"] == "TRADE_CLOSED"
    assert expiring.paid(uid) == 0

    # A closed order is not open any more: asking again makes a new one.
    fresh = create_order(expiring, token, "p10", channel)
    assert fresh["id"] != oid, "a closed order must not be handed out again"

    # The user had paid just before the close; the verified notification arrives now.
    fake.pay(oid)
    notify_paid(expiring, wxpay, alipay, channel, oid, 100)
    assert_credited_once(expiring, uid, token, oid, 10)
    assert_audit_clean(expiring)


@pytest.mark.parametrize("channel", ["wechat", "alipay"])
def test_expired_order_paid_at_close_time_is_credited_not_closed(expiring, wxpay, alipay, channel):
    """The user pays just before the daemon's close call: the provider refuses the close
    (WeChat 400 ORDERPAID / Alipay ACQ.TRADE_STATUS_ERROR) and then reports it paid."""
    fake = wxpay if channel == "wechat" else alipay
    uid, token = expiring.new_user(f"racer-{channel}")
    oid = create_order(expiring, token, "p10", channel)["id"]
    fake.pay_on_close.add(oid)  # well before the order expires (2 s)
    seen = []

    def close_calls():
        if channel == "wechat":
            return wxpay.closes_for(oid)
        return [biz for _, biz in alipay.calls_for("alipay.trade.close", oid)]

    def credited():
        s = status_of(expiring, token, oid)
        seen.append(s)
        if s == "closed":  # final: nothing would credit it any more
            raise AssertionError(f"the order was closed locally although the provider then said paid "
                                 f"(close calls at the provider: {close_calls()})")
        return s == "credited"

    try:
        wait_for(credited, 25, f"the {channel} order paid at close time to be credited")
    except AssertionError as e:
        raise AssertionError(f"{e}; statuses seen {sorted(set(seen))}; close calls at the provider: {close_calls()}")
    assert close_calls(), "credited without a close attempt at the provider (the fake pays only on close)"
    assert_credited_once(expiring, uid, token, oid, 10)
    assert_audit_clean(expiring)


# ---------------------------------------------------------------------------------------------
# 8. Refund
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channel,granted,chats", [("wechat", 0, 3), ("alipay", 20, 1)],
                         ids=["wechat-balance-clamped-at-zero", "alipay-balance-reduced"])
def test_refund_through_the_cli(shop, wxpay, alipay, channel, granted, chats):
    import openai

    fake = wxpay if channel == "wechat" else alipay
    uid, token = shop.new_user(f"refund-{channel}", credits=granted)
    oid = paid_order(shop, fake, channel, token)["id"]
    notify_paid(shop, wxpay, alipay, channel, oid, 100)
    assert_credited_once(shop, uid, token, oid, 10, paid_before=granted)

    client = openai.OpenAI(base_url=shop.url + "/v1", api_key=token, max_retries=0)
    for _ in range(chats):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    before = shop.paid(uid)
    assert before == granted + 10 - chats * COST, f"balance after {chats} answers: {before}"

    out = shop.cli("order", "refund", oid, "--reason", "e2e refund")
    assert f"order {oid} refunded" in out.stdout, out.stdout

    if channel == "wechat":
        refunds = wxpay.refunds_for(oid)
        assert len(refunds) == 1, f"WeChat Pay saw {len(refunds)} refunds for {oid}: {refunds}"
        amt = refunds[0]["amount"]
        assert (amt["refund"], amt["total"], amt["currency"]) == (100, 100, "CNY"), f"refund amounts: {amt}"
        assert refunds[0]["out_refund_no"], refunds[0]
    else:
        refunds = alipay.refunds_for(oid)
        assert len(refunds) == 1, f"Alipay saw {len(refunds)} refunds for {oid}: {refunds}"
        assert refunds[0]["refund_amount"] == yuan(100), f"refund_amount: {refunds[0]}"

    expected = max(0, before - 10)
    assert shop.paid(uid) == expected, \
        f"after the refund balance.paid is {shop.paid(uid)}, expected max(0, {before} - 10) = {expected}"
    assert status_of(shop, token, oid) == "refunded"
    assert json.loads(shop.cli("--json", "order", "show", oid).stdout)["order"]["status"] == "refunded"
    assert oid in {o["id"] for o in json.loads(shop.cli("--json", "order", "list", "--status", "refunded").stdout)}
    assert_audit_clean(shop)

    # Refunding again must neither take credits again nor start a second refund at the provider.
    shop.cli("order", "refund", oid, "--reason", "again", check=False)
    assert shop.paid(uid) == expected, "a second refund of the same order took credits again"
    assert status_of(shop, token, oid) == "refunded"
    if channel == "wechat":
        numbers = {r.get("out_refund_no") for r in wxpay.refund_attempts_for(oid)}
    else:
        numbers = {r.get("out_request_no") for r in alipay.refund_attempts_for(oid)}
    assert len(numbers) == 1, f"a second refund request number was used for the same order: {numbers}"
    assert_audit_clean(shop)
    assert_signed_requests_only(wxpay, alipay)


# ---------------------------------------------------------------------------------------------
# 9. SIGKILL at random moments under mixed load (fault test)
# ---------------------------------------------------------------------------------------------

def credit_events(d, uid, oid):
    """How many purchase entries the user's whole ledger has for the order."""
    ledger = json.loads(d.cli("--json", "user", "show", str(uid), "--ledger", "100000").stdout)["ledger"]
    return sum(1 for e in ledger if e["kind"] == "purchase" and e["reference"] == f"order:{oid}")


def test_sigkill_at_random_moments_under_mixed_load(upstream, paykeys, wxpay, alipay):
    """Chat answers and payment notifications in flight while the daemon is killed at a random
    moment, four times: after each restart every acknowledged payment is credited, none twice,
    grants stay single, and every ledger sums to its balance."""
    import random
    seed = int(time.time())
    rng = random.Random(seed)
    print(f"kill timing seed: {seed}")  # shown by pytest on failure, to replay a run
    d = new_pay_daemon(upstream, paykeys, wxpay, alipay)
    with running(d):
        users = []
        for i in range(4):
            uid, token = d.new_user(f"chaos{i}", credits=500)
            users.append((uid, token))
        acked, all_orders = set(), []
        for round_ in range(4):
            orders = []
            for n in range(6):
                uid, token = users[(round_ + n) % len(users)]
                channel = "wechat" if n % 2 == 0 else "alipay"
                fake = wxpay if channel == "wechat" else alipay
                orders.append((uid, token, channel, paid_order(d, fake, channel, token)["id"]))
            all_orders.extend(orders)
            stop = threading.Event()

            def chat(uid_token):
                _, token = uid_token
                while not stop.is_set():
                    try:
                        http(d, "POST", "/v1/chat/completions", token,
                             {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}, timeout=5)
                    except Exception:
                        time.sleep(0.02)

            def notify(order):
                _, _, channel, oid = order
                for _ in range(3):
                    if stop.is_set():
                        return
                    try:
                        if channel == "wechat":
                            st, _, _ = post_wechat_notify(d, *wxpay.notification(oid, 100))
                            ok = st in (200, 204)
                        else:
                            st, _, body = post_alipay_notify(d, alipay.notification(oid, 100))
                            ok = (st, body) == (200, b"success")
                        if ok:
                            acked.add(oid)
                    except Exception:
                        pass
                    time.sleep(rng.uniform(0, 0.3))

            threads = [threading.Thread(target=chat, args=(u,)) for u in users]
            threads += [threading.Thread(target=notify, args=(o,)) for o in orders]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.2, 1.2))
            d.proc.kill()
            d.proc.wait(timeout=10)
            stop.set()
            for t in threads:
                t.join(timeout=15)
            d.start()
            assert_audit_clean(d)
            for uid, token, channel, oid in orders:
                credits = credit_events(d, uid, oid)
                assert credits <= 1, f"round {round_}: order {oid} credited {credits} times"
                if oid in acked:
                    assert credits == 1, f"round {round_}: acknowledged order {oid} was not credited"
        # The providers retry every notification: each order ends credited exactly once.
        for uid, token, channel, oid in all_orders:
            notify_paid(d, wxpay, alipay, channel, oid, 100)
        for uid, token in users:
            ledger = d.user(uid)["ledger"]
            grants = [e for e in ledger if e["kind"] == "grant"]
            assert len(grants) <= 1, f"user {uid}: the grant was applied {len(grants)} times"
        for uid, token, channel, oid in all_orders:
            assert credit_events(d, uid, oid) == 1, f"order {oid}: not credited exactly once after the retries"
            assert status_of(d, token, oid) == "credited"
        assert_audit_clean(d)
        assert acked, "some notifications were acknowledged before the kills"


# ---------------------------------------------------------------------------------------------
# Alerts: forged notifications cannot push paid-order alerts out of the robot's budget
# ---------------------------------------------------------------------------------------------

def test_forged_notifications_do_not_starve_paid_order_alerts(upstream, paykeys, wxpay, alipay):
    """WeCom's robot takes 20 messages a minute: 40 forged notifications must not use them up
    (they are summarised, one message per interval), so the paid order's alert arrives."""
    from fake_wechat import FakeWechat
    robot = FakeWechat()
    try:
        toml = pay_toml(paykeys, wxpay, alipay, 900, 600) + f"""
[[wecom_robot]]
id = "ops"
webhook = "robot-key"
api_base = "{robot.url}"
"""
        d = PayDaemon(upstream.base_url, extra_toml=toml, extra_env={"CHATRELAY__SERVER__PUBLIC_URL": PUBLIC_URL})
        with running(d):
            uid, token = d.new_user("alerted")
            victim = create_order(d, token, "p10", "wechat")["id"]
            for _ in range(40):
                st, _, _ = post_wechat_notify(d, *wxpay.notification(victim, 100, tamper="forge"))
                assert st == 401
            for _ in range(10):
                st, _, _ = post_alipay_notify(d, alipay.notification(victim, 100, tamper="forge"))
                assert st != 200
            oid = paid_order(d, wxpay, "wechat", token)["id"]
            notify_paid(d, wxpay, alipay, "wechat", oid, 100)
            assert_credited_once(d, uid, token, oid, 10)

            def texts():
                return [body["text"]["content"] for _, body in robot.robot_sent]

            wait_for(lambda: any(oid in t and "已支付" in t for t in texts()), 10,
                     f"the paid-order alert for {oid} at the robot (got {texts()})")
            failures = [t for t in texts() if "验证失败" in t]
            assert len(failures) <= 1, f"forged notifications were sent one by one: {failures}"
            assert robot.robot_refused == 0, "the daemon kept within the robot's limit"
            assert any("验证失败" in line for line in d.log_lines()), "each failure is still logged"
    finally:
        robot.stop()
