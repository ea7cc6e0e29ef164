"""The usage log (issue 22, part 3): every metered answer — from the official `openai` client on
`/v1`, the web page's client, and a WeChat Official Account message (wechatpy-signed, through
the fake WeChat) — is listed by `GET /api/usage` and `chatrelay admin user usage` with the
credits it was charged, and the log's sum matches the ledger's usage debits (the admin ledger
view). Paging, limits, and privacy (a token reads only its own user's log). On both storage
engines: sled, and PostgreSQL when CHATRELAY_TEST_PG_URL is set (scripts/pg-up).

A Playwright check opens the web page's account sheet, sees the 用量明细 list and loads more, and
saves target/e2e-screenshots/phone-usage.png (a copy is in docs/screenshots/)."""

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import COST, MODEL, ROOT, Daemon
from fake_openai import ANSWER, USAGE
from fake_wechat import FakeWechat
from test_wechat_mp import WeChat

PG_URL = os.environ.get("CHATRELAY_TEST_PG_URL")
MP = dict(id="usage", app_id="wxusage00000000001", token="e2e-token-usage", aes_key=None)
FREE_DAILY = 4
ENGINES = ["sled", pytest.param("postgres", marks=pytest.mark.skipif(
    not PG_URL, reason="CHATRELAY_TEST_PG_URL is unset (export it from scripts/pg-up)"))]


def mp_toml(wechat_api):
    return f"""
[[wechat_mp]]
id = "{MP['id']}"
app_id = "{MP['app_id']}"
app_secret = "secret-usage"
token = "{MP['token']}"
api_base = "{wechat_api.url}"
passive_wait_ms = 3000
"""


def drop_schema(name):
    if shutil.which("psql"):
        subprocess.run(["psql", PG_URL, "-qAt", "-c", f'DROP SCHEMA IF EXISTS "{name}" CASCADE'],
                       capture_output=True, text=True, timeout=30)


@pytest.fixture(params=ENGINES)
def usage_daemon(request, upstream):
    wechat_api = FakeWechat()
    schema = None
    storage = None
    if request.param == "postgres":
        schema = "s_e2e_usage_" + secrets.token_hex(5)
        storage = f'backend = "postgres"\nurl = "{PG_URL}"\nschema = "{schema}"\n'
    d = Daemon(upstream.base_url, extra_toml=mp_toml(wechat_api), free_daily=FREE_DAILY,
               llm_timeout=10, storage_toml=storage).start()
    d.engine = request.param
    yield d
    code = d.stop()
    wechat_api.stop()
    if schema:
        drop_schema(schema)
    assert code == 0, d.logs()


def get(d, path, token):
    """GET with a bearer token: (status, JSON)."""
    req = urllib.request.Request(d.url + path, headers={"authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def whole_log(d, token, limit=3):
    """Every record of the token's usage log, page by page (`limit` a page); the pages seen."""
    records, before, pages = [], None, 0
    while True:
        path = f"/api/usage?limit={limit}" + (f"&before={before}" if before else "")
        status, page = get(d, path, token)
        assert status == 200, page
        assert len(page["data"]) <= limit
        records += page["data"]
        pages += 1
        assert page["has_more"] == (page["next_before"] is not None)
        if not page["has_more"]:
            return records, pages
        before = page["next_before"]


def usage_debits(d, uid):
    """What the ledger's usage entries charged (admin ledger view)."""
    ledger = json.loads(d.cli("--json", "user", "show", str(uid), "--ledger", "100000").stdout)["ledger"]
    return sum(-(e["free_delta"] + e["paid_delta"]) for e in ledger if e["kind"] == "usage"), ledger


def web_chat(d, token, content):
    """The web page's own request: `/v1` streamed, marked as the page's client."""
    body = json.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": content}]}).encode()
    req = urllib.request.Request(d.url + "/v1/chat/completions", data=body, method="POST", headers={
        "authorization": f"Bearer {token}", "content-type": "application/json",
        "x-chatrelay-client": "web"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    assert "[DONE]" in text, text


def test_every_answer_is_logged_and_the_log_matches_the_ledger(usage_daemon, upstream):
    d = usage_daemon
    uid, token = d.new_user("alice", credits=20)
    other_uid, other_token = d.new_user("bob", credits=5)

    # Two answers with the official client (one streamed), one as the web page asks.
    client = openai.OpenAI(base_url=d.url + "/v1", api_key=token, max_retries=0)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one"}])
    assert r.choices[0].message.content == ANSWER
    chunks = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "two"}],
                                            stream=True, stream_options={"include_usage": True})
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    web_chat(d, token, "three")
    # Bob asks once: his record is his alone.
    bob = openai.OpenAI(base_url=d.url + "/v1", api_key=other_token, max_retries=0)
    bob.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "bob"}])

    # Alice's Official Account identity, linked to her user, asks twice through WeChat.
    openid = "o_usage_" + secrets.token_hex(4)
    d.cli("user", "link", str(uid), f"mp:{MP['id']}:{openid}")
    wx = WeChat(d, MP)
    for text in ["four", "five"]:
        _, reply = wx.send_text(openid, text, tries=1, timeout=10)
        assert reply and ANSWER in reply["Content"], reply

    records, pages = whole_log(d, token, limit=2)
    assert len(records) == 5, records
    assert pages == 3
    # Newest first, each once.
    keys = [(rec["at_ms"], rec["id"]) for rec in records]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == 5
    assert sorted(rec["platform"] for rec in records) == ["api", "api", "mp", "mp", "web"]
    for rec in records:
        assert rec["model"] == MODEL and rec["outcome"] == "answered", rec
        assert rec["credits"]["total"] == COST, rec
        assert rec["credits"]["total"] == rec["credits"]["free"] + rec["credits"]["paid"] + rec["credits"]["plan"]
        assert rec["credits"]["plan"] == 0
        assert rec["ledger_seq"] is not None
    # The upstream's reported usage is what was kept (the first answer: not streamed).
    oldest = records[-1]
    assert (oldest["platform"], oldest["prompt_tokens"], oldest["completion_tokens"]) == \
        ("api", USAGE["prompt_tokens"], USAGE["completion_tokens"])
    # Free credits first: 4 free today, then paid.
    assert sum(rec["credits"]["free"] for rec in records) == FREE_DAILY
    assert sum(rec["credits"]["paid"] for rec in records) == 5 * COST - FREE_DAILY

    # The log's sum is the ledger's usage debits, and every record points at its entry.
    debits, ledger = usage_debits(d, uid)
    assert sum(rec["credits"]["total"] for rec in records) == debits == 5 * COST
    by_seq = {e["seq"]: e for e in ledger}
    for rec in records:
        entry = by_seq[rec["ledger_seq"]]
        assert entry["kind"] == "usage"
        assert -entry["free_delta"] == rec["credits"]["free"] and -entry["paid_delta"] == rec["credits"]["paid"]
    assert d.audit()["mismatches"] == []

    # Bob sees only his own answer; alice's token never reads bob's log.
    bob_records, _ = whole_log(d, other_token)
    assert len(bob_records) == 1 and bob_records[0]["platform"] == "api"
    assert not {r["id"] for r in bob_records} & {r["id"] for r in records}
    status, body = get(d, "/api/usage", "sk-cr-" + "0" * 48)
    assert status == 401, body
    status, body = get(d, "/api/usage?uid=" + str(other_uid), token)
    assert status == 200 and len(body["data"]) == 5, "a uid parameter changes nothing"

    # Limits: capped, checked; a bare time pages too.
    for bad in ["limit=0", "limit=101", "limit=x", "before=yesterday"]:
        status, body = get(d, "/api/usage?" + bad, token)
        assert status == 400 and body["error"]["code"] == "bad_request", (bad, body)
    status, body = get(d, f"/api/usage?before={records[1]['at_ms']}&limit=100", token)
    assert status == 200
    assert all(rec["at_ms"] < records[1]["at_ms"] for rec in body["data"])

    # The operator's view: the same records, and a readable table.
    admin = json.loads(d.cli("--json", "user", "usage", str(uid), "--limit", "100").stdout)
    assert admin["data"] == records
    table = d.cli("user", "usage", str(uid), "--limit", "2").stdout
    assert "TOTAL" in table and MODEL in table and "older: --before" in table, table
    missing = d.cli("user", "usage", "999999", check=False)
    assert missing.returncode != 0 and "999999" in missing.stderr


def test_usage_days_is_validated(upstream):
    """`[quota] usage_days` is read and checked (pruning: storage's and the engine's unit tests,
    which can write records older than the cut-off)."""
    d = Daemon(upstream.base_url, extra_toml="", free_daily=0)
    text = d.config.read_text().replace("[quota]\n", "[quota]\nusage_days = 40000\n")
    d.config.write_text(text)
    r = subprocess.run([str(Path(os.environ.get("CHATRELAY_BIN", ROOT / "target/debug/chatrelay"))),
                        "--config", str(d.config), "check-config"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "quota.usage_days" in (r.stdout + r.stderr), r


CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = ROOT / "target" / "e2e-screenshots" / "phone-usage.png"


def test_the_account_sheet_lists_usage_and_loads_more(upstream):
    """The page's account sheet shows 用量明细: 20 answers, then the rest on 加载更多."""
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("browser tests need Debian's chromium: apt-get install chromium")
    d = Daemon(upstream.base_url, free_daily=FREE_DAILY, llm_timeout=10,
               extra_toml='[web]\ntitle = "测试助手"\n').start()
    try:
        uid, token = d.new_user("小明", credits=100)
        for n in range(20):
            web_chat(d, token, f"question {n}")
        client = openai.OpenAI(base_url=d.url + "/v1", api_key=token, max_retries=0)
        for n in range(2):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"api {n}"}])
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
            ctx = browser.new_context(viewport={"width": 390, "height": 844}, locale="zh-CN")
            ctx.add_init_script(f"localStorage.setItem('chatrelay.token', '{token}');"
                                f"localStorage.setItem('chatrelay.uid', '{uid}');")
            page = ctx.new_page()
            page.set_default_timeout(15_000)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(d.url + "/")
            # One more answer, asked on the page itself.
            page.get_by_test_id("chat-input").fill("你好")
            page.get_by_test_id("send").click()
            expect(page.get_by_test_id("message-assistant").last).to_have_attribute("data-state", "done")
            page.locator("#account-open").click()
            panel = page.get_by_test_id("account-panel")
            expect(panel).to_be_visible()
            items = page.get_by_test_id("answer-item")
            expect(items).to_have_count(20)
            expect(panel).to_contain_text("用量明细")
            first = items.first
            expect(first).to_contain_text(MODEL)
            expect(first).to_contain_text(f"{COST} 额度")
            expect(first).to_contain_text("网页")
            expect(items.nth(1)).to_contain_text("API")
            page.locator("#answers-list").evaluate(
                "list => list.previousElementSibling.scrollIntoView({block: 'start'})")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
            more = page.get_by_test_id("answers-more")
            expect(more).to_be_visible()
            more.click()
            expect(items).to_have_count(23)
            expect(more).to_be_hidden()
            # The oldest answers came from the free allowance first.
            expect(items.last).to_contain_text(f"免费 {COST}")
            assert not errors, errors
            browser.close()
        records, _ = whole_log(d, token, limit=100)
        debits, _ = usage_debits(d, uid)
        assert len(records) == 23 and sum(r["credits"]["total"] for r in records) == debits == 23 * COST
    finally:
        code = d.stop()
    assert code == 0, d.logs()
