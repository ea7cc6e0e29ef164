"""The Official Account connector, with wechatpy playing WeChat: it signs and encrypts the
messages for the running binary, retries like WeChat does, and decrypts and checks replies."""

import base64
import hashlib
import json
import re
import secrets
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import xmltodict
from wechatpy.crypto import WeChatCrypto

from conftest import COST, Daemon
from fake_openai import ANSWER
from fake_wechat import FakeWechat

MAIN = dict(id="main", app_id="wx1234567890abcdef", token="e2e-token-main",
            aes_key=base64.b64encode(bytes(range(32))).decode().rstrip("="))
SUB = dict(id="sub", app_id="wxsub0000000000001", token="e2e-token-sub", aes_key=None)
PASSIVE_MS, WINDOW_MS, CLIENT_TIMEOUT = 1000, 4500, 1.2


def sha1_sorted(*parts):
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


class WeChat:
    """Plays WeChat's servers for one Official Account."""

    def __init__(self, daemon, account, gh="gh_e2e"):
        self.url = f"{daemon.url}/wechat/mp/{account['id']}"
        self.account = account
        self.gh = gh
        self.crypto = (WeChatCrypto(account["token"], account["aes_key"], account["app_id"])
                       if account["aes_key"] else None)

    def _query(self, ts, nonce, openid, extra=None):
        q = {"signature": sha1_sorted(self.account["token"], ts, nonce), "timestamp": ts,
             "nonce": nonce, "openid": openid}
        q.update(extra or {})
        return q

    def post_raw(self, xml, openid="o_user", timeout=5.0, ts=None, tamper=None, nonce=None):
        ts = ts or str(int(time.time()))
        nonce = nonce or secrets.token_hex(5)
        extra = {}
        body = xml
        if self.crypto:
            sealed = xmltodict.parse(self.crypto.encrypt_message(xml, nonce, ts))["xml"]
            encrypt = sealed["Encrypt"]
            body = (f"<xml><ToUserName><![CDATA[{self.gh}]]></ToUserName>"
                    f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>")
            extra = {"encrypt_type": "aes",
                     "msg_signature": sha1_sorted(self.account["token"], ts, nonce, encrypt)}
        q = self._query(ts, nonce, openid, extra)
        if tamper:
            tamper(q)
        req = urllib.request.Request(self.url + "?" + urllib.parse.urlencode(q),
                                     data=body.encode() if isinstance(body, str) else body, method="POST")
        req.add_header("content-type", "text/xml")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def open_reply(self, body):
        """The reply as a dict, or None for `success`."""
        if body == "success" or body == "":
            return None
        if self.crypto:
            sealed = xmltodict.parse(body)["xml"]
            plain = self.crypto.decrypt_message(body, sealed["MsgSignature"], sealed["TimeStamp"], sealed["Nonce"])
            return xmltodict.parse(plain)["xml"]
        return xmltodict.parse(body)["xml"]

    def text_xml(self, openid, content, msg_id):
        return (f"<xml><ToUserName><![CDATA[{self.gh}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>"
                f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
                f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>")

    def send_text(self, openid, content, msg_id=None, tries=3, timeout=CLIENT_TIMEOUT):
        """Delivers a text message the way WeChat does: a try times out, the next follows.
        Returns (tries used, reply dict or None)."""
        msg_id = msg_id or secrets.randbelow(10**18)
        xml = self.text_xml(openid, content, msg_id)
        for attempt in range(1, tries + 1):
            try:
                status, body = self.post_raw(xml, openid, timeout=timeout)
            except (socket.timeout, TimeoutError, urllib.error.URLError) as e:
                if isinstance(e, urllib.error.URLError) and not isinstance(e.reason, (socket.timeout, TimeoutError)):
                    raise
                continue
            assert status == 200, (status, body)
            return attempt, self.open_reply(body)
        return tries, None


@pytest.fixture(scope="module")
def wechat_api():
    fake = FakeWechat()
    fake.no_push.add(SUB["app_id"])
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def mp_daemon(upstream, wechat_api):
    extra = ""
    for a in (MAIN, SUB):
        extra += f"""
[[wechat_mp]]
id = "{a['id']}"
app_id = "{a['app_id']}"
app_secret = "secret-{a['id']}"
token = "{a['token']}"
{f'encoding_aes_key = "{a["aes_key"]}"' if a['aes_key'] else ''}
api_base = "{wechat_api.url}"
passive_wait_ms = {PASSIVE_MS}
retry_window_ms = {WINDOW_MS}
[wechat_mp.menu]
HELP = "/help"
"""
    d = Daemon(upstream.base_url, extra_toml=extra, free_daily=100, llm_timeout=10).start()
    yield d
    assert d.stop() == 0, d.logs()


# A web login code as the Official Account shows it (8 base32 characters in two groups).
LOGIN_CODE = r"[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}"


def login(daemon, wx, openid):
    """Gets a web login code through the Official Account and trades it for a token."""
    _, reply = wx.send_text(openid, "验证码")
    code = re.search(LOGIN_CODE, reply["Content"]).group(0)
    req = urllib.request.Request(daemon.url + "/api/login", data=json.dumps({"code": code}).encode(),
                                 method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        token = json.loads(r.read())["token"]
    me = urllib.request.Request(daemon.url + "/api/me", headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(me, timeout=5) as r:
        uid = json.loads(r.read())["uid"]
    return code, token, uid


def usage_entries(daemon, uid):
    return [e for e in daemon.user(uid)["ledger"] if e["kind"] == "usage"]


def test_url_verification(mp_daemon):
    ts, nonce, echostr = str(int(time.time())), "n1", "echo-12345"
    q = {"signature": sha1_sorted(MAIN["token"], ts, nonce), "timestamp": ts, "nonce": nonce, "echostr": echostr}
    with urllib.request.urlopen(f"{mp_daemon.url}/wechat/mp/main?" + urllib.parse.urlencode(q), timeout=5) as r:
        assert r.read().decode() == echostr
    q["signature"] = "0" * 40
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{mp_daemon.url}/wechat/mp/main?" + urllib.parse.urlencode(q), timeout=5)
    assert e.value.code == 403


def test_safe_mode_answer_and_one_debit(mp_daemon, upstream):
    wx = WeChat(mp_daemon, MAIN)
    _, _, uid = login(mp_daemon, wx, "o_alice")
    before = upstream.chat_request_count()
    tries, reply = wx.send_text("o_alice", "你好", timeout=5)
    assert tries == 1
    assert reply["Content"] == ANSWER
    assert reply["ToUserName"] == "o_alice" and reply["FromUserName"] == "gh_e2e"
    assert upstream.chat_request_count() - before == 1
    entries = usage_entries(mp_daemon, uid)
    assert len(entries) == 1 and entries[0]["free_delta"] == -COST


def test_retries_join_one_answer(mp_daemon, upstream):
    wx = WeChat(mp_daemon, MAIN)
    _, _, uid = login(mp_daemon, wx, "o_bob")
    upstream.mode, upstream.delay = "delayed", 2.5
    before = upstream.chat_request_count()
    tries, reply = wx.send_text("o_bob", "慢一点的问题")
    assert tries >= 2, "the first try timed out and WeChat retried"
    assert reply["Content"] == ANSWER
    assert upstream.chat_request_count() - before == 1, "one question, one LLM call"
    assert len(usage_entries(mp_daemon, uid)) == 1, "one question, one debit"


def test_too_slow_answer_is_pushed(mp_daemon, upstream, wechat_api):
    wx = WeChat(mp_daemon, MAIN)
    upstream.mode, upstream.delay = "delayed", 5.0
    tries, reply = wx.send_text("o_carol", "非常慢的问题")
    assert tries == 3
    assert "稍后" in reply["Content"], reply
    deadline = time.time() + 15
    while not wechat_api.sent_to("o_carol") and time.time() < deadline:
        time.sleep(0.1)
    sent = wechat_api.sent_to("o_carol")
    assert [s["text"]["content"] for s in sent] == [ANSWER]


def test_without_push_the_answer_comes_with_the_next_message(mp_daemon, upstream, wechat_api):
    wx = WeChat(mp_daemon, SUB)  # plaintext mode; WeChat answers 48001 to pushes
    upstream.mode, upstream.delay = "delayed", 5.0
    tries, reply = wx.send_text("o_dave", "第一个问题")
    assert tries == 3 and reply is not None
    time.sleep(WINDOW_MS / 1000 + 2)
    assert wechat_api.sent_to("o_dave") == []
    upstream.mode = "ok"
    _, reply = wx.send_text("o_dave", "第二个问题", timeout=5)
    assert reply["Content"] == ANSWER + "\n\n" + ANSWER, "the owed answer, then the new one"
    # The account is now known not to push: a slow answer says so.
    upstream.mode, upstream.delay = "delayed", 5.0
    _, reply = wx.send_text("o_dave", "第三个问题")
    assert "发送任意消息" in reply["Content"]


def test_login_code_works_on_v1_and_shares_credits(mp_daemon):
    import openai
    wx = WeChat(mp_daemon, MAIN)
    code, token, uid = login(mp_daemon, wx, "o_erin")
    _, again = wx.send_text("o_erin", "验证码")
    assert code not in again["Content"], "a used code is not handed out again"
    client = openai.OpenAI(base_url=mp_daemon.url + "/v1", api_key=token)
    res = client.chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": "hi"}])
    assert res.choices[0].message.content == ANSWER
    wx.send_text("o_erin", "再来一个", timeout=5)
    assert len(usage_entries(mp_daemon, uid)) == 2, "the web token and the OA user are one user"
    # A code cannot be reused.
    req = urllib.request.Request(mp_daemon.url + "/api/login", data=json.dumps({"code": code}).encode(),
                                 method="POST", headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 401


def test_menu_click_and_subscribe(mp_daemon):
    wx = WeChat(mp_daemon, MAIN)
    now = int(time.time())
    click = (f"<xml><ToUserName>gh_e2e</ToUserName><FromUserName>o_frank</FromUserName><CreateTime>{now}</CreateTime>"
             f"<MsgType>event</MsgType><Event>CLICK</Event><EventKey>HELP</EventKey></xml>")
    status, body = wx.post_raw(click, "o_frank")
    assert status == 200 and "/new" in wx.open_reply(body)["Content"]
    sub = (f"<xml><ToUserName>gh_e2e</ToUserName><FromUserName>o_frank</FromUserName><CreateTime>{now}</CreateTime>"
           f"<MsgType>event</MsgType><Event>subscribe</Event><EventKey>qrscene_42</EventKey></xml>")
    status, body = wx.post_raw(sub, "o_frank")
    assert "感谢关注" in wx.open_reply(body)["Content"]


def test_bad_input_changes_nothing(mp_daemon, upstream):
    wx = WeChat(mp_daemon, MAIN)
    before = upstream.chat_request_count()
    xml = wx.text_xml("o_mallory", "hi", 1)

    def bad_sig(q):
        q["signature"] = "0" * 40

    def bad_msg_sig(q):
        q["msg_signature"] = "0" * 40

    assert wx.post_raw(xml, "o_mallory", tamper=bad_sig)[0] == 403
    assert wx.post_raw(xml, "o_mallory", tamper=bad_msg_sig)[0] == 403
    assert wx.post_raw(xml, "o_mallory", ts=str(int(time.time()) - 3600))[0] == 403
    # Encrypted for another app id: decrypts, but the app id check refuses it.
    other = WeChat(mp_daemon, dict(MAIN, app_id="wxOTHER000000000"))
    assert other.post_raw(xml, "o_mallory")[0] == 400
    plain = WeChat(mp_daemon, SUB)
    assert plain.post_raw("<xml><not closed", "o_mallory")[0] == 400
    assert plain.post_raw(b"\xff\xfe garbage", "o_mallory")[0] == 400
    assert plain.post_raw("<xml>" + "x" * 200_000 + "</xml>", "o_mallory")[0] == 413
    assert upstream.chat_request_count() == before


def signed_plain_post(url, token, ts, nonce, openid, body):
    """One plaintext-mode POST under a query signed with wechatpy (as WeChat signs it)."""
    from wechatpy.utils import WeChatSigner
    signer = WeChatSigner()
    signer.add_data(token, ts, nonce)
    q = {"signature": signer.signature, "timestamp": ts, "nonce": nonce, "openid": openid}
    req = urllib.request.Request(url + "?" + urllib.parse.urlencode(q), data=body.encode(), method="POST",
                                 headers={"content-type": "text/xml"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def test_a_signed_query_replayed_with_another_body_is_refused(mp_daemon, upstream):
    """Plaintext mode signs only timestamp and nonce: a callback URL from a proxy's log must
    not carry another body (another openid asking for a login code). The identical request
    again (a retry) is still accepted, and joins the first answer."""
    wx = WeChat(mp_daemon, SUB)
    ts, nonce = str(int(time.time())), "replay-" + secrets.token_hex(4)
    genuine = wx.text_xml("o_victim", "你好", secrets.randbelow(10**18))
    before = upstream.chat_request_count()
    status, body = signed_plain_post(wx.url, SUB["token"], ts, nonce, "o_victim", genuine)
    assert status == 200 and wx.open_reply(body)["Content"] == ANSWER
    # The captured query with a forged body: another user asks for a login code.
    for openid, content in (("o_victim", "验证码"), ("o_attacker", "验证码"), ("o_victim", "你好吗")):
        forged = wx.text_xml(openid, content, secrets.randbelow(10**18))
        status, body = signed_plain_post(wx.url, SUB["token"], ts, nonce, openid, forged)
        assert status == 403, (openid, content, status, body)
        assert not re.search(LOGIN_CODE, body), "no login code leaves"
    # The same request again (WeChat's retry): accepted, and no second LLM call.
    status, body = signed_plain_post(wx.url, SUB["token"], ts, nonce, "o_victim", genuine)
    assert status == 200, body
    assert upstream.chat_request_count() - before == 1
    # Safe mode: the same message encrypted afresh under the same query (as a retry may be) is
    # accepted; the signature there covers the ciphertext, so no other message can be signed.
    wx = WeChat(mp_daemon, MAIN)
    xml = wx.text_xml("o_victim", "再问一次", secrets.randbelow(10**18))
    ts, nonce = str(int(time.time())), "replay-" + secrets.token_hex(4)
    first = wx.post_raw(xml, "o_victim", ts=ts, nonce=nonce)
    assert first[0] == 200
    assert wx.post_raw(xml, "o_victim", ts=ts, nonce=nonce)[0] == 200


def test_an_exact_replay_of_a_login_code_request_gets_no_code(mp_daemon):
    """Plaintext mode: the victim's own login-code request, captured (a proxy log) and replayed
    as is (same signed timestamp and nonce, same body) within the accepted window, must not
    hand out a code: the repeat gets the empty "success", before and after the first code is
    used, and the one code issued still logs the victim in."""
    wx = WeChat(mp_daemon, SUB)
    ts, nonce = str(int(time.time())), "login-" + secrets.token_hex(4)
    msg_id = secrets.randbelow(10**18)
    request = wx.text_xml("o_grace", "验证码", msg_id)
    status, body = signed_plain_post(wx.url, SUB["token"], ts, nonce, "o_grace", request)
    assert status == 200, body
    code = re.search(LOGIN_CODE, wx.open_reply(body)["Content"]).group(0)

    def replay():
        status, again = signed_plain_post(wx.url, SUB["token"], ts, nonce, "o_grace", request)
        assert status == 200, again
        assert wx.open_reply(again) is None and not re.search(LOGIN_CODE, again), again

    replay()
    # The first code is the one: it logs the victim in.
    req = urllib.request.Request(mp_daemon.url + "/api/login", data=json.dumps({"code": code}).encode(),
                                 method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.loads(r.read())["token"]
    # Used up, the replay would mint a fresh one for whoever sends it: still nothing.
    replay()
    # The same message under a freshly signed query (how a retry would come): nothing either.
    status, again = signed_plain_post(wx.url, SUB["token"], str(int(time.time())), "login-" + secrets.token_hex(4),
                                      "o_grace", request)
    assert status == 200 and wx.open_reply(again) is None, again
    # Asking again with a new message gets a new code, as always.
    _, reply = wx.send_text("o_grace", "验证码")
    assert re.search(LOGIN_CODE, reply["Content"]).group(0) != code


def test_an_answer_charged_before_shutdown_waits_in_the_outbox(upstream, tmp_path):
    """SIGTERM while the watcher waits out WeChat's tries: the answer, charged, was neither
    pushed nor shown; it goes to the outbox and comes with the next message after the
    restart, charged once."""
    d = Daemon(upstream.base_url, free_daily=100, llm_timeout=10, extra_toml=f"""
[[wechat_mp]]
id = "{SUB['id']}"
app_id = "{SUB['app_id']}"
token = "{SUB['token']}"
passive_wait_ms = 300
retry_window_ms = 30000
""").start()
    try:
        wx = WeChat(d, SUB)
        _, _, uid = login(d, wx, "o_erin")
        upstream.mode, upstream.delay = "delayed", 1.0
        # One try: it says nothing in time, and WeChat would try again much later.
        tries, reply = wx.send_text("o_erin", "慢问题", tries=1, timeout=0.8)
        assert reply is None
        deadline = time.time() + 10
        while not usage_entries(d, uid) and time.time() < deadline:
            time.sleep(0.1)
        assert len(usage_entries(d, uid)) == 1, "the answer was made and charged"
        started = time.time()
        assert d.stop() == 0, d.logs()
        assert time.time() - started < 10, "shutdown did not wait out WeChat's retry window"
        upstream.mode = "ok"
        d.start()
        _, reply = wx.send_text("o_erin", "下一个问题", timeout=5)
        assert reply["Content"] == ANSWER + "\n\n" + ANSWER, "the owed answer, then the new one"
        assert len(usage_entries(d, uid)) == 2, "each question charged once"
    finally:
        d.stop()
