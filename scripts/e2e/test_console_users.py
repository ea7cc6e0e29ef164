"""The console's users page and change log in a real browser (Playwright on Debian's Chromium,
the real binary): find a user by a platform identity and by a token's hash prefix, open their
page, grant credits with a reason (the ledger shows it; a blank reason is refused), take
credits back, ban and unban with a reason, page the ledger, revoke a token (the official
`openai` client then gets 401 on /v1), and the change log lists every change, the console's
and the CLI's, with the address and the reason. Screenshots (phone 390, desktop 1280) go to
target/e2e-screenshots/console-users-*.png and console-audit-*.png."""

import json

import openai
import pytest
import requests
from playwright.sync_api import expect

from conftest import MODEL, Daemon
from test_console import log_in, shot
from test_operations import MP, mp_send
from test_web import DESKTOP, PHONE, browser, new_page  # noqa: F401 (the browser fixture)

KEY = "mp:main:o6_e2e_console_alice"


@pytest.fixture(scope="module")
def console(upstream):
    plan = '\n[[plans]]\nid = "month"\nname = "月卡"\ndaily_credits = 50\ndays = 30\n'
    # An Official Account (plaintext mode) for a platform conversation.
    mp = (f'\n[[wechat_mp]]\nid = "{MP["id"]}"\napp_id = "{MP["app_id"]}"\ntoken = "{MP["token"]}"\n'
          "passive_wait_ms = 3000\n")
    d = Daemon(upstream.base_url, extra_toml="\n[console]\nchange_log_days = 30\n" + plan + mp).start()
    yield d
    code = d.stop()
    assert code == 0, d.logs()


def admin(d, method, path, body=None):
    r = requests.request(method, d.url + path, json=body, timeout=10,
                         headers={"Authorization": f"Bearer {d.admin_token}"})
    return r


def accept_next_dialog(page, seen):
    page.once("dialog", lambda dialog: (seen.append(dialog.message), dialog.accept()))


def test_users_page_and_change_log(console, browser):
    d = console
    uid, token = d.new_user("alice")
    d.new_user("bob")
    r = admin(d, "POST", f"/admin/users/{uid}/identities", {"key": KEY})
    assert r.status_code == 200, r.text
    user_client = openai.OpenAI(base_url=d.url + "/v1", api_key=token, max_retries=0)
    assert user_client.models.list().data, "the token works before it is revoked"

    # A grant without a reason is refused by the API (the CLI cannot send one without it).
    r = admin(d, "POST", f"/admin/users/{uid}/grant", {"credits": 5, "reason": "  "})
    assert r.status_code == 400 and "reason" in r.json()["error"], r.text
    r = admin(d, "POST", f"/admin/users/{uid}/grant", {"credits": 5})
    assert r.status_code == 400 and "reason" in r.json()["error"], r.text

    page = new_page(browser, DESKTOP)
    log_in(page, d, d.admin_token)
    expect(page.locator("#dashboard")).to_be_visible()
    page.click("#nav a[data-page='users']")
    # The listing: every user, newest activity first.
    expect(page.locator("#users-info")).to_have_text("共 2 个用户")
    expect(page.locator("#users-table")).to_contain_text("bob")
    shot(page, "console-users-list-desktop")

    # Found by part of the platform identity.
    page.fill("#users-q", "o6_e2e_console")
    page.click("#users-search button[type=submit]")
    rows = page.locator("#users-table tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(1)).to_contain_text(KEY)
    expect(rows.nth(1)).to_contain_text("alice")
    page.click(f"#users-table a[href='#/users/{uid}']")
    expect(page.locator("#user-title")).to_contain_text("alice")
    expect(page.locator("#identities-table")).to_contain_text(KEY)
    expect(page.locator("#user-balances .card[data-key='paid'] .value")).to_have_text("0")

    # Grant with a reason: the balance and the ledger show it.
    page.fill("#grant-credits", "25")
    page.fill("#grant-reason", "客服补偿 #17")
    page.click("#grant-form button[type=submit]")
    expect(page.locator("#user-balances .card[data-key='paid'] .value")).to_have_text("25")
    first = page.locator("#ledger-table tr").nth(1)
    expect(first).to_contain_text("客服补偿 #17")
    expect(first).to_contain_text("+25")
    assert d.paid(uid) == 25
    # A blank reason gets past the browser's `required` but not the server.
    page.fill("#grant-credits", "3")
    page.fill("#grant-reason", "   ")
    page.click("#grant-form button[type=submit]")
    expect(page.locator("#grant-form-error")).to_contain_text("a reason is required")
    assert d.paid(uid) == 25

    # Take back, after a confirmation.
    seen = []
    accept_next_dialog(page, seen)
    page.fill("#revoke-credits", "10")
    page.fill("#revoke-reason", "误发")
    page.click("#revoke-form button[type=submit]")
    expect(page.locator("#user-balances .card[data-key='paid'] .value")).to_have_text("15")
    expect(page.locator("#ledger-table tr").nth(1)).to_contain_text("-10")
    assert seen and "10" in seen[0], seen
    assert d.paid(uid) == 15

    # Ban with a reason (confirmed), then unban with one.
    accept_next_dialog(page, seen)
    page.fill("#ban-reason", "刷单")
    page.click("#ban-form button[type=submit]")
    expect(page.locator("#user-title")).to_contain_text("已封禁")
    assert d.user(uid)["user"]["banned"] is True
    assert d.user(uid)["user"]["ban_reason"] == "刷单"
    page.fill("#ban-reason", "误封，已核实")
    page.click("#ban-form button[type=submit]")
    expect(page.locator("#user-title")).to_contain_text("正常")
    assert d.user(uid)["user"]["banned"] is False

    # Groups: add two, remove one.
    for group in ["vip", "beta"]:
        page.fill("#group-form input", group)
        page.click("#group-form button[type=submit]")
        expect(page.locator("#user-groups")).to_contain_text(group)
    page.locator("#user-groups .chip", has_text="beta").locator("button").click()
    expect(page.locator("#user-groups")).not_to_contain_text("beta")
    assert d.user(uid)["user"]["groups"] == ["vip"]

    # Identities: link a second one, unlink it (confirmed); a malformed key is refused.
    page.fill("#link-form input", "tg:main:777001")
    page.click("#link-form button[type=submit]")
    expect(page.locator("#identities-table")).to_contain_text("tg:main:777001")
    accept_next_dialog(page, seen)
    page.locator("#identities-table tr", has_text="tg:main:777001").locator("button").click()
    expect(page.locator("#identities-table")).not_to_contain_text("tg:main:777001")
    assert d.user(uid)["identities"] == [KEY]
    page.fill("#link-form input", "no-colon")
    page.click("#link-form button[type=submit]")
    expect(page.locator("#link-form-error")).not_to_be_empty()

    # The ledger pages back: 22 more grants make two pages of 20.
    for i in range(22):
        assert admin(d, "POST", f"/admin/users/{uid}/grant",
                     {"credits": 1, "reason": f"batch {i}"}).status_code == 200
    page.reload()
    expect(page.locator("#ledger-table tr")).to_have_count(21)
    expect(page.locator("#ledger-table tr").nth(1)).to_contain_text("batch 21")
    page.click("#ledger-older")
    expect(page.locator("#ledger-table tr").nth(1)).to_contain_text("batch 1")
    # 24 entries: 4 on the second page (batch 1, batch 0, the take-back, the grant).
    expect(page.locator("#ledger-table tr")).to_have_count(5)
    expect(page.locator("#ledger-table")).to_contain_text("客服补偿 #17")
    expect(page.locator("#ledger-older")).to_be_disabled()
    # An answer through /v1: the usage log and the ledger show it.
    user_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    page.reload()
    expect(page.locator("#usage-table tr").nth(1)).to_contain_text(MODEL)
    expect(page.locator("#ledger-table tr").nth(1)).to_contain_text("消费")
    shot(page, "console-users-user-desktop")

    # Found by the token's hash prefix too (the page shows it; the token is never shown).
    prefix = d.user(uid)["tokens"][0]["hash_prefix"]
    expect(page.locator("#tokens-table")).to_contain_text(prefix)
    assert token not in page.content()
    r = admin(d, "GET", f"/admin/users?q={prefix[:8]}")
    assert [u["uid"] for u in r.json()] == [uid], r.text

    # Revoke the token (confirmed): /v1 refuses it at once.
    accept_next_dialog(page, seen)
    page.click(f"#tokens-table button[data-hash='{prefix}']")
    expect(page.locator("#tokens-table")).to_contain_text("已吊销")
    with pytest.raises(openai.AuthenticationError):
        user_client.models.list()

    # A change made with the CLI.
    d.cli("grant", str(uid), "5", "--reason", "cli grant from the terminal")

    # The change log: the console's changes and the CLI's, newest first, with address and reason.
    page.click("#nav a[data-page='changes']")
    log = page.locator("#changes-table")
    expect(log).to_contain_text("cli grant from the terminal")
    newest = page.locator("#changes-table tr").nth(1)
    expect(newest).to_contain_text("令牌 / CLI")
    expect(newest).to_contain_text(f"/admin/users/{uid}/grant")
    for text in ["客服补偿 #17", "误发", "刷单", "误封，已核实", "/admin/tokens/revoke", "127.0.0.1", "控制台",
                 f"key={KEY}"]:
        expect(log).to_contain_text(text)
    # The refused grant is there, with its status.
    expect(log).to_contain_text("400")
    expect(log).to_contain_text("error=a reason is required")
    expect(log).to_contain_text("/admin/users")
    shot(page, "console-audit-desktop")
    # A change about a user links to the user's page.
    page.locator("#changes-table a.user-link").first.click()
    expect(page.locator("#user-title")).to_contain_text("alice")
    page.go_back()
    expect(page.locator("#changes-table")).to_contain_text("cli grant from the terminal")
    page.click("#lang")
    expect(page.locator("#nav a[data-page='changes']")).to_have_text("Change log")
    page.click("#lang")

    # The CLI lists the same records.
    changes = json.loads(d.cli("--json", "changes", "--limit", "500").stdout)["changes"]
    by_reason = {c["reason"]: c for c in changes if c["reason"]}
    assert by_reason["客服补偿 #17"]["actor"] == "console"
    assert by_reason["客服补偿 #17"]["address"] == "127.0.0.1"
    assert by_reason["客服补偿 #17"]["summary"]["credits"] == 25
    assert by_reason["cli grant from the terminal"]["actor"] == "token"
    revoke = [c for c in changes if c["path"] == "/admin/tokens/revoke"]
    assert revoke and revoke[0]["actor"] == "console" and revoke[0]["summary"]["hash_prefix"] == prefix
    assert token not in json.dumps(changes)
    human = d.cli("changes", "--limit", "5").stdout
    assert "cli grant from the terminal" in human and "older: --before" in human
    assert page.console_errors == []
    page.context.close()


def test_phone_size(console, browser):
    d = console
    uid, token = d.new_user("phone-user")
    d.cli("grant", str(uid), "9", "--reason", "phone check")
    # A membership plan (a plan code redeemed with the user's token) shows on the user's page.
    r = admin(d, "POST", "/admin/codes", {"count": 1, "plan": "month"})
    assert r.status_code == 200, r.text
    r = requests.post(d.url + "/api/redeem", json={"code": r.json()["codes"][0]["code"]},
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    page = new_page(browser, PHONE)
    log_in(page, d, d.admin_token)
    expect(page.locator("#dashboard")).to_be_visible()
    for hash_, ready, name in [
        ("#/users", "#users-table tr >> nth=1", "console-users-list-phone"),
        (f"#/users/{uid}", "#ledger-table tr >> nth=1", "console-users-user-phone"),
        ("#/changes", "#changes-table tr >> nth=1", "console-audit-phone"),
    ]:
        page.evaluate("h => { location.hash = h; }", hash_)
        expect(page.locator(ready)).to_be_visible()
        # Nothing wider than the phone but the scrolling tables.
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"], (hash_, width)
        shot(page, name)
        if hash_ == f"#/users/{uid}":
            plan = page.locator("#user-balances .card[data-key='plan']")
            expect(plan).to_contain_text("月卡，每日 50")
            expect(plan).to_contain_text("剩 30 天")
    assert page.console_errors == []
    page.context.close()


def test_create_a_user_and_a_token_and_see_conversations(console, browser):
    """What `admin user create` and `admin token create` do, from the console: the new token is
    shown once (the server keeps its hash) and works with the official client; the user's
    recent platform conversation is on their page, as `admin user show` has it."""
    d = console
    page = new_page(browser, PHONE)
    log_in(page, d, d.admin_token)
    page.click("#nav a[data-page='users']")
    page.fill("#new-user-name", "carol")
    page.click("#new-user button[type=submit]")
    expect(page.locator("#user-title")).to_contain_text("carol")
    uid = int(page.url.rsplit("/", 1)[1])
    assert d.user(uid)["user"]["name"] == "carol"
    expect(page.locator("#user-conversations")).to_contain_text("无")

    page.fill("#token-form input[name=label]", "carol's app")
    page.fill("#token-form input[name=days]", "30")
    page.click("#token-form button[type=submit]")
    token = page.locator("#new-token").inner_text()
    assert token.startswith("sk-cr-"), token
    shown = d.user(uid)["tokens"]
    assert len(shown) == 1 and shown[0]["label"] == "carol's app" and shown[0]["expires_at_ms"], shown
    client = openai.OpenAI(base_url=d.url + "/v1", api_key=token, max_retries=0)
    assert client.models.list().data
    # Shown once: the next visit of the page has only its hash.
    page.reload()
    expect(page.locator("#tokens-table")).to_contain_text(shown[0]["hash_prefix"])
    expect(page.locator("#new-token")).to_have_count(0)
    # An empty name is refused by the API, and said so.
    page.goto(d.url + "/console#/users")
    page.fill("#new-user-name", " ")
    page.click("#new-user button[type=submit]")
    expect(page.locator("#new-user-error")).not_to_be_empty()

    # A platform conversation (the engine's memory of an identity) shows on the user's page.
    openid = "o6_console_carol"
    key = f"mp:{MP['id']}:{openid}"
    assert admin(d, "POST", f"/admin/users/{uid}/identities", {"key": key}).status_code == 200
    grant = admin(d, "POST", f"/admin/users/{uid}/grant", {"credits": 20, "reason": "test"})
    assert grant.status_code == 200, grant.text
    assert mp_send(d, openid, "你好，控制台"), "answered"
    page.goto(f"{d.url}/console#/users/{uid}")
    expect(page.locator("#user-conversations")).to_contain_text(key)
    expect(page.locator("#user-conversations")).to_contain_text("你好，控制台")
    shot(page, "console-users-token-phone")
    assert page.console_errors == []
    page.context.close()

