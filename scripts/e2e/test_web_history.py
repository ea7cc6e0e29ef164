"""Conversations on the server (issue 26): the real binary keeps a web user's conversations for
every device they log in on (two tokens of one user see the same ones, another user sees
none of them), holds them to the configured count and size, refuses a save based on a stale
version, and lists the user's Official Account conversation (driven through wechatpy-signed
messages) as a conversation of its own that the page can continue with its memory. Each test
runs on sled and, with CHATRELAY_TEST_PG_URL set, on PostgreSQL."""

import json
import os
import re
import secrets
import shutil
import subprocess

import pytest
import requests

from conftest import Daemon
from fake_openai import ANSWER
from fake_wechat import FakeWechat
from test_wechat_mp import LOGIN_CODE, SUB, WeChat

MAX_COUNT = 3
MAX_KB = 4


@pytest.fixture(scope="module")
def wechat_api():
    fake = FakeWechat()
    yield fake
    fake.stop()


PG_URL = os.environ.get("CHATRELAY_TEST_PG_URL")


def storage_for(engine, schema):
    if engine == "sled":
        return None
    if not PG_URL:
        pytest.skip("CHATRELAY_TEST_PG_URL is unset (export CHATRELAY_TEST_PG_URL=$(scripts/pg-up))")
    return f'backend = "postgres"\nurl = "{PG_URL}"\nschema = "{schema}"\npool_size = 4\n'


def drop_schema(name):
    if PG_URL and shutil.which("psql"):
        subprocess.run(["psql", PG_URL, "-qAt", "-c", f'DROP SCHEMA IF EXISTS "{name}" CASCADE'],
                       capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module", params=["sled", "postgres"])
def hist(request, upstream, wechat_api):
    schema = "s_e2e_hist_" + secrets.token_hex(5)
    storage = storage_for(request.param, schema)
    extra = f"""
[web]
conversations_max = {MAX_COUNT}
conversation_max_kb = {MAX_KB}

[[wechat_mp]]
id = "{SUB['id']}"
app_id = "{SUB['app_id']}"
app_secret = "secret-{SUB['id']}"
token = "{SUB['token']}"
api_base = "{wechat_api.url}"
passive_wait_ms = 3000
"""
    d = Daemon(upstream.base_url, extra_toml=extra, free_daily=100, llm_timeout=10,
               storage_toml=storage).start()
    yield d
    code = d.stop()
    if storage:
        drop_schema(schema)
    assert code == 0, d.logs()


def login(d, openid):
    """A web login for the follower `openid`: a code from the Official Account for a token."""
    _, reply = WeChat(d, SUB).send_text(openid, "验证码", timeout=5)
    code = re.search(LOGIN_CODE, reply["Content"]).group(0)
    r = requests.post(d.url + "/api/login", json={"code": code}, timeout=5)
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    uid = requests.get(d.url + "/api/me", headers=auth(token), timeout=5).json()["uid"]
    return token, uid


def auth(token):
    return {"authorization": f"Bearer {token}"}


def api(d, method, path, token, **kw):
    return requests.request(method, d.url + "/api/conversations" + path, headers=auth(token), timeout=10, **kw)


def web_id():
    return "w_" + secrets.token_hex(8)


def listed(d, token):
    r = api(d, "GET", "", token)
    assert r.status_code == 200, r.text
    return r.json()["conversations"]


def put(d, token, cid, title, messages, base=None):
    body = {"title": title, "messages": messages}
    if base is not None:
        body["base"] = base
    return api(d, "PUT", "/" + cid, token, json=body)


def turn(q, a):
    return [{"role": "user", "content": q, "at": 1}, {"role": "assistant", "content": a, "model": "gpt-fake"}]


def sse_text(resp):
    """The answer's text from an OpenAI chat-completion chunk stream; checks it ends with [DONE]."""
    text, done = "", False
    for raw in resp.iter_lines():
        line = raw.decode("utf-8")  # SSE is UTF-8 by definition (no charset in the header)
        if not line or not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)
        assert "error" not in chunk, chunk
        for choice in chunk["choices"]:
            text += choice["delta"].get("content") or ""
    assert done, "the stream ended without [DONE]"
    return text


def test_two_devices_share_conversations_and_another_user_sees_none(hist):
    phone, uid = login(hist, "o_devices")
    laptop, uid2 = login(hist, "o_devices")
    assert uid == uid2 and phone != laptop
    cid = web_id()
    r = put(hist, phone, cid, "我的对话", turn("问题一", "回答一"))
    assert r.status_code == 200, r.text
    version = r.json()["updated_at"]
    assert r.json()["id"] == cid

    # The other device lists and opens it.
    [summary] = [c for c in listed(hist, laptop) if c["id"] == cid]
    assert summary == {"id": cid, "title": "我的对话", "source": "web", "updated_at": version, "count": 2}
    got = api(hist, "GET", "/" + cid, laptop).json()
    assert got["messages"] == [{"role": "user", "content": "问题一", "at": 1},
                               {"role": "assistant", "content": "回答一", "model": "gpt-fake"}]
    assert got["source"] == "web" and got["updated_at"] == version

    # Another user: 404 (never "someone else's"), and their save of the same id is their own.
    _, stranger = hist.new_user("stranger")
    assert cid not in [c["id"] for c in listed(hist, stranger)]
    r = api(hist, "GET", "/" + cid, stranger)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert api(hist, "PATCH", "/" + cid, stranger, json={"title": "mine now"}).status_code == 404
    assert api(hist, "DELETE", "/" + cid, stranger).status_code == 204
    assert put(hist, stranger, cid, "陌生人的", []).status_code == 200
    mine = api(hist, "GET", "/" + cid, phone).json()
    assert (mine["title"], mine["updated_at"], len(mine["messages"])) == ("我的对话", version, 2)
    assert api(hist, "GET", "/" + cid, stranger).json()["title"] == "陌生人的"

    # No token, a bad token: 401.
    assert requests.get(hist.url + "/api/conversations", timeout=5).status_code == 401
    assert api(hist, "GET", "", "sk-cr-" + "0" * 48).status_code == 401


def test_rename_conflict_and_delete(hist):
    phone, _ = login(hist, "o_conflict")
    laptop, _ = login(hist, "o_conflict")
    cid = web_id()
    v1 = put(hist, phone, cid, "初稿", turn("q1", "a1")).json()["updated_at"]
    # The laptop continues the conversation from v1.
    r = put(hist, laptop, cid, "初稿", turn("q1", "a1") + turn("q2", "a2"), base=v1)
    assert r.status_code == 200, r.text
    v2 = r.json()["updated_at"]
    assert v2 > v1
    # The phone still thinks it is at v1: refused, with what is stored.
    r = put(hist, phone, cid, "初稿", turn("q1", "a1") + turn("other", "x"), base=v1)
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "conflict"
    assert err["current"]["updated_at"] == v2
    assert [m["content"] for m in err["current"]["messages"]] == ["q1", "a1", "q2", "a2"]
    assert len(api(hist, "GET", "/" + cid, phone).json()["messages"]) == 4, "nothing was written"

    # Rename: a new version, the title everywhere.
    r = api(hist, "PATCH", "/" + cid, phone, json={"title": "  改名了  "})
    assert r.status_code == 200, r.text
    v3 = r.json()["updated_at"]
    assert v3 > v2
    [summary] = [c for c in listed(hist, laptop) if c["id"] == cid]
    assert (summary["title"], summary["updated_at"], summary["count"]) == ("改名了", v3, 4)
    assert put(hist, laptop, cid, "x", [], base=v2).status_code == 409

    assert api(hist, "DELETE", "/" + cid, laptop).status_code == 204
    assert api(hist, "GET", "/" + cid, phone).status_code == 404
    assert cid not in [c["id"] for c in listed(hist, phone)]
    assert api(hist, "PATCH", "/" + cid, phone, json={"title": "t"}).status_code == 404

    # Bad shapes and ids.
    assert put(hist, phone, "bad id!", "t", []).status_code in (400, 404)
    assert api(hist, "PUT", "/" + web_id(), phone, data=b"{not json").status_code == 400
    r = put(hist, phone, web_id(), "t", [{"role": "system", "content": "x"}])
    assert r.status_code == 400, r.text
    assert api(hist, "PATCH", "/" + web_id(), phone, data=b"[]").status_code == 400


def test_count_limit_prunes_the_oldest_and_size_limit_is_413(hist):
    token, _ = login(hist, "o_limits")
    ids = [web_id() for _ in range(MAX_COUNT + 1)]
    for n, cid in enumerate(ids[:MAX_COUNT]):
        assert put(hist, token, cid, f"c{n}", turn(f"q{n}", f"a{n}")).status_code == 200
    # Touch the first: the second is now the oldest.
    assert api(hist, "PATCH", "/" + ids[0], token, json={"title": "c0 again"}).status_code == 200
    r = put(hist, token, ids[MAX_COUNT], "newest", [])
    assert r.status_code == 200, r.text
    assert r.json()["pruned"] == [ids[1]]
    web = [c["id"] for c in listed(hist, token) if c["source"] == "web"]
    assert web == [ids[MAX_COUNT], ids[0], ids[2]], "newest first, the oldest gone"
    assert api(hist, "GET", "/" + ids[1], token).status_code == 404

    big = turn("x" * (MAX_KB * 1024), "y")
    r = put(hist, token, web_id(), "big", big)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "too_large"
    # Far over the limit: refused while reading, the same way.
    r = put(hist, token, web_id(), "huge", turn("x" * (MAX_KB * 1024 * 4), "y"))
    assert r.status_code == 413
    web_after = [c["id"] for c in listed(hist, token) if c["source"] == "web"]
    assert web_after == web, "a refused save changes nothing"
    # Just under the limit is fine.
    fits = [{"role": "user", "content": "z" * (MAX_KB * 1024 - 100)}]
    assert put(hist, token, ids[2], "fits", fits).status_code == 200


def test_an_official_account_conversation_appears_on_the_web_and_continues_there(hist, upstream):
    openid = "o_platform_" + secrets.token_hex(3)
    wx = WeChat(hist, SUB)
    _, reply = wx.send_text(openid, "公众号里的第一个问题", timeout=5)
    assert reply["Content"] == ANSWER
    token, uid = login(hist, openid)
    laptop, _ = login(hist, openid)
    usage_before = [e for e in hist.user(uid)["ledger"] if e["kind"] == "usage"]

    [conv] = [c for c in listed(hist, laptop) if c["source"] == "wechat_mp"]
    pid = conv["id"]
    assert pid.startswith("p_") and openid not in pid
    assert conv["count"] == 2 and conv["title"]
    got = api(hist, "GET", "/" + pid, token).json()
    assert [(m["role"], m["content"]) for m in got["messages"]] == [
        ("user", "公众号里的第一个问题"), ("assistant", ANSWER)]

    # Saving over it or renaming it is not how it changes; another user cannot see it.
    assert put(hist, token, pid, "t", []).status_code == 400
    assert api(hist, "PATCH", "/" + pid, token, json={"title": "t"}).status_code == 400
    _, stranger = hist.new_user("stranger2")
    assert api(hist, "GET", "/" + pid, stranger).status_code == 404
    r = api(hist, "POST", f"/{pid}/messages", stranger, json={"content": "hi"})
    assert r.status_code == 404

    # Continued on the web: the model gets the earlier turn, the answer streams back.
    upstream.requests.clear()
    r = api(hist, "POST", f"/{pid}/messages", token, json={"content": "网页上接着问"}, stream=True)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert sse_text(r) == ANSWER
    [(_, _, sent)] = upstream.requests
    contents = [m["content"] for m in sent["messages"] if m["role"] != "system"]
    assert contents == ["公众号里的第一个问题", ANSWER, "网页上接着问"], sent["messages"]
    usage_after = [e for e in hist.user(uid)["ledger"] if e["kind"] == "usage"]
    assert len(usage_after) == len(usage_before) + 1, "charged like a message"

    # The turn is in the conversation, on every device, and on the Official Account too.
    got = api(hist, "GET", "/" + pid, laptop).json()
    assert [m["content"] for m in got["messages"]] == [
        "公众号里的第一个问题", ANSWER, "网页上接着问", ANSWER]
    upstream.requests.clear()
    _, reply = wx.send_text(openid, "回到公众号", timeout=5)
    assert reply["Content"] == ANSWER
    [(_, _, sent)] = upstream.requests
    assert "网页上接着问" in [m["content"] for m in sent["messages"]]

    # A web conversation is continued through /v1, not here; an empty question is refused.
    r = api(hist, "POST", f"/{web_id()}/messages", token, json={"content": "x"})
    assert r.status_code == 400
    r = api(hist, "POST", f"/{pid}/messages", token, json={"content": "   "})
    assert r.status_code == 400, r.text

    # Deleting it clears the memory (as "/new" there would): gone from the list, and the next
    # message on the Official Account starts afresh.
    assert api(hist, "DELETE", "/" + pid, token).status_code == 204
    assert pid not in [c["id"] for c in listed(hist, laptop)]
    assert api(hist, "GET", "/" + pid, token).status_code == 404
    # Cleared, there is nothing to continue until the platform remembers again.
    assert api(hist, "POST", f"/{pid}/messages", token, json={"content": "x"}).status_code == 404
    upstream.requests.clear()
    wx.send_text(openid, "重新开始", timeout=5)
    [(_, _, sent)] = upstream.requests
    assert [m["content"] for m in sent["messages"] if m["role"] != "system"] == ["重新开始"]
    # The platform remembers again: back under the same id.
    [again] = [c for c in listed(hist, token) if c["source"] == "wechat_mp"]
    assert (again["id"], again["count"]) == (pid, 2)
