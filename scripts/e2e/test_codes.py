"""Redemption codes (卡密, issue 22 part 1) end to end, on sled and on PostgreSQL: batches made
over HTTP and with the CLI (`--csv` for a card shop), redeemed on the web API, in the web chat
and on the Official Account (wechatpy playing WeChat), 20 users racing for one code, revoked /
expired / unknown codes, the wrong-code limits, the guessing alert, the per-day stats, and the
account sheet's 兑换码 form in Chromium (screenshot in target/e2e-screenshots/, a copy in docs/screenshots/)."""

import csv
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT, Daemon
from fake_wechat import FakeWechat
from test_wechat_mp import MAIN, WeChat

PG_URL = os.environ.get("CHATRELAY_TEST_PG_URL")
ENGINES = ["sled", pytest.param("postgres", marks=pytest.mark.skipif(
    not PG_URL, reason="CHATRELAY_TEST_PG_URL is unset (export CHATRELAY_TEST_PG_URL=$(scripts/pg-up))"))]
SYMBOL = "[2-9A-HJKMNP-TV-Z]"
CODE = re.compile(rf"^{SYMBOL}{{4}}-{SYMBOL}{{4}}-{SYMBOL}{{4}}-{SYMBOL}{{4}}$")
# Mirrors src/codes.rs.
FAILURES_PER_USER, FAILURES_PER_ADDRESS, ALERT_FAILURES = 10, 30, 100


def drop_schema(name):
    if not shutil.which("psql"):
        return
    subprocess.run(["psql", PG_URL, "-qAt", "-c", f'DROP SCHEMA IF EXISTS "{name}" CASCADE'],
                   capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def wechat_api():
    fake = FakeWechat()
    yield fake
    fake.stop()


@pytest.fixture(scope="module", params=ENGINES)
def d(request, upstream, wechat_api):
    schema = None
    storage = None
    if request.param == "postgres":
        schema = "s_e2e_codes_" + secrets.token_hex(5)
        storage = f'backend = "postgres"\nurl = "{PG_URL}"\nschema = "{schema}"\npool_size = 8\n'
    extra = f"""
[[wechat_mp]]
id = "{MAIN['id']}"
app_id = "{MAIN['app_id']}"
app_secret = "secret-main"
token = "{MAIN['token']}"
encoding_aes_key = "{MAIN['aes_key']}"
api_base = "{wechat_api.url}"
passive_wait_ms = 3000
"""
    daemon = Daemon(upstream.base_url, extra_toml=extra, storage_toml=storage, llm_timeout=10).start()
    daemon.engine = request.param
    yield daemon
    assert daemon.stop() == 0, daemon.logs()
    if schema:
        drop_schema(schema)


def call(d, method, path, body=None, token=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(d.url + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def admin(d, method, path, body=None):
    return call(d, method, path, body, token=d.admin_token)


def create_batch(d, count, credits, **more):
    status, body = admin(d, "POST", "/admin/codes", dict(count=count, credits=credits, **more))
    assert status == 200, body
    return body["batch"]["id"], [c["code"] for c in body["codes"]]


def redeem(d, token, code, address=None):
    headers = {"x-forwarded-for": address} if address else None
    return call(d, "POST", "/api/redeem", {"code": code}, token=token, headers=headers)


def web_chat(d, token, text):
    body = {"model": "gpt-fake", "messages": [{"role": "user", "content": text}]}
    status, answer = call(d, "POST", "/v1/chat/completions", body, token=token,
                          headers={"x-chatrelay-client": "web"})
    assert status == 200, answer
    return answer["choices"][0]["message"]["content"]


def batch_codes(d, batch):
    status, body = admin(d, "GET", f"/admin/codes?batch={batch}")
    assert status == 200, body
    return body


def code_entries(d, uid):
    return [e for e in d.user(uid)["ledger"] if e["reference"].startswith("code:")]


def metric(d, name, label=""):
    with urllib.request.urlopen(d.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and label in line)


def today_stats(d):
    status, days = admin(d, "GET", "/admin/stats?days=1")
    assert status == 200, days
    return days[-1]


def test_a_batch_made_over_http_is_redeemed_once_on_the_web_api(d):
    before = today_stats(d)
    batch, codes = create_batch(d, 3, 25, note="shop A")
    assert len(codes) == 3 and len(set(codes)) == 3
    assert all(CODE.match(c) for c in codes), codes
    uid, token = d.new_user("web redeemer")
    other_uid, other = d.new_user("latecomer")
    # However it is typed: lower case, spaces for dashes, padded.
    typed = "  " + codes[0].lower().replace("-", " ") + " "
    status, body = redeem(d, token, typed)
    assert status == 200, body
    assert body["added"] == {"credits": 25}
    assert body["balance"]["paid"] == 25
    assert body["code"] == f"{batch}-1"
    assert d.paid(uid) == 25
    [entry] = code_entries(d, uid)
    assert entry["reference"] == f"code:{batch}-1" and entry["paid_delta"] == 25
    # Again, by the same user and by another: nothing changes.
    status, body = redeem(d, token, codes[0])
    assert (status, body["error"]["code"]) == (409, "already_used"), body
    status, body = redeem(d, other, codes[0])
    assert (status, body["error"]["code"]) == (409, "already_used"), body
    assert (d.paid(uid), d.paid(other_uid)) == (25, 0)
    listed = batch_codes(d, batch)
    assert listed["batch"]["codes"] == {"unused": 2, "used": 1, "revoked": 0, "expired": 0}
    first = listed["codes"][0]
    assert (first["id"], first["status"], first["uid"]) == (f"{batch}-1", "used", uid)
    assert [c["status"] for c in listed["codes"][1:]] == ["unused", "unused"]
    assert not any(c in json.dumps(listed) for c in codes), "a code's text is never shown again"
    # The admin stats count the redemption on its day.
    after = today_stats(d)
    assert after["codes_redeemed"] - before["codes_redeemed"] == 1
    assert after["code_credits"] - before["code_credits"] == 25
    # Refused batches.
    status, body = admin(d, "POST", "/admin/codes", {"count": 2, "plan": "month"})
    assert status == 400 and 'plan "month" is not one of [[plans]] (none configured)' in body["error"], body
    for bad in [{"count": 10_001, "credits": 1}, {"count": 0, "credits": 1}, {"count": 1, "credits": 0},
                {"count": 1, "credits": 1, "expires_at": "2001-01-01"}]:
        status, body = admin(d, "POST", "/admin/codes", bad)
        assert status == 400, (bad, body)
    # Without the admin token: nothing.
    status, _ = call(d, "POST", "/admin/codes", {"count": 1, "credits": 1})
    assert status == 401
    status, _ = call(d, "POST", "/api/redeem", {"code": codes[1]})
    assert status == 401
    assert d.audit()["mismatches"] == []


def test_cli_csv_for_a_card_shop_and_chat_commands_on_two_platforms(d, upstream):
    out = d.cli("codes", "create", "--count", "3", "--credits", "10", "--expires-at", "2099-12-31",
                "--note", "发卡网 A", "--csv").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert out.splitlines()[0] == "code,credits,expires_at,batch"
    assert len(rows) == 3 and all(CODE.match(r["code"]) for r in rows), out
    assert {r["credits"] for r in rows} == {"10"}
    assert {r["expires_at"] for r in rows} == {"2100-01-01T00:00:00+08:00"}, "end of that day, UTC+8"
    batch = rows[0]["batch"]
    calls = len(upstream.requests)

    # The web chat: `/redeem CODE`, free, never reaching the model.
    uid, token = d.new_user("web chatter")
    answer = web_chat(d, token, "/redeem " + rows[0]["code"])
    assert "兑换成功" in answer and "增加 10 额度" in answer, answer
    assert "这个兑换码你已经兑换过了" == web_chat(d, token, "/redeem " + rows[0]["code"])
    assert "用法" in web_chat(d, token, "/redeem")
    assert d.paid(uid) == 10

    # The Official Account: `兑换 CODE` (the second default word), as WeChat delivers it.
    wx = WeChat(d, MAIN)
    openid = "o_redeem_" + secrets.token_hex(4)
    _, reply = wx.send_text(openid, "兑换 " + rows[1]["code"].lower(), timeout=5)
    assert "增加 10 额度" in reply["Content"], reply
    _, reply = wx.send_text(openid, "兑换 " + rows[0]["code"], timeout=5)
    assert reply["Content"] == "这个兑换码已被使用", reply
    found = json.loads(d.cli("--json", "user", "find", openid).stdout)
    mp_uid = found[0]["uid"]
    assert d.paid(mp_uid) == 10
    assert [e["reference"] for e in code_entries(d, mp_uid)] == [f"code:{batch}-2"]
    assert len(upstream.requests) == calls, "redeeming never calls the model"

    listed = list(csv.DictReader(io.StringIO(d.cli("codes", "list", "--batch", batch, "--csv").stdout)))
    assert [(r["id"], r["status"], r["uid"]) for r in listed] == [
        (f"{batch}-1", "used", str(uid)), (f"{batch}-2", "used", str(mp_uid)), (f"{batch}-3", "unused", "")]
    table = d.cli("codes", "list").stdout
    assert batch in table and "发卡网 A" in table, table
    assert "2 used" in d.cli("codes", "list", "--batch", batch).stdout
    revoked = d.cli("codes", "revoke", batch).stdout
    assert f"batch {batch}: 1 unused codes revoked" in revoked, revoked


def test_twenty_concurrent_redemptions_of_one_code_credit_once(d):
    _, [code] = create_batch(d, 1, 30)
    users = [d.new_user(f"racer {i}") for i in range(20)]
    start = threading.Barrier(len(users))

    def race(i):
        start.wait()
        return redeem(d, users[i][1], code, address=f"10.20.0.{i + 1}")

    with ThreadPoolExecutor(len(users)) as pool:
        results = list(pool.map(race, range(len(users))))
    statuses = sorted(s for s, _ in results)
    assert statuses == [200] + [409] * 19, results
    assert all(b["error"]["code"] == "already_used" for s, b in results if s == 409)
    paid = [d.paid(uid) for uid, _ in users]
    assert sorted(paid) == [0] * 19 + [30], paid
    entries = [e for uid, _ in users for e in code_entries(d, uid)]
    assert len(entries) == 1 and entries[0]["paid_delta"] == 30, entries
    assert d.audit()["mismatches"] == []


def test_revoked_expired_and_unknown_codes_change_nothing(d):
    batch, codes = create_batch(d, 2, 5)
    winner, winner_token = d.new_user("winner")
    assert redeem(d, winner_token, codes[0])[0] == 200
    assert "1 unused codes revoked" in d.cli("codes", "revoke", str(batch)).stdout
    uid, token = d.new_user("unlucky")
    status, body = redeem(d, token, codes[1], address="10.30.0.1")
    assert (status, body["error"]["code"]) == (409, "revoked"), body
    assert "作废" in body["error"]["message"]
    status, body = redeem(d, token, codes[0], address="10.30.0.1")
    assert (status, body["error"]["code"]) == (409, "already_used"), body
    # Revoking again revokes nothing; the used code stays used.
    assert admin(d, "POST", f"/admin/codes/{batch}/revoke") == (200, {"batch": batch, "revoked": 0})
    assert admin(d, "POST", "/admin/codes/987654321/revoke")[0] == 404
    assert [c["status"] for c in batch_codes(d, batch)["codes"]] == ["used", "revoked"]

    soon = int(time.time()) + 2
    expiring, [late] = create_batch(d, 1, 5, expires_at=soon)
    time.sleep(max(0.0, soon - time.time()) + 0.3)
    status, body = redeem(d, token, late, address="10.30.0.1")
    assert (status, body["error"]["code"]) == (410, "expired"), body
    assert batch_codes(d, expiring)["codes"][0]["status"] == "expired"

    status, body = redeem(d, token, "2222-3333-4444-5555", address="10.30.0.1")
    assert (status, body["error"]["code"]) == (404, "unknown_code"), body
    status, body = redeem(d, token, "not-a-code", address="10.30.0.1")
    assert (status, body["error"]["code"]) == (400, "malformed"), body
    assert d.paid(uid) == 0 and code_entries(d, uid) == []
    assert d.paid(winner) == 5


def test_brute_force_is_limited_per_user_and_address_without_locking_out_others(d):
    _, right = create_batch(d, 3, 7)
    failures = metric(d, "chatrelay_code_redeem_failures_total", 'reason="unknown_code"')
    throttled = metric(d, "chatrelay_code_redeem_failures_total", 'reason="throttled"')

    def guess():
        return "-".join("".join(secrets.choice("23456789ABCDEFGHJKMNPQRSTVWXYZ") for _ in range(4))
                        for _ in range(4))

    # Per user: the eleventh try is refused unchecked, even with a right code.
    a_uid, a = d.new_user("guesser")
    for _ in range(FAILURES_PER_USER):
        assert redeem(d, a, guess(), address="10.40.0.1")[0] == 404
    status, body = redeem(d, a, right[0], address="10.40.9.9")
    assert (status, body["error"]["code"]) == (429, "throttled"), body
    assert d.paid(a_uid) == 0
    # Another user behind the same address is not locked out.
    b_uid, b = d.new_user("neighbour")
    assert redeem(d, b, right[0], address="10.40.0.1")[0] == 200
    assert d.paid(b_uid) == 7

    # Per address: users sharing one fill its limit; a user with a right code there waits,
    # the same user elsewhere redeems.
    sent = 0
    while sent < FAILURES_PER_ADDRESS:
        _, t = d.new_user(f"shared {sent}")
        for _ in range(min(FAILURES_PER_USER - 1, FAILURES_PER_ADDRESS - sent)):
            assert redeem(d, t, guess(), address="10.41.0.1")[0] == 404
            sent += 1
    c_uid, c = d.new_user("behind the nat")
    assert redeem(d, c, right[1], address="10.41.0.1")[0] == 429
    assert redeem(d, c, right[1], address="10.42.0.1")[0] == 200
    assert d.paid(c_uid) == 7

    # Every failure is counted in /metrics.
    assert metric(d, "chatrelay_code_redeem_failures_total", 'reason="unknown_code"') - failures == \
        FAILURES_PER_USER + FAILURES_PER_ADDRESS
    assert metric(d, "chatrelay_code_redeem_failures_total", 'reason="throttled"') - throttled == 2

    # Guessing from many users and addresses alerts operators, once.
    i = 0
    while metric(d, "chatrelay_code_guessing_alerts_total") == 0:
        i += 1
        assert i <= ALERT_FAILURES // (FAILURES_PER_USER - 1) + 2, "no alert"
        _, t = d.new_user(f"botnet {i}")
        for _ in range(FAILURES_PER_USER - 1):
            redeem(d, t, guess(), address=f"10.50.{i}.1")
    assert any("兑换码疑似被猜测" in line and "chatrelay::alert" in line for line in d.log_lines()), \
        d.logs()
    _, t = d.new_user("one more")
    redeem(d, t, guess(), address="10.51.0.1")
    assert metric(d, "chatrelay_code_guessing_alerts_total") == 1
    # The right code of the third slot still works for a user who never failed.
    ok_uid, ok = d.new_user("honest")
    assert redeem(d, ok, right[2], address="10.52.0.1")[0] == 200
    assert d.audit()["mismatches"] == []


def test_the_account_sheet_redeems_a_code(d):
    if d.engine != "sled":
        pytest.skip("the page is the same on both engines; one screenshot")
    from playwright.sync_api import expect, sync_playwright
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("browser tests need Debian's chromium: apt-get install chromium")
    _, codes = create_batch(d, 2, 50)
    uid, token = d.new_user("页面用户")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_context(viewport={"width": 390, "height": 844}, locale="zh-CN").new_page()
        page.set_default_timeout(15_000)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(d.url + "/")
        if not page.get_by_test_id("token-input").is_visible():
            page.locator("#token-section summary").click()  # folded when codes come from the OA
        page.get_by_test_id("token-input").fill(token)
        page.get_by_test_id("token-submit").click()
        expect(page.get_by_test_id("chat-input")).to_be_visible()
        page.get_by_test_id("account-open").click()
        expect(page.get_by_test_id("account-panel")).to_be_visible()
        form = page.get_by_test_id("redeem-form")
        expect(form).to_contain_text("兑换")
        # A used code first: the server's reason is shown.
        assert redeem(d, d.new_user("first")[1], codes[1])[0] == 200
        page.get_by_test_id("redeem-code").fill(codes[1])
        page.get_by_test_id("redeem-submit").click()
        expect(page.get_by_test_id("redeem-result")).to_have_text("这个兑换码已被使用")
        page.get_by_test_id("redeem-code").fill(codes[0].lower())
        page.get_by_test_id("redeem-submit").click()
        result = page.get_by_test_id("redeem-result")
        expect(result).to_contain_text("兑换成功：增加 50 额度")
        expect(page.get_by_test_id("balance-paid")).to_have_text("50")
        expect(page.get_by_test_id("redeem-code")).to_have_value("")
        shots = ROOT / "target" / "e2e-screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "phone-redeem.png"))
        browser.close()
    assert errors == [], errors
    assert d.paid(uid) == 50
