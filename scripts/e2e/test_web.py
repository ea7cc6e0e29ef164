"""The web chat page in a real browser: Playwright drives Debian's Chromium (never a downloaded
browser) against the real binary, a fake LLM, WeChat (wechatpy-signed messages for login codes)
and a fake WeChat Pay. Screenshots of the main screens (phone and desktop) are written to
target/e2e-screenshots/."""

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import COST, ROOT, Daemon
from fake_openai import ANSWER
from fake_pay import FakeAlipay, FakeWechatPay, new_rsa_key, private_pem
from test_payments import PayDaemon, pay_toml
from test_wechat_mp import LOGIN_CODE, SUB, WeChat

SHOTS = ROOT / "target" / "e2e-screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
MARKDOWN = ["# 标题\n\n", "这是 **粗体** 和 `行内代码`。\n\n", "- 第一项\n- 第二项\n\n",
            "```python\n", "def hello():\n    return 'hi'  # 注释\n", "```\n"]
TIMEOUT = 15_000


@pytest.fixture(scope="module")
def web(upstream, tmp_path_factory):
    keys = tmp_path_factory.mktemp("webkeys")
    merchant, app = new_rsa_key(), new_rsa_key()
    (keys / "merchant_key.pem").write_bytes(private_pem(merchant))
    (keys / "app_private.pem").write_bytes(private_pem(app))
    wxpay = FakeWechatPay(merchant.public_key())
    (keys / "platform_pub.pem").write_bytes(wxpay.platform_public_pem())
    alipay = FakeAlipay(app.public_key())
    (keys / "alipay_public.pem").write_bytes(alipay.alipay_public_pem())

    class Keys:
        dir = keys

    extra = f"""
[web]
title = "测试助手"
guest_credits = {COST}
mp_name = "测试公众号"

[[wechat_mp]]
id = "{SUB['id']}"
app_id = "{SUB['app_id']}"
token = "{SUB['token']}"
passive_wait_ms = 3000
""" + pay_toml(Keys, wxpay, alipay, ttl=900, min_age=600)
    d = PayDaemon(upstream.base_url, extra_toml=extra, llm_timeout=10,
                  extra_env={"CHATRELAY__SERVER__PUBLIC_URL": "https://chat.example.test"}).start()
    d.wxpay = wxpay
    yield d
    code = d.stop()
    wxpay.stop()
    alipay.stop()
    assert code == 0, d.logs()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("browser tests need Debian's chromium: apt-get install chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def new_page(browser, viewport):
    ctx = browser.new_context(viewport=viewport, locale="zh-CN")
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.console_errors = errors
    return page


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def token_of(page):
    """The user token the page keeps (wherever it keeps it in localStorage)."""
    values = page.evaluate("() => Object.values(localStorage)")
    for v in values:
        m = re.search(r"sk-cr-[0-9a-f]{48}", v or "")
        if m:
            return m.group(0)
    raise AssertionError(f"no token in localStorage: {values}")


def me(d, token):
    req = urllib.request.Request(d.url + "/api/me", headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def login(d, page, openid):
    """Gets a code from the Official Account (as WeChat would deliver the keyword) and logs in."""
    _, reply = WeChat(d, SUB).send_text(openid, "验证码", timeout=5)
    code = re.search(LOGIN_CODE, reply["Content"]).group(0)
    page.goto(d.url + "/")
    page.get_by_test_id("login-code").fill(code.lower())
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    return token_of(page)


def send(page, text):
    page.get_by_test_id("chat-input").fill(text)
    page.get_by_test_id("send").click()


def last_answer(page):
    return page.get_by_test_id("message-assistant").last


def metric(d, name):
    with urllib.request.urlopen(d.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_login_and_a_streamed_markdown_answer(web, browser, upstream):
    page = new_page(browser, PHONE)
    page.goto(web.url + "/")
    expect(page.get_by_test_id("login-code")).to_be_visible()
    expect(page.locator("body")).to_contain_text("测试公众号")
    shot(page, "phone-login")
    bad = page.get_by_test_id("login-code")
    bad.fill("0000-0000")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_be_visible()

    token = login(web, page, "o_web_alice")
    uid = me(web, token)["uid"]
    web.cli("grant", str(uid), "30", "--reason", "web test")
    upstream.pieces = list(MARKDOWN)
    send(page, "给我看看 markdown")
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.locator("h1")).to_have_text("标题")
    expect(answer.locator("strong")).to_have_text("粗体")
    expect(answer.locator("li")).to_have_count(2)
    expect(answer.locator("pre code")).to_contain_text("def hello():")
    expect(answer.locator("pre").get_by_role("button")).to_have_count(1)  # copy
    expect(page.get_by_test_id("message-user").last).to_contain_text("给我看看 markdown")
    # Paid balance went down by the model's price.
    assert me(web, token)["balance"]["paid"] == 30 - COST
    shot(page, "phone-chat")
    assert not page.console_errors, page.console_errors

    # A new conversation, and the old one is still listed.
    page.get_by_test_id("new-chat").click()
    upstream.pieces = ["第二段对话"]
    send(page, "你好")
    expect(last_answer(page)).to_contain_text("第二段对话")
    expect(page.get_by_test_id("conversation-item")).to_have_count(2)


def test_stop_really_stops_the_generation(web, browser, upstream):
    page = new_page(browser, DESKTOP)
    token = login(web, page, "o_web_bob")
    web.cli("grant", str(me(web, token)["uid"]), "30", "--reason", "web test")
    cancelled_before = metric(web, 'chatrelay_llm_requests_total{outcome="cancelled"}')
    upstream.mode, upstream.slow_interval = "slow", 0.2
    send(page, "写一篇很长的文章")
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "streaming")
    expect(answer).to_contain_text("tick2")
    page.get_by_test_id("stop").click()
    expect(answer).to_have_attribute("data-state", "stopped")
    text_at_stop = answer.inner_text()
    deadline = time.time() + 10
    while metric(web, 'chatrelay_llm_requests_total{outcome="cancelled"}') <= cancelled_before:
        assert time.time() < deadline, "the daemon did not cancel the upstream call"
        time.sleep(0.1)
    time.sleep(1)
    assert answer.inner_text() == text_at_stop, "nothing arrives after stop"
    expect(page.get_by_test_id("send")).to_be_visible()
    shot(page, "desktop-stopped")


def test_out_of_quota_then_buy_and_credits_arrive(web, browser, upstream):
    page = new_page(browser, PHONE)
    token = login(web, page, "o_web_carol")
    uid = me(web, token)["uid"]
    send(page, "没有额度也想问")
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "error")
    error = answer.get_by_test_id("answer-error")
    expect(error).to_contain_text("额度不足")
    # Products and a payment channel exist here: the hint says where to buy.
    expect(error).to_contain_text("网页端购买")
    # Said once: in place of the answer, not again in a banner.
    expect(page.get_by_test_id("error-banner")).to_be_hidden()
    # (Everything on screen but the screen-reader announcement, which is not shown.)
    expect(page.locator("body > :not(#live)").get_by_text("额度不足")).to_have_count(1)
    # Asking again cannot succeed without credits: not offered.
    expect(answer.get_by_test_id("regenerate")).to_have_count(0)
    shot(page, "phone-out-of-credits")
    answer.get_by_test_id("answer-buy").click()
    expect(page.get_by_test_id("buy-panel")).to_be_visible()
    page.get_by_test_id("product-p10").click()
    page.get_by_test_id("channel-wechat").click()
    expect(page.get_by_test_id("order-qr")).to_be_visible()
    status = page.get_by_test_id("order-status")
    expect(status).to_have_attribute("data-status", "created")
    shot(page, "phone-buy")
    orders = [o for o in json.loads(web.cli("--json", "order", "list", "--status", "created").stdout) if o["uid"] == uid]
    assert len(orders) == 1, orders
    oid = orders[0]["id"]
    web.wxpay.pay(oid)
    headers, body = web.wxpay.notification(oid, 100)
    req = urllib.request.Request(web.url + "/pay/wechat/notify", data=body, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status in (200, 204)
    expect(status).to_have_attribute("data-status", "credited", timeout=TIMEOUT)
    expect(page.get_by_test_id("balance-paid").first).to_have_text("10")
    assert me(web, token)["balance"]["paid"] == 10
    # Back to the chat: with credits, asking again is offered, and it gets an answer.
    page.keyboard.press("Escape")
    again = last_answer(page).get_by_test_id("regenerate")
    expect(again).to_be_visible()
    again.click()
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    expect(last_answer(page)).to_contain_text(ANSWER)
    # After a reload too.
    page.goto(web.url + "/")
    send(page, "现在有额度了")
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    expect(last_answer(page)).to_contain_text(ANSWER)


@pytest.fixture(scope="module")
def bare(upstream):
    """A daemon with the web page and nothing to sell: no products, no payments, no daily
    free credits."""
    d = Daemon(upstream.base_url).start()
    yield d
    assert d.stop() == 0, d.logs()


def test_out_of_credits_with_nothing_to_buy_points_nowhere(bare, browser):
    page = new_page(browser, PHONE)
    _, token = bare.new_user("nobody")
    page.goto(bare.url + "/")
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("token-submit").click()
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    send(page, "没有额度")
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "error")
    error = answer.get_by_test_id("answer-error")
    expect(error).to_contain_text("额度不足")
    text = error.inner_text()
    assert "购买" not in text and "零点" not in text, text
    expect(answer.get_by_test_id("answer-buy")).to_have_count(0)
    expect(answer.get_by_test_id("regenerate")).to_have_count(0)
    expect(page.get_by_test_id("error-banner")).to_be_hidden()
    expect(page.get_by_test_id("buy-open")).to_be_hidden()
    shot(page, "phone-out-of-credits-nothing-to-buy")
    # A grant makes asking again possible (the page learns the balance on its next look).
    bare.cli("grant", str(me(bare, token)["uid"]), "10", "--reason", "e2e")
    page.reload()
    page.get_by_test_id("menu-open").click()  # the conversation list (a drawer on a phone)
    page.get_by_test_id("conversation-item").first.click()
    again = last_answer(page).get_by_test_id("regenerate")
    expect(again).to_be_visible()
    again.click()
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    assert not page.console_errors, page.console_errors


def test_guest_mode_and_expired_login(web, browser):
    page = new_page(browser, DESKTOP)
    page.goto(web.url + "/")
    page.get_by_test_id("guest-start").click()
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    send(page, "试用一下")
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    shot(page, "desktop-chat")
    token = token_of(page)
    web.cli("token", "revoke", token)
    send(page, "还能用吗")
    # A revoked (or expired) token sends the user back to the login screen.
    expect(page.get_by_test_id("login-code")).to_be_visible()
    shot(page, "desktop-login")
