"""The console's orders, codes and operations pages and the dashboard's new figures, in a real
browser (Playwright on Debian's Chromium) against the real binary, with orders paid at the fake
WeChat Pay / Alipay (fake_pay.py) and a zsxq group at the fake zsxq (fake_zsxq.py).

Orders: found by channel / method / status filters, opened, refunded through the confirmation
(which names the amount and the credits), the balance taken back (checked through the admin
API), the CSV export (a browser download with the session cookie) holds the filtered orders.
Codes: a batch made, its codes downloaded at once (the only time they are shown), revoked.
Operations: the redacted configuration holds no secret, a reload shows what changed and an
invalid file's problems, zsxq pause / resume / new token, a content-filter hit listed, version
and uptime. The dashboard's new users, credits granted and revenue by method equal /admin/stats.
Screenshots (phone 390 and desktop 1280) go to target/e2e-screenshots/console-{orders,codes,ops}-*.png."""

import csv
import io
import json
import time

import openai
import pytest
import requests
from playwright.sync_api import expect

from conftest import MODEL
from fake_pay import ALIPAY, WECHAT
from fake_zsxq import FakeZsxq
from test_console import SHOTS, log_in, shot  # noqa: F401
from test_payments import (  # noqa: F401 (fixtures)
    PUBLIC_URL, alipay, create_order, new_pay_daemon, notify_paid, paykeys, running, wxpay,
)
from test_web import DESKTOP, PHONE, browser, new_page  # noqa: F401 (the browser fixture)

ZSXQ_TOKEN = "zsxq-secret-token-4711"
FORBIDDEN = "forbidden-e2e-word"


@pytest.fixture(scope="module")
def zsxq():
    f = FakeZsxq()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def shop(upstream, paykeys, wxpay, alipay, zsxq):
    d = new_pay_daemon(upstream, paykeys, wxpay, alipay)
    d.config.write_text(d.config.read_text() + f"""
[[zsxq]]
id = "star"
group_id = "51111888224444"
access_token = "{ZSXQ_TOKEN}"
schedule = "0 0 3 * * *"
api_base = "{zsxq.url}"

[[filters]]
id = "e2e"
words = ["{FORBIDDEN}"]
apply_to = "input"
""")
    with running(d):
        yield d


def admin(d, method, path, **kw):
    r = requests.request(method, d.url + path, headers={"Authorization": f"Bearer {d.admin_token}"},
                         timeout=10, **kw)
    assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
    return r


def paid(d, wxpay, alipay, token, channel, product="p10"):
    order = create_order(d, token, product, channel)
    (wxpay if channel == "wechat" else alipay).pay(order["id"])
    notify_paid(d, wxpay, alipay, channel, order["id"], order.get("amount_fen", 100))
    return order["id"]


def console_page(browser, d, viewport):
    page = new_page(browser, viewport)
    log_in(page, d, d.admin_token)
    expect(page.locator("#dashboard")).to_be_visible()
    return page


def test_orders_filter_open_refund_and_export(shop, wxpay, alipay, browser):
    d = shop
    uid, token = d.new_user("console-buyer", credits=5)
    wx = paid(d, wxpay, alipay, token, "wechat")
    ali = paid(d, wxpay, alipay, token, "alipay")
    assert d.paid(uid) == 5 + 10 + 10

    page = console_page(browser, d, DESKTOP)
    page.click("#nav a[data-page='orders']")
    expect(page.locator("#orders-table")).to_contain_text(wx)
    expect(page.locator("#orders-table")).to_contain_text(ali)
    # Channel, method and status select; the other order is gone.
    page.select_option("#of-channel", "wechat")
    page.select_option("#of-method", "native")
    page.select_option("#of-status", "credited")
    page.fill("#of-uid", str(uid))
    page.click("#orders-filter button[type=submit]")
    expect(page.locator(f"#orders-table a[data-order='{wx}']")).to_be_visible()
    expect(page.locator("#orders-table")).not_to_contain_text(ali)
    expect(page.locator("#orders-table tr")).to_have_count(2)
    # The same filters in the CSV link; the download (with the cookie) holds the order.
    href = page.get_attribute("#orders-csv", "href")
    assert "channel=wechat" in href and "method=native" in href and f"uid={uid}" in href, href
    with page.expect_download() as dl:
        page.click("#orders-csv")
    rows = list(csv.DictReader(io.StringIO(open(dl.value.path(), encoding="utf-8-sig").read())))
    assert [r["id"] for r in rows] == [wx], rows
    assert rows[0]["method"] == "native" and rows[0]["amount_yuan"] == "1.00", rows
    # The API agrees, and refuses what it does not know with the allowed values.
    api = admin(d, "GET", "/admin/orders", params={"method": "wap", "uid": uid}).json()
    assert [o["id"] for o in api] == [] or all(o["method"] == "wap" for o in api)
    assert ali in [o["id"] for o in admin(d, "GET", "/admin/orders", params={"channel": "alipay", "uid": uid}).json()]
    r = requests.get(d.url + "/admin/orders", params={"method": "card"},
                     headers={"Authorization": f"Bearer {d.admin_token}"}, timeout=10)
    assert r.status_code == 400 and "native" in r.json()["error"], r.text
    cli = json.loads(d.cli("--json", "order", "list", "--channel", "alipay", "--uid", str(uid)).stdout)
    assert [o["id"] for o in cli] == [ali]
    shot(page, "console-orders-desktop")
    page.click("#lang")
    expect(page.locator("#orders-csv")).to_have_text("Export CSV")
    expect(page.locator("#orders-table")).to_contain_text("WeChat Pay")
    shot(page, "console-orders-desktop-en")
    page.click("#lang")

    # The order's page: the order and its provider events.
    page.click(f"#orders-table a[data-order='{wx}']")
    expect(page.locator("#order-status")).to_have_attribute("data-status", "credited")
    expect(page.locator("#order-amount")).to_have_text("1.00")
    events = page.locator("#order-events")
    expect(events).to_contain_text("credited")
    assert events.locator("tr").count() >= 3, events.inner_text()
    shot(page, "console-order-desktop")

    # Refund: the confirmation names the amount and the credits; a reason is required.
    page.click("#refund")
    expect(page.locator("#refund-question")).to_contain_text("¥1.00")
    expect(page.locator("#refund-question")).to_contain_text("10 积分")
    page.click("#refund-confirm")
    expect(page.locator("#refund-message")).to_have_text("请填写退款原因")
    assert admin(d, "GET", f"/admin/orders/{wx}").json()["order"]["status"] == "credited"
    shot(page, "console-orders-refund-desktop")
    page.fill("#refund-reason", "e2e console refund")
    page.click("#refund-confirm")
    expect(page.locator("#order-status")).to_have_attribute("data-status", "refunded")
    expect(page.locator("#order-status")).to_have_text("已退款")
    expect(page.locator("#refund")).to_have_count(0)
    expect(page.locator("#order-events")).to_contain_text("refund")
    assert admin(d, "GET", f"/admin/orders/{wx}").json()["order"]["status"] == "refunded"
    assert d.paid(uid) == 5 + 10, "the refund took the order's 10 credits back"
    assert len(wxpay.refunds_for(wx)) == 1
    assert page.console_errors == []
    page.context.close()

    page = console_page(browser, d, PHONE)
    page.goto(d.url + "/console#/orders")
    expect(page.locator("#orders-table")).to_contain_text(wx)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    shot(page, "console-orders-phone")
    page.goto(d.url + f"/console#/orders/{ali}")
    expect(page.locator("#order-status")).to_have_attribute("data-status", "credited")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    shot(page, "console-order-phone")
    page.context.close()


def test_code_batch_download_and_revoke(shop, browser):
    d = shop
    page = console_page(browser, d, DESKTOP)
    page.click("#nav a[data-page='codes']")
    page.fill("#kc-credits", "25")
    page.fill("#kc-count", "3")
    page.fill("#kc-note", "e2e 渠道")
    page.click("#codes-new button[type=submit]")
    expect(page.locator("#codes-download")).to_be_visible()
    with page.expect_download() as dl:
        page.click("#codes-download")
    rows = list(csv.DictReader(io.StringIO(open(dl.value.path(), encoding="utf-8-sig").read())))
    assert len(rows) == 3 and all(r["credits"] == "25" for r in rows), rows
    batch = rows[0]["batch"]
    codes = [r["code"] for r in rows]
    assert len(set(codes)) == 3 and all(len(c) >= 8 for c in codes), codes
    listed = admin(d, "GET", "/admin/codes", params={"batch": batch}).json()
    assert listed["batch"]["codes"]["unused"] == 3 and listed["batch"]["note"] == "e2e 渠道"
    row = page.locator(f"#codes-batches tr[data-batch='{batch}']")
    expect(row).to_contain_text("e2e 渠道")
    shot(page, "console-codes-desktop")

    # The batch's own page: its codes' ids and states, as CSV too.
    row.locator("a.button").click()
    expect(page.locator("#batch-codes tr")).to_have_count(4)
    with page.expect_download() as dl2:
        page.click("#batch-csv")
    states = list(csv.DictReader(io.StringIO(open(dl2.value.path(), encoding="utf-8-sig").read())))
    assert [s["status"] for s in states] == ["unused"] * 3, states
    shot(page, "console-codes-batch-desktop")

    # Revoke behind a confirmation.
    page.click("a.back")
    page.click(f"#codes-batches button[data-revoke='{batch}']")
    expect(page.locator("#revoke-question")).to_contain_text("3")
    page.click("#revoke-confirm")
    expect(page.locator("#revoke-done")).to_contain_text("3")
    after = admin(d, "GET", "/admin/codes", params={"batch": batch}).json()["batch"]["codes"]
    assert (after["unused"], after["revoked"]) == (0, 3), after
    expect(page.locator(f"#codes-batches button[data-revoke='{batch}']")).to_have_count(0)
    assert page.console_errors == []
    page.context.close()

    page = console_page(browser, d, PHONE)
    page.goto(d.url + "/console#/codes")
    expect(page.locator(f"#codes-batches tr[data-batch='{batch}']")).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    shot(page, "console-codes-phone")
    page.context.close()


def test_operations_page(shop, zsxq, upstream, browser):
    d = shop
    # A content-filter hit to review.
    uid, token = d.new_user("console-hit", credits=10)
    client = openai.OpenAI(base_url=d.url + "/v1", api_key=token, max_retries=0)
    try:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"say {FORBIDDEN}"}])
    except openai.APIError:
        pass
    assert admin(d, "GET", "/admin/hits").json(), "the hit is recorded"

    raw = admin(d, "GET", "/admin/config").text
    secrets = [d.admin_token, "sk-fake-upstream-key", WECHAT["api_v3_key"], ZSXQ_TOKEN]
    for s in secrets:
        assert s not in raw, f"{s} leaked from /admin/config"
    conf = json.loads(raw)
    assert conf["config"]["server"]["admin_token"] == "***"
    assert conf["config"]["pay"]["wechat"]["api_v3_key"] == "***"
    assert conf["backup_supported"] is True and conf["uptime_secs"] >= 0
    assert "(commit " in conf["version"], conf["version"]
    # `chatrelay admin config` prints the same, redacted too.
    out = d.cli("config").stdout
    assert out.startswith("chatrelay " + conf["version"]) and '"admin_token": "***"' in out, out[:500]
    for s in secrets:
        assert s not in out, f"{s} printed by admin config"

    page = console_page(browser, d, DESKTOP)
    page.click("#nav a[data-page='ops']")
    expect(page.locator("#version")).to_have_text(conf["version"])
    expect(page.locator("#uptime")).to_be_visible()
    view = page.locator("#config-view")
    expect(view).to_contain_text('"admin_token": "***"')
    expect(view).to_contain_text(ALIPAY["app_id"])
    text = view.inner_text()
    for s in secrets:
        assert s not in text, f"{s} shown on the page"
    expect(page.locator("#hits")).to_contain_text(FORBIDDEN)
    expect(page.locator("#hits")).to_contain_text("e2e")
    # The backup link downloads a snapshot with the cookie.
    with page.expect_download() as dl:
        page.click("#backup")
    first = open(dl.value.path(), encoding="utf-8").readline()
    assert first.strip().startswith("{"), first

    # zsxq: pause, resume, a new token (a password field, emptied after).
    group = page.locator("#zsxq-groups")
    expect(group).to_contain_text("运行中")
    page.click("#zsxq-groups button[data-zsxq='star']")
    expect(group).to_contain_text("已暂停")
    assert admin(d, "GET", "/admin/zsxq").json()[0]["paused"] is True
    page.click("#zsxq-groups button[data-zsxq='star']")
    expect(group).to_contain_text("运行中")
    assert admin(d, "GET", "/admin/zsxq").json()[0]["paused"] is False
    token_input = page.locator("input[data-zsxq-token='star']")
    assert token_input.get_attribute("type") == "password"
    token_input.fill("zsxq-new-token-0815")
    page.locator("#zsxq-groups form button").click()
    expect(page.locator("#zsxq-message")).to_have_text("令牌已更换，轮询已恢复")
    assert "zsxq-new-token-0815" not in admin(d, "GET", "/admin/config").text

    # Reload after a harmless change: the result names the section.
    original = d.config.read_text()
    d.config.write_text(original.replace("rate_limit_per_minute = 0", "rate_limit_per_minute = 100"))
    page.click("#reload")
    expect(page.locator("#reload-applied")).to_contain_text("bot")
    # The configuration view shows the new value, and the result stays on the page.
    expect(view).to_contain_text('"rate_limit_per_minute": 100')
    expect(page.locator("#reload-applied")).to_contain_text("bot")
    shot(page, "console-ops-desktop")
    # An invalid file: every problem shown, the running configuration stays.
    d.config.write_text(original + '\n[quota]\nfree_daily = "lots"\n')
    page.click("#reload")
    expect(page.locator("#reload-error")).to_be_visible()
    expect(page.locator("#reload-error")).to_contain_text("新配置无效")
    expect(page.locator("#reload-error li").first).to_contain_text("quota")
    shot(page, "console-ops-reload-error-desktop")
    d.config.write_text(original)
    page.click("#reload")
    expect(page.locator("#reload-ok")).to_be_visible()
    # The ledger audit (what `admin audit` prints): consistent, with the same counts.
    audit = admin(d, "GET", "/admin/audit").json()
    assert audit["mismatches"] == [], audit
    page.click("#audit")
    expect(page.locator("#audit-ok")).to_contain_text(f"{audit['users']} 个用户")
    expect(page.locator("#audit-ok")).to_contain_text(f"{audit['ledger_entries']} 条流水")
    assert page.console_errors == []
    page.context.close()

    page = console_page(browser, d, PHONE)
    page.goto(d.url + "/console#/ops")
    expect(page.locator("#config-view")).to_contain_text('"admin_token": "***"')
    expect(page.locator("#zsxq-groups")).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    shot(page, "console-ops-phone")
    page.context.close()


def test_dashboard_new_figures_equal_the_api(shop, wxpay, alipay, browser):
    d = shop
    uid, token = d.new_user("console-dash", credits=7)
    paid(d, wxpay, alipay, token, "alipay")
    stats = admin(d, "GET", "/admin/stats", params={"days": 1}).json()
    today = stats[-1]
    assert today["new_users"] >= 1 and today["credits_granted"] >= 7 + 10, today
    assert today["revenue_by_method"].get("precreate", 0) >= 100, today
    assert today["credits_granted"] == today["order_credits"] + today["code_credits"] + today["grant_credits"]
    # What `chatrelay admin stats` prints is the same data.
    assert json.loads(d.cli("--json", "stats", "--days", "1").stdout) == stats
    page = console_page(browser, d, DESKTOP)
    page.click(".periods button[data-days='1']")
    for key in ["new_users", "credits_granted", "credits_charged"]:
        expect(page.locator(f".card[data-key='{key}']")).to_have_attribute("data-value", str(today[key]))
    for method, fen in today["revenue_by_method"].items():
        expect(page.locator(f"#methods .card[data-method='{method}']")).to_have_attribute("data-value", str(fen))
    expect(page.locator(".card[data-key='new_users'] .label")).to_have_text("新用户")
    shot(page, "console-dashboard-figures-desktop")
    page.context.close()
