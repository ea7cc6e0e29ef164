"""Membership plans (会员, issue 22 part 2) end to end, on sled and on PostgreSQL: a plan bought
through the fake WeChat Pay grants its daily credits on top of the free allowance for exactly its
days (the daemon restarted with the test clock, CHATRELAY_TEST_DAY_OFFSET, to its last day and
the day after), a replayed notification grants nothing more, the plan unlocks its model, a code
grants (and extends) a plan once, a refund ends it; the account sheet's 会员 card in Chromium
(screenshot in target/e2e-screenshots/, a copy in docs/screenshots/)."""

import json
import os
import secrets
import time
from pathlib import Path

import pytest

from conftest import COST, MODEL, ROOT
from fake_pay import WECHAT, FakeWechatPay, new_rsa_key, private_pem
from test_codes import PG_URL, drop_schema
from test_payments import (PUBLIC_URL, PayDaemon, assert_audit_clean, create_order, http,
                           notify_paid, post_wechat_notify)

ENGINES = ["sled", pytest.param("postgres", marks=pytest.mark.skipif(
    not PG_URL, reason="CHATRELAY_TEST_PG_URL is unset (export CHATRELAY_TEST_PG_URL=$(scripts/pg-up))"))]
FREE, DAILY, DAYS, PRICE = 3, 6, 30, 2990
VIP = "gpt-vip"
CLOCK = {"CHATRELAY_TEST_CLOCK": "i-am-a-test-not-production"}


@pytest.fixture(scope="module")
def wxpay(tmp_path_factory):
    d = tmp_path_factory.mktemp("plankeys")
    merchant = new_rsa_key()
    (d / "merchant_key.pem").write_bytes(private_pem(merchant))
    fake = FakeWechatPay(merchant.public_key())
    (d / "platform_pub.pem").write_bytes(fake.platform_public_pem())
    fake.keydir = d
    yield fake
    fake.stop()
    assert fake.bad_auth == 0, f"WeChat Pay refused the daemon's Authorization: {fake.auth_failures}"


def plans_toml(wxpay):
    d = wxpay.keydir
    return f"""
[[llm.models]]
name = "{VIP}"
credits = {COST}
paid_only = true

[[plans]]
id = "month"
name = "月卡"
daily_credits = {DAILY}
days = {DAYS}
models = ["{VIP}"]

[[products]]
id = "month"
name = "月卡会员"
price_fen = {PRICE}
plan = "month"

[[products]]
id = "p10"
name = "10 次对话"
price_fen = 100
credits = 10

[pay]
order_ttl_secs = 900
reconcile_interval_secs = 1
reconcile_min_age_secs = 600

[pay.wechat]
mch_id = "{WECHAT['mch_id']}"
app_id = "{WECHAT['app_id']}"
serial_no = "{WECHAT['serial_no']}"
private_key_file = "{d / 'merchant_key.pem'}"
api_v3_key = "{WECHAT['api_v3_key']}"
platform_public_key_file = "{d / 'platform_pub.pem'}"
public_key_id = "{WECHAT['public_key_id']}"
api_base = "{wxpay.url}"
"""


@pytest.fixture(scope="module", params=ENGINES)
def d(request, upstream, wxpay):
    schema = storage = None
    if request.param == "postgres":
        schema = "s_e2e_plans_" + secrets.token_hex(5)
        storage = f'backend = "postgres"\nurl = "{PG_URL}"\nschema = "{schema}"\npool_size = 8\n'
    daemon = PayDaemon(upstream.base_url, extra_toml=plans_toml(wxpay), free_daily=FREE,
                       storage_toml=storage, llm_timeout=10,
                       extra_env={"CHATRELAY__SERVER__PUBLIC_URL": PUBLIC_URL})
    daemon.start()
    daemon.engine = request.param
    yield daemon
    assert daemon.stop() == 0, daemon.logs()
    if schema:
        drop_schema(schema)


def restart(d, day_offset):
    """Stops the daemon and starts it again with the quota day moved `day_offset` days on."""
    assert d.stop() == 0, d.logs()
    for k in ("CHATRELAY_TEST_DAY_OFFSET", *CLOCK):
        d.extra_env.pop(k, None)
    if day_offset:
        d.extra_env.update(CLOCK, CHATRELAY_TEST_DAY_OFFSET=str(day_offset))
    d.start()


def me(d, token):
    st, _, body = http(d, "GET", "/api/me", token)
    assert st == 200, body
    return json.loads(body)


def ask(d, token, model=MODEL):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    st, _, raw = http(d, "POST", "/v1/chat/completions", token, body, timeout=30)
    return st, json.loads(raw or b"null")


def usage(d, token):
    st, _, body = http(d, "GET", "/api/usage?limit=100", token)
    assert st == 200, body
    return json.loads(body)["data"]


def ledger(d, uid):
    return d.user(uid)["ledger"]


def date_after(base, days):
    t = time.strptime(base, "%Y-%m-%d")
    return time.strftime("%Y-%m-%d", time.gmtime(time.mktime(t) - time.timezone + days * 86400))


def test_a_plan_bought_with_wechat_pay_lasts_its_days_and_a_refund_ends_it(d, wxpay):
    uid, token = d.new_user("member")
    st, vip = ask(d, token, VIP)
    assert st != 200, f"{VIP} is for paying users and members: {vip}"
    # The shop lists what the plan gives.
    st, _, body = http(d, "GET", "/api/products", token)
    month = next(p for p in json.loads(body)["products"] if p["id"] == "month")
    assert month["plan"] == {"id": "month", "name": "月卡", "days": DAYS, "daily_credits": DAILY}

    order = create_order(d, token, "month", "wechat")
    assert order["credits"] == 0 and order["plan"]["id"] == "month", order
    oid = order["id"]
    wxpay.pay(oid)
    notify_paid(d, wxpay, None, "wechat", oid, PRICE)
    # The same notification again, and a fresh one for the same payment: nothing more.
    headers, raw = wxpay.notification(oid, PRICE)
    for _ in range(2):
        st, _, _ = post_wechat_notify(d, headers, raw)
        assert st in (200, 204)
    notify_paid(d, wxpay, None, "wechat", oid, PRICE)

    grants = [e for e in ledger(d, uid) if e["reference"] == f"order:{oid}"]
    assert len(grants) == 1, grants
    assert (grants[0]["kind"], grants[0]["paid_delta"], grants[0]["free_delta"]) == ("purchase", 0, 0)
    plan = me(d, token)["plan"]
    assert plan["active"] and plan["days_left"] == DAYS, plan
    assert plan["end"] == date_after(plan["start"], DAYS - 1)
    assert "会员 月卡" in grants[0]["reason"] and plan["end"] in grants[0]["reason"]
    assert me(d, token)["balance"]["free_left"] == FREE + DAILY

    # The base allowance first, then the plan's; the usage log says which.
    for _ in range(2):
        st, answer = ask(d, token)
        assert st == 200, answer
    st, answer = ask(d, token, VIP)
    assert st == 200, f"the plan unlocks {VIP}: {answer}"
    records = usage(d, token)
    assert sorted((r["credits"]["free"], r["credits"]["plan"], r["credits"]["paid"]) for r in records) \
        == sorted([(3, 0, 0), (0, 3, 0), (0, 3, 0)]), records
    assert me(d, token)["balance"]["free_left"] == 0
    st, answer = ask(d, token)
    assert st != 200, "nothing left today (no paid credits)"
    assert_audit_clean(d)

    # Its last day: the plan's credits are there; the day after, only the base allowance.
    restart(d, DAYS - 1)
    m = me(d, token)
    assert (m["plan"]["active"], m["plan"]["days_left"], m["balance"]["free_left"]) == (True, 1, FREE + DAILY), m
    restart(d, DAYS)
    m = me(d, token)
    assert (m["plan"]["active"], m["balance"]["free_left"]) == (False, FREE), m
    st, _ = ask(d, token, VIP)
    assert st != 200, f"{VIP} is locked again when the plan has ended"
    restart(d, 0)

    # A refund ends it today (today's plan credits are spent already: never below zero).
    out = d.cli("order", "refund", oid, "--reason", "e2e refund")
    assert f"order {oid} refunded" in out.stdout, out.stdout
    m = me(d, token)
    assert (m["plan"]["active"], m["plan"]["days_left"], m["balance"]["free_left"]) == (False, 0, 0), m
    refunds = [e for e in ledger(d, uid) if e["reference"] == f"refund:{oid}"]
    assert len(refunds) == 1 and refunds[0]["paid_delta"] == 0 and "已结束" in refunds[0]["reason"], refunds
    d.cli("order", "refund", oid, "--reason", "again", check=False)
    assert len([e for e in ledger(d, uid) if e["reference"] == f"refund:{oid}"]) == 1
    assert me(d, token)["plan"] == m["plan"]
    assert_audit_clean(d)

    # Admin stats: the plan sale on its day.
    day = json.loads(d.cli("--json", "stats", "--days", "1").stdout)[-1]
    assert day["plans_sold"] >= 1 and day["plan_sales_fen"] >= PRICE, day


def test_a_plan_code_grants_the_plan_once_and_a_second_extends_it(d):
    st, _, body = http(d, "POST", "/admin/codes", d.admin_token, {"count": 2, "plan": "month"})
    assert st == 200, body
    codes = [c["code"] for c in json.loads(body)["codes"]]
    st, _, body = http(d, "POST", "/admin/codes", d.admin_token, {"count": 1, "plan": "year"})
    assert st == 400 and b"not one of [[plans]]" in body, body

    uid, token = d.new_user("code-member")
    st, _, body = http(d, "POST", "/api/redeem", token, {"code": codes[0]})
    assert st == 200, body
    r = json.loads(body)
    assert r["plan"]["active"] and r["plan"]["days_left"] == DAYS, r
    st, _, body = http(d, "POST", "/api/redeem", token, {"code": codes[0]})
    assert st == 409, body
    assert me(d, token)["plan"]["days_left"] == DAYS, "a used code grants nothing more"
    # The second code by chat command: 30 more days from the end.
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"/redeem {codes[1]}"}]}
    st, _, raw = http(d, "POST", "/v1/chat/completions", token, body,
                      headers={"x-chatrelay-client": "web"}, timeout=30)
    assert st == 200, raw
    assert "月卡已生效" in json.loads(raw)["choices"][0]["message"]["content"]
    m = me(d, token)
    assert m["plan"]["days_left"] == 2 * DAYS, m
    entries = [e for e in ledger(d, uid) if e["reference"].startswith("code:")]
    assert len(entries) == 2 and all(e["paid_delta"] == 0 for e in entries), entries
    # The CLI makes plan codes too (its CSV's credits column says the plan).
    out = d.cli("codes", "create", "--count", "1", "--plan", "month", "--csv").stdout
    assert out.splitlines()[1].split(",")[1] == "plan:month", out
    assert_audit_clean(d)


def test_the_account_sheet_shows_the_plan(d):
    if d.engine != "sled":
        pytest.skip("the page is the same on both engines; one screenshot")
    from playwright.sync_api import expect, sync_playwright
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("browser tests need Debian's chromium: apt-get install chromium")
    st, _, body = http(d, "POST", "/admin/codes", d.admin_token, {"count": 1, "plan": "month"})
    code = json.loads(body)["codes"][0]["code"]
    uid, token = d.new_user("页面会员")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_context(viewport={"width": 390, "height": 844}, locale="zh-CN").new_page()
        page.set_default_timeout(15_000)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(d.url + "/")
        if not page.get_by_test_id("token-input").is_visible():
            page.locator("#token-section summary").click()
        page.get_by_test_id("token-input").fill(token)
        page.get_by_test_id("token-submit").click()
        expect(page.get_by_test_id("chat-input")).to_be_visible()
        page.get_by_test_id("account-open").click()
        expect(page.get_by_test_id("account-panel")).to_be_visible()
        expect(page.get_by_test_id("plan-card")).to_be_hidden()
        page.get_by_test_id("redeem-code").fill(code)
        page.get_by_test_id("redeem-submit").click()
        expect(page.get_by_test_id("redeem-result")).to_contain_text("兑换成功：月卡有效期至")
        expect(page.get_by_test_id("plan-card")).to_be_visible()
        expect(page.get_by_test_id("plan-name")).to_have_text(f"月卡 · 每天额外 {DAILY} 额度")
        end = me(d, token)["plan"]["end"]
        expect(page.get_by_test_id("plan-until")).to_have_text(f"有效期至 {end}（剩 {DAYS} 天）")
        expect(page.get_by_test_id("balance-free")).to_have_text(f"{FREE + DAILY} / {FREE + DAILY}")
        shots = ROOT / "target" / "e2e-screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "phone-plan.png"))
        browser.close()
    assert errors == [], errors
