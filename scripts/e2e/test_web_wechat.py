"""The web page inside WeChat, in phone browsers and on desktops (issue 20), in a real browser:
Playwright drives Debian's Chromium against the real binary, with fake WeChat web authorization
(fake_wechat), fake WeChat Pay (JSAPI, H5) and fake Alipay (WAP/page cashier) from conftest's
InWechat. The daemon's public_url (https, as WeChat Pay requires) is not reachable from here: the
fakes route its origin to the daemon's real address, so their redirects and notifications arrive,
and the browser, on http://127.0.0.1, still keeps the `Secure` login cookie (localhost).

Inside WeChat the page runs with WeChat's user agent and a stub `WeixinJSBridge` that checks
`paySign` with the merchant's public key (WebCrypto, RSASSA-PKCS1-v1_5 / SHA-256 over
"appId\\ntimeStamp\\nnonceStr\\npackage\\n") before it asks the fake to pay; a stub given another
key refuses, and that test shows the page then credits nothing.

Screenshots go to target/e2e-screenshots/ (copies of them are in docs/screenshots/)."""

import base64
import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import expect, sync_playwright

from conftest import ROOT
from fake_pay import new_rsa_key

SHOTS = ROOT / "target" / "e2e-screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
TIMEOUT = 15_000
WECHAT_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Mobile/15E148 MicroMessenger/8.0.50(0x1800323a) NetType/WIFI Language/zh_CN")
PHONE_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.4 Mobile/15E148 Safari/604.1")
PUBLIC_URL = "https://page.example.test"

# WeChat's bridge, as a page inside WeChat sees it, with the one call the page makes. It is not
# there when the page starts: `__installBridge()` brings it and fires WeixinJSBridgeReady, as
# WeChat does a moment after load. It verifies paySign with SPKI (the merchant's public key)
# and only then has the fake pay (deliver the notification) through the `__fakePay` binding
# (the page's CSP allows no request to another origin, so the stub cannot call the fake itself).
BRIDGE = """
(() => {
  const SPKI = '%(spki)s';
  const log = window.__bridge = { calls: 0, verified: [], paid: [] };
  const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  async function verify(p) {
    const key = await crypto.subtle.importKey('spki', bytes(SPKI),
      { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, false, ['verify']);
    const msg = new TextEncoder().encode(p.appId + '\\n' + p.timeStamp + '\\n' + p.nonceStr + '\\n' + p.package + '\\n');
    return crypto.subtle.verify('RSASSA-PKCS1-v1_5', key, bytes(p.paySign), msg);
  }
  const bridge = {
    invoke(name, p, cb) {
      log.calls++;
      (async () => {
        let ok = false;
        try {
          ok = name === 'getBrandWCPayRequest' && p.signType === 'RSA' && /^prepay_id=./.test(p.package) &&
            typeof p.timeStamp === 'string' && /^\\d+$/.test(p.timeStamp) && p.nonceStr.length <= 32 &&
            await verify(p);
        } catch (e) { ok = false; }
        log.verified.push(ok);
        if (!ok) { cb({ err_msg: 'get_brand_wcpay_request:fail', err_desc: '签名错误' }); return; }
        const paid = await window.__fakePay(p.package.slice('prepay_id='.length));
        log.paid.push(paid);
        cb({ err_msg: paid ? 'get_brand_wcpay_request:ok' : 'get_brand_wcpay_request:fail' });
      })();
    },
  };
  window.__installBridge = () => {
    window.WeixinJSBridge = bridge;
    document.dispatchEvent(new Event('WeixinJSBridgeReady'));
  };
})();
"""


def spki_b64(public_key):
    return base64.b64encode(public_key.public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)).decode()


@pytest.fixture(scope="module")
def shop(upstream, inwechat):
    """Every method on, automatic WeChat login on, OA `main` bound to the merchant."""
    d = inwechat.daemon(upstream, public_url=PUBLIC_URL, wechat_methods=["native", "jsapi", "h5"],
                        alipay_methods=["precreate", "wap", "page"]).start()
    d.fakes = inwechat
    yield d
    code = d.stop()
    assert code == 0, d.logs()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("browser tests need Debian's chromium: apt-get install chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def new_page(browser, kind):
    """A page in its own context: 'wechat' (WeChat's browser on an iPhone), 'phone' (Safari on
    an iPhone) or 'desktop'."""
    if kind == "desktop":
        ctx = browser.new_context(viewport=DESKTOP, locale="zh-CN")
    else:
        ctx = browser.new_context(viewport=PHONE, locale="zh-CN", is_mobile=True, has_touch=True,
                                  user_agent=WECHAT_UA if kind == "wechat" else PHONE_UA)
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.console_errors = errors
    return page


def with_bridge(page, fakes, public_key):
    """Installs the stub WeixinJSBridge (checking paySign against `public_key`) in `page`."""
    def fake_pay(_source, prepay_id):
        no, _ = fakes.wxpay.order_by_prepay(prepay_id)
        if no is None:
            return False
        delivered = fakes.wxpay.pay_and_notify(no)
        return bool(delivered) and delivered[0] in (200, 204)
    page.context.expose_binding("__fakePay", fake_pay)
    page.context.add_init_script(BRIDGE % {"spki": spki_b64(public_key)})


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def token_of(page):
    token = page.evaluate("() => localStorage.getItem('chatrelay.token')")
    assert token, "not logged in"
    return token


def me(d, token):
    req = urllib.request.Request(d.url + "/api/me", headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def orders_of(d, uid):
    return [o for o in json.loads(d.cli("--json", "order", "list").stdout) if o["uid"] == uid]


def logged_in_by_token(d, page, name):
    """A user of the site, logged in on `page` with a token (phone browsers have no OAuth)."""
    uid, token = d.new_user(name)
    page.goto(d.url + "/")
    page.evaluate("t => localStorage.setItem('chatrelay.token', t)", token)
    page.goto(d.url + "/")
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    return uid, token


def open_buy(page, product):
    page.get_by_test_id("buy-open").click()
    expect(page.get_by_test_id("buy-panel")).to_be_visible()
    page.get_by_test_id("product-" + product).click()


def test_in_wechat_logged_in_without_typing_and_paid_by_jsapi(shop, browser):
    fakes = shop.fakes
    fakes.wechat.set_phone_user("o_page_alice")
    page = new_page(browser, "wechat")
    with_bridge(page, fakes, fakes.merchant.public_key())
    page.goto(shop.url + "/")
    # Straight through web authorization and back, logged in; the one-time login is gone
    # from the address.
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    assert "#login" not in page.url and page.url.rstrip("/") == shop.url, page.url
    token = token_of(page)
    uid = me(shop, token)["uid"]
    paid_before = me(shop, token)["balance"]["paid"]

    open_buy(page, "p10")
    # Inside WeChat, WeChat Pay is chosen for the user and paid in WeChat's cashier.
    expect(page.get_by_test_id("channel-wechat")).to_have_attribute("aria-pressed", "true")
    pay = page.get_by_test_id("order-pay")
    expect(pay).to_contain_text("¥1.00")
    shot(page, "wechat-phone-buy")
    pay.click()
    status = page.get_by_test_id("order-status")
    # The bridge is not there yet: the page waits for WeixinJSBridgeReady.
    expect(status).to_contain_text("正在打开微信支付")
    page.evaluate("() => window.__installBridge()")
    expect(status).to_have_attribute("data-status", "credited")
    expect(status).to_have_text("支付成功，已到账 10 额度")
    expect(page.get_by_test_id("balance-paid")).to_have_text(str(paid_before + 10))
    shot(page, "wechat-phone-paid")
    bridge = page.evaluate("() => window.__bridge")
    assert bridge["calls"] == 1 and bridge["verified"] == [True] and bridge["paid"] == [True], bridge
    assert me(shop, token)["balance"]["paid"] == paid_before + 10
    [order] = [o for o in orders_of(shop, uid) if o["status"] == "credited"]
    assert fakes.wxpay.jsapi_calls_for(order["id"]), "paid by a JSAPI order"
    assert not page.console_errors, page.console_errors

    # Logged out on purpose: a reload does not log straight back in.
    page.keyboard.press("Escape")
    page.get_by_test_id("menu-open").click()
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("wx-login")).to_be_visible()
    shot(page, "wechat-phone-login")
    page.reload()
    expect(page.get_by_test_id("wx-login")).to_be_visible()
    time.sleep(1)
    assert page.url.startswith(shop.url), page.url
    # One tap logs in again.
    page.get_by_test_id("wx-login").click()
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    assert me(shop, token_of(page))["uid"] == uid


def test_in_wechat_a_user_without_openid_is_authorized_first_then_the_purchase_continues(shop, browser):
    """Logged in by a token (no openid under the merchant's AppID): the order is refused with
    409 openid_required, the page runs web authorization and comes back to finish the purchase."""
    fakes = shop.fakes
    fakes.wechat.set_phone_user("o_page_henry")
    _, token = shop.new_user("token-henry")
    page = new_page(browser, "wechat")
    with_bridge(page, fakes, fakes.merchant.public_key())
    # The token is there before the page's first load (and only then).
    page.context.add_init_script("""
      if (location.protocol === 'http:' && !sessionStorage.getItem('seeded')) {
        sessionStorage.setItem('seeded', '1');
        localStorage.setItem('chatrelay.token', '%s');
      }""" % token)
    page.goto(shop.url + "/")
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    page.evaluate("() => window.__installBridge()")
    refused = []
    page.on("response", lambda r: refused.append(r.status) if r.url.endswith("/api/orders") else None)
    open_buy(page, "p10")
    with page.expect_navigation(url=lambda u: "#login=" in u or u.rstrip("/") == shop.url):
        page.get_by_test_id("order-pay").click()
    status = page.get_by_test_id("order-status")
    # Back, the purchase goes on by itself: WeChat's cashier opens when the bridge is ready.
    expect(status).to_contain_text("正在打开微信支付")
    page.evaluate("() => window.__installBridge()")
    expect(status).to_have_attribute("data-status", "credited")
    expect(status).to_have_text("支付成功，已到账 10 额度")
    assert refused[:1] == [409], refused
    assert token_of(page) != token, "logged in by web authorization on the way"
    bridge = page.evaluate("() => window.__bridge")
    assert bridge["verified"] == [True], bridge
    assert not page.console_errors, page.console_errors


def test_a_forged_pay_sign_is_refused_by_the_bridge_and_nothing_is_credited(shop, browser):
    """The same flow with a bridge holding another merchant key: the stub must refuse (this is
    what makes the test above prove paySign is right), and then nothing is paid."""
    fakes = shop.fakes
    fakes.wechat.set_phone_user("o_page_mallory")
    page = new_page(browser, "wechat")
    with_bridge(page, fakes, new_rsa_key().public_key())
    page.goto(shop.url + "/")
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    page.evaluate("() => window.__installBridge()")
    token = token_of(page)
    uid = me(shop, token)["uid"]
    open_buy(page, "p10")
    page.get_by_test_id("order-pay").click()
    hint = page.get_by_test_id("buy-panel").locator("#order-hint")
    expect(hint).to_contain_text("支付没有完成")
    expect(hint).to_contain_text("自动关闭")
    status = page.get_by_test_id("order-status")
    expect(status).to_have_attribute("data-status", "created")
    expect(page.get_by_test_id("order-pay")).to_have_text("继续支付")
    bridge = page.evaluate("() => window.__bridge")
    assert bridge["verified"] == [False] and bridge["paid"] == [], bridge
    [order] = orders_of(shop, uid)
    assert order["status"] == "created", order
    assert fakes.wxpay.order(order["id"])["state"] == "NOTPAY"
    assert me(shop, token)["balance"]["paid"] == 0


def test_in_wechat_alipay_says_how_to_open_a_browser(shop, browser):
    shop.fakes.wechat.set_phone_user("o_page_dave")
    page = new_page(browser, "wechat")
    page.goto(shop.url + "/")
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    uid = me(shop, token_of(page))["uid"]
    open_buy(page, "p50")
    page.get_by_test_id("channel-alipay").click()
    hint = page.get_by_test_id("alipay-hint")
    expect(hint).to_be_visible()
    expect(hint).to_have_text("请点击右上角 ··· 选择「在浏览器打开」后使用支付宝")
    expect(page.get_by_test_id("order-pay")).to_be_hidden()
    expect(page.get_by_test_id("order-qr")).to_be_hidden()
    shot(page, "wechat-phone-alipay-hint")
    assert orders_of(shop, uid) == [], "no Alipay order is made inside WeChat"
    assert not page.console_errors, page.console_errors


def test_phone_browser_pays_by_h5_and_wap_and_comes_back_credited(shop, browser):
    fakes = shop.fakes
    page = new_page(browser, "phone")
    uid, token = logged_in_by_token(shop, page, "phone-erin")
    # No WeChat login outside WeChat.
    assert me(shop, token)["balance"]["paid"] == 0

    # WeChat Pay H5: off to WeChat's page, back at /?order=ID, credited.
    open_buy(page, "p10")
    page.get_by_test_id("channel-wechat").click()
    expect(page.get_by_test_id("buy-panel").locator("#order-hint")).to_contain_text("跳转到微信支付")
    shot(page, "phone-buy-h5")
    with page.expect_navigation(url=lambda u: "order=" in u):
        page.get_by_test_id("order-pay").click()
    status = page.get_by_test_id("order-status")
    expect(status).to_have_attribute("data-status", "credited")
    expect(status).to_have_text("支付成功，已到账 10 额度")
    expect(page).to_have_url(shop.url + "/#buy")
    shot(page, "phone-h5-paid")
    [h5] = orders_of(shop, uid)
    assert fakes.wxpay.h5_calls_for(h5["id"]), "paid by an H5 order"
    assert me(shop, token)["balance"]["paid"] == 10

    # Alipay WAP: the cashier, then back at /?order=ID (with Alipay's signed parameters).
    page.get_by_test_id("product-p50").click()
    page.get_by_test_id("channel-alipay").click()
    expect(page.get_by_test_id("buy-panel").locator("#order-hint")).to_contain_text("跳转到支付宝")
    page.get_by_test_id("order-pay").click()
    cashier = page.get_by_role("button", name="确认付款")
    expect(cashier).to_be_visible()
    with page.expect_navigation(url=lambda u: u.startswith(shop.url)):
        cashier.click()
    expect(status).to_have_attribute("data-status", "credited")
    expect(status).to_have_text("支付成功，已到账 50 额度")
    expect(page).to_have_url(shop.url + "/#buy")
    shot(page, "phone-wap-paid")
    wap = [o for o in orders_of(shop, uid) if o["id"] != h5["id"]]
    assert len(wap) == 1 and wap[0]["channel"] == "alipay", wap
    assert [m for m, _, _ in fakes.alipay.page_calls_for(wap[0]["id"])] == ["alipay.trade.wap.pay"]
    assert me(shop, token)["balance"]["paid"] == 60
    assert not page.console_errors, page.console_errors


def test_desktop_logs_in_by_scanning_with_wechat(shop, browser):
    fakes = shop.fakes
    desktop = new_page(browser, "desktop")
    polls = []
    desktop.on("request", lambda r: polls.append(r.url) if "/api/login/ticket/" in r.url and r.method == "GET"
               and not r.url.endswith(".svg") else None)
    with desktop.expect_response(lambda r: r.url.endswith("/api/login/ticket") and r.request.method == "POST") as resp:
        desktop.goto(shop.url + "/")
    ticket = resp.value.json()
    qr = desktop.get_by_test_id("scan-qr")
    expect(qr).to_be_visible()
    expect(qr).to_have_attribute("src", ticket["qr_svg"])
    assert desktop.evaluate("img => img.naturalWidth > 0", qr.element_handle()), "the QR code image loads"
    expect(desktop.get_by_test_id("scan-status")).to_have_text("请使用微信扫一扫登录")
    expect(desktop.get_by_test_id("login-code")).to_be_hidden()
    shot(desktop, "desktop-scan-login")
    # The desktop polls while the QR code is shown...
    deadline = time.time() + 10
    while len(polls) < 2:
        assert time.time() < deadline, "the desktop does not poll its ticket"
        desktop.wait_for_timeout(200)
    # ...and stops when the user turns to the typed code instead.
    desktop.get_by_test_id("tab-code").click()
    expect(desktop.get_by_test_id("login-code")).to_be_visible()
    desktop.wait_for_timeout(500)
    seen = len(polls)
    desktop.wait_for_timeout(3500)
    assert len(polls) == seen, "polling goes on with the QR code closed"
    desktop.get_by_test_id("tab-scan").click()
    expect(qr).to_be_visible()

    # The phone scans: WeChat opens the ticket's URL, web authorization runs there.
    fakes.wechat.set_phone_user("o_page_scan_frank")
    phone = new_page(browser, "wechat")
    assert ticket["url"].startswith(PUBLIC_URL + "/auth/wechat/main?"), ticket
    phone.goto(ticket["url"].replace(PUBLIC_URL, shop.url))
    # Nothing happens on the desktop until the phone's user says so.
    confirm = phone.get_by_role("button", name="确认登录")
    expect(confirm).to_be_visible()
    shot(phone, "wechat-phone-scan-confirm")
    desktop.wait_for_timeout(2000)
    expect(desktop.get_by_test_id("scan-status")).to_have_attribute("data-status", "waiting")
    confirm.click()
    expect(phone.locator("body")).to_contain_text("已在电脑上登录")
    shot(phone, "wechat-phone-scan-confirmed")

    # The desktop is in, as the phone's WeChat user.
    expect(desktop.get_by_test_id("chat-input")).to_be_visible()
    token = token_of(desktop)
    shot(desktop, "desktop-scan-logged-in")
    seen = len(polls)
    desktop.wait_for_timeout(3500)
    assert len(polls) == seen, "polling goes on after the login"
    # The ticket is spent (and never answered another browser anyway).
    with urllib.request.urlopen(shop.url + "/api/login/ticket/" + ticket["ticket"], timeout=5) as r:
        assert json.loads(r.read())["status"] == "expired"
    uid = me(shop, token)["uid"]
    # The same user as the phone's WeChat user logging in there.
    fakes.wechat.set_phone_user("o_page_scan_frank")
    phone.goto(shop.url + "/")
    expect(phone.get_by_test_id("chat-input")).to_be_visible()
    assert me(shop, token_of(phone))["uid"] == uid
    assert not desktop.console_errors, desktop.console_errors


def test_desktop_scan_ticket_expiry_offers_a_new_code(shop, browser):
    """An expired ticket (the server's answer, routed here: tickets live 5 minutes) stops the
    polling and offers a new QR code."""
    desktop = new_page(browser, "desktop")
    expire = {"on": True}

    def answer(route):
        if expire["on"] and route.request.method == "GET" and not route.request.url.endswith(".svg"):
            route.fulfill(json={"status": "expired"})
        else:
            route.continue_()
    desktop.route("**/api/login/ticket/*", answer)
    desktop.goto(shop.url + "/")
    status = desktop.get_by_test_id("scan-status")
    expect(status).to_have_attribute("data-status", "expired")
    expect(status).to_have_text("二维码已过期")
    refresh = desktop.get_by_test_id("scan-refresh")
    expect(refresh).to_be_visible()
    shot(desktop, "desktop-scan-expired")
    expire["on"] = False
    with desktop.expect_response(lambda r: r.url.endswith("/api/login/ticket") and r.request.method == "POST"):
        refresh.click()
    expect(status).to_have_attribute("data-status", "waiting")
    expect(refresh).to_be_hidden()


def test_in_wechat_failed_authorization_does_not_loop_and_a_stale_handoff_says_so(shop, browser):
    fakes = shop.fakes
    # The user refuses on WeChat's consent page: back at the callback without a code.
    fakes.wechat.set_phone_user("o_page_gina", refuse=True)
    page = new_page(browser, "wechat")
    authorize = []
    page.on("request", lambda r: authorize.append(r.url) if "/connect/oauth2/authorize" in r.url else None)
    page.goto(shop.url + "/")
    # The page sends the browser to WeChat, which sends it back to the callback without a
    # code: wait for the callback's page (another navigation right now would cut that chain).
    page.wait_for_url(re.compile(r"/auth/wechat/[^/]+/callback"))
    expect(page.locator("body")).to_contain_text("未完成授权")
    assert len(authorize) == 1, authorize
    # Back on the page (a link, the back button): no second automatic try, a button instead.
    page.goto(shop.url + "/")
    expect(page.get_by_test_id("wx-login")).to_be_visible()
    page.wait_for_timeout(1000)
    assert len(authorize) == 1, authorize
    assert page.url.startswith(shop.url), page.url

    # A login handoff that is used up or made up: said, with a way to try again.
    page.goto("about:blank")
    page.goto(shop.url + "/#login=notarealhandoff0123")
    box = page.get_by_test_id("login-handoff")
    expect(box).to_be_visible()
    expect(box).to_contain_text("登录链接已失效")
    assert "#login" not in page.url, page.url
    shot(page, "wechat-phone-login-expired")
    fakes.wechat.set_phone_user("o_page_gina")
    # The WeChat button right below is the way to try again.
    expect(page.get_by_test_id("wx-login")).to_be_visible()
    page.get_by_test_id("wx-login").click()
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    assert not page.console_errors, page.console_errors
