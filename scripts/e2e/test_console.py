"""The operators' console (/console) in a real browser: Playwright drives Debian's Chromium
against the real binary. Login with the admin token (a wrong one refused), the dashboard's
figures equal the admin API's, changes need the CSRF token, logout ends the session, a new
admin token (config reload) ends older sessions, failed logins are limited per address.
Screenshots (phone and desktop) go to target/e2e-screenshots/console-*.png."""

import json
import re
import signal
import time

import openai
import pytest
import requests
from playwright.sync_api import expect

from conftest import MODEL, ROOT, Daemon
from test_web import DESKTOP, PHONE, browser, new_page  # noqa: F401 (the browser fixture)

# Like the other browser tests: written under target/ (copied to docs/screenshots/ by hand
# after a look, so that a test run never changes tracked files).
SHOTS = ROOT / "target" / "e2e-screenshots"
COOKIE = "chatrelay_console"
SUMMED = ["messages_total", "credits_charged", "llm_cost_fen", "revenue_fen", "orders_paid",
          "refunds_fen", "codes_redeemed", "code_credits", "plans_sold", "plan_sales_fen"]


@pytest.fixture(scope="module")
def console(upstream):
    d = Daemon(upstream.base_url, extra_toml="\n[console]\nsession_hours = 2\n").start()
    # Some traffic, so that the figures are not all zero.
    _, token = d.new_user("console-user", credits=100)
    client = openai.OpenAI(base_url=d.url + "/v1", api_key=token, max_retries=0)
    for i in range(3):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"hi {i}"}])
    # One as the web page sends it (counted as the web platform).
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "from the page"}],
                                   extra_headers={"X-Chatrelay-Client": "web"})
    yield d
    code = d.stop()
    assert code == 0, d.logs()


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def bearer_stats(d, days):
    r = requests.get(f"{d.url}/admin/stats", params={"days": days},
                     headers={"Authorization": f"Bearer {d.admin_token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def session_cookie(page):
    found = [c for c in page.context.cookies() if c["name"] == COOKIE]
    assert len(found) == 1, page.context.cookies()
    return found[0]


def log_in(page, d, token):
    page.goto(d.url + "/console")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")


def fetch(page, method, path, csrf=None):
    """A request from the page (with its cookie), as the console's own script makes them."""
    return page.evaluate(
        """async ([method, path, csrf]) => {
            const headers = csrf ? {"X-CSRF-Token": csrf} : {};
            const r = await fetch(path, {method, headers, credentials: "same-origin"});
            return r.status;
        }""", [method, path, csrf])


def test_login_dashboard_csrf_and_logout(console, browser):
    d = console
    page = new_page(browser, DESKTOP)
    page.goto(d.url + "/console")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("h1")).to_have_text("chatrelay 控制台")  # Chinese by default
    shot(page, "console-login-desktop")

    # A wrong token is refused, and no session is made.
    log_in(page, d, "not-the-admin-token")
    expect(page.locator("#login-error")).to_have_text("令牌错误")
    expect(page.locator("#dashboard")).to_be_hidden()
    assert not [c for c in page.context.cookies() if c["name"] == COOKIE]

    log_in(page, d, d.admin_token)
    expect(page.locator("#dashboard")).to_be_visible()
    c = session_cookie(page)
    assert c["httpOnly"] and c["sameSite"] == "Strict" and c["path"] == "/"
    assert not c["secure"], "no https public_url: the cookie works over http"
    assert 2 * 3600 - 60 < c["expires"] - time.time() <= 2 * 3600, "console.session_hours = 2"

    # Each period's figures are the admin API's (fetched with the bearer token, like the CLI).
    for days, label in [(30, "30 天"), (7, "7 天"), (1, "今天")]:
        page.click(f".periods button[data-days='{days}']")
        expect(page.locator(f".periods button[data-days='{days}']")).to_have_class(re.compile("on"))
        stats = bearer_stats(d, days)
        assert len(stats) == days
        # What `chatrelay admin stats` prints is the same data.
        assert json.loads(d.cli("--json", "stats", "--days", str(days)).stdout) == stats
        first, last = stats[0]["date"], stats[-1]["date"]
        expect(page.locator("#range")).to_contain_text(last)
        if days > 1:
            expect(page.locator("#range")).to_contain_text(first)
        for key in SUMMED:
            want = sum(day.get(key, 0) for day in stats)
            expect(page.locator(f".card[data-key='{key}']")).to_have_attribute("data-value", str(want))
        peak = max(day["active_users"] for day in stats)
        expect(page.locator(".card[data-key='active_users']")).to_have_attribute("data-value", str(peak))
        total = sum(day["messages_total"] for day in stats)
        assert total >= 3, stats
        expect(page.locator(".card[data-key='messages_total'] .value")).to_have_text(str(total))
        # The SVG chart's bars add up to the messages by platform.
        bars = page.locator("#chart svg rect")
        drawn = sum(int(bars.nth(i).get_attribute("data-count")) for i in range(bars.count()))
        by_platform = sum(n for day in stats for outcomes in day["messages"].values() for n in outcomes.values())
        assert drawn == by_platform and drawn > 0
        # The legend names the platforms in the console's language.
        expect(page.locator("#chart .legend")).to_contain_text("网页")
        expect(page.locator("#chart .legend")).to_contain_text("API")
        expect(page.locator("#days tr")).to_have_count(days + 1)

    # Upstream health, as /admin/upstreams gives it.
    ups = requests.get(f"{d.url}/admin/upstreams", headers={"Authorization": f"Bearer {d.admin_token}"},
                       timeout=10).json()
    expect(page.locator("#upstreams tr")).to_have_count(len(ups) + 1)
    expect(page.locator("#upstreams")).to_contain_text(ups[0]["id"])
    page.click(".periods button[data-days='7']")
    expect(page.locator("#days tr")).to_have_count(8)
    shot(page, "console-dashboard-desktop")

    # English, and back.
    page.click("#lang")
    expect(page.locator("h1")).to_have_text("chatrelay console")
    expect(page.locator(".card[data-key='messages_total'] .label")).to_have_text("Messages")
    shot(page, "console-dashboard-desktop-en")
    page.click("#lang")
    expect(page.locator("h1")).to_have_text("chatrelay 控制台")

    # A change with the cookie but without the CSRF token is refused; with it, it works.
    assert fetch(page, "GET", "/admin/upstreams") == 200
    assert fetch(page, "POST", "/admin/reload") == 403
    assert fetch(page, "POST", "/admin/reload", "wrong-csrf") == 403
    csrf = page.evaluate("async () => (await (await fetch('/console/api/session')).json()).csrf")
    assert fetch(page, "POST", "/admin/reload", csrf) == 200
    # Logout needs it too.
    assert fetch(page, "POST", "/console/api/logout") == 403

    # Logout: the old cookie no longer opens anything.
    cookie = session_cookie(page)["value"]
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert not [c for c in page.context.cookies() if c["name"] == COOKIE]
    jar = {COOKIE: cookie}
    assert requests.get(f"{d.url}/admin/stats", cookies=jar, timeout=10).status_code == 401
    assert requests.get(f"{d.url}/console/api/session", cookies=jar, timeout=10).status_code == 401
    assert page.console_errors == []
    page.context.close()


def test_phone_size(console, browser):
    d = console
    page = new_page(browser, PHONE)
    page.goto(d.url + "/console")
    expect(page.locator("#login")).to_be_visible()
    shot(page, "console-login-phone")
    log_in(page, d, d.admin_token)
    expect(page.locator(".card[data-key='messages_total']")).to_be_visible()
    # Nothing wider than the phone but the scrolling tables.
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    page.click(".periods button[data-days='7']")
    expect(page.locator("#days tr")).to_have_count(8)
    shot(page, "console-dashboard-phone")
    assert page.console_errors == []
    page.context.close()


def test_a_new_admin_token_ends_older_sessions(console, browser):
    d = console
    page = new_page(browser, DESKTOP)
    log_in(page, d, d.admin_token)
    expect(page.locator("#dashboard")).to_be_visible()
    jar = {COOKIE: session_cookie(page)["value"]}
    assert requests.get(f"{d.url}/admin/stats", cookies=jar, timeout=10).status_code == 200

    old, new = d.admin_token, "e2e-admin-token-rotated-987654"
    d.config.write_text(d.config.read_text().replace(old, new))
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 5
    while time.time() < deadline:
        r = requests.get(f"{d.url}/admin/upstreams", headers={"Authorization": f"Bearer {new}"}, timeout=5)
        if r.status_code == 200:
            break
        time.sleep(0.05)
    assert r.status_code == 200, d.logs()
    d.admin_token = new

    assert requests.get(f"{d.url}/admin/stats", cookies=jar, timeout=10).status_code == 401
    assert requests.get(f"{d.url}/console/api/session", cookies=jar, timeout=10).status_code == 401
    # The page notices at its next call and asks for a login again; the new token works.
    page.click(".periods button[data-days='7']")
    expect(page.locator("#login")).to_be_visible()
    log_in(page, d, new)
    expect(page.locator("#dashboard")).to_be_visible()
    page.context.close()


def test_failed_logins_are_limited_per_address(console):
    d = console
    login = f"{d.url}/console/api/login"
    # The first test's wrong token counts too: 9 more wrong ones reach the limit of 10.
    for _ in range(9):
        assert requests.post(login, json={"token": "wrong"}, timeout=5).status_code == 401
    # Now even the right token waits: a guesser cannot tell it found it.
    r = requests.post(login, json={"token": d.admin_token}, timeout=5)
    assert r.status_code == 429, r.text
    assert "Set-Cookie" not in r.headers
    assert requests.post(login, data=b"not json", timeout=5).status_code in (400, 429)
