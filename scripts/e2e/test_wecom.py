"""WeCom end to end, with wechatpy's WeCom crypto playing WeCom: the app's URL check, a message
answered once despite retries, and an AI bot stream refreshed to completion."""

import base64
import hashlib
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import xmltodict
from wechatpy.enterprise.crypto import PrpCrypto, WeChatCrypto

from conftest import Daemon
from fake_openai import ANSWER
from fake_wechat import FakeWechat

CORP = dict(id="corp", corp_id="ww1234567890abcdef", agent_id=1000002, token="wecom-token",
            aes_key=base64.b64encode(bytes(range(1, 33))).decode().rstrip("="))
BOT = dict(id="bot", token="aibot-token", aes_key=base64.b64encode(bytes(range(2, 34))).decode().rstrip("="))
ROBOT_KEY = "robot-key-123"


def sha1_sorted(*parts):
    parts = [p.decode() if isinstance(p, bytes) else p for p in parts]
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def encrypt(key, text, receive_id):
    out = PrpCrypto(key).encrypt(text, receive_id)
    return out.decode() if isinstance(out, bytes) else out


def post(url, body, timeout=5.0, content_type="text/xml"):
    req = urllib.request.Request(url, data=body.encode(), method="POST", headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


@pytest.fixture(scope="module")
def qyapi():
    fake = FakeWechat()
    yield fake
    fake.stop()


def wecom_toml(qyapi, bot_extra="", window_secs=10):
    """The test app (CORP) and AI bot (BOT), both talking to the fake qyapi."""
    return f"""
[[wecom]]
id = "{CORP['id']}"
corp_id = "{CORP['corp_id']}"
agent_id = {CORP['agent_id']}
secret = "corp-secret"
token = "{CORP['token']}"
encoding_aes_key = "{CORP['aes_key']}"
api_base = "{qyapi.url}"

[[wecom_aibot]]
id = "{BOT['id']}"
token = "{BOT['token']}"
encoding_aes_key = "{BOT['aes_key']}"
stream_window_secs = {window_secs}
{bot_extra}
"""


@pytest.fixture(scope="module")
def wecom_daemon(upstream, qyapi):
    extra = wecom_toml(qyapi, bot_extra='welcome = "你好，我是 AI 机器人"') + f"""
[[wecom_robot]]
id = "ops"
webhook = "{ROBOT_KEY}"
api_base = "{qyapi.url}"
"""
    d = Daemon(upstream.base_url, extra_toml=extra, free_daily=100, llm_timeout=30).start()
    yield d
    assert d.stop() == 0, d.logs()


def app_url(d, ts, nonce, signature, **extra):
    q = {"msg_signature": signature, "timestamp": ts, "nonce": nonce, **extra}
    return f"{d.url}/wecom/{CORP['id']}?" + urllib.parse.urlencode(q)


def test_app_url_verification(wecom_daemon):
    key = base64.b64decode(CORP["aes_key"] + "=")
    echostr = encrypt(key, "1616140317555161061", CORP["corp_id"])
    ts, nonce = str(int(time.time())), "nonce1"
    sig = sha1_sorted(CORP["token"], ts, nonce, echostr)
    with urllib.request.urlopen(app_url(wecom_daemon, ts, nonce, sig, echostr=echostr), timeout=5) as r:
        assert r.read().decode() == "1616140317555161061"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(app_url(wecom_daemon, ts, nonce, "0" * 40, echostr=echostr), timeout=5)
    assert e.value.code == 403
    # Encrypted for another corp: the receive id check refuses it.
    other = encrypt(key, "1", "wwOTHER")
    sig = sha1_sorted(CORP["token"], ts, nonce, other)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(app_url(wecom_daemon, ts, nonce, sig, echostr=other), timeout=5)
    assert e.value.code == 400


def wecom_message(d, user, content, msg_id, fields=None):
    crypto = WeChatCrypto(CORP["token"], CORP["aes_key"], CORP["corp_id"])
    fields = fields or f"<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>"
    xml = (f"<xml><ToUserName><![CDATA[{CORP['corp_id']}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>"
           f"<CreateTime>{int(time.time())}</CreateTime>{fields}"
           f"<MsgId>{msg_id}</MsgId><AgentID>{CORP['agent_id']}</AgentID></xml>")
    ts, nonce = str(int(time.time())), secrets.token_hex(4)
    encrypt = xmltodict.parse(crypto.encrypt_message(xml, nonce, ts))["xml"]["Encrypt"]
    body = (f"<xml><ToUserName><![CDATA[{CORP['corp_id']}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt>"
            f"<AgentID><![CDATA[{CORP['agent_id']}]]></AgentID></xml>")
    return app_url(d, ts, nonce, sha1_sorted(CORP["token"], ts, nonce, encrypt)), body


def test_app_message_answered_once_despite_retries(wecom_daemon, upstream, qyapi):
    before = upstream.chat_request_count()
    url, body = wecom_message(wecom_daemon, "zhangsan", "你好", 7001)
    for _ in range(3):  # WeCom's retries of one message
        assert post(url, body) == (200, "")
    deadline = time.time() + 10
    while not [m for m in qyapi.wecom_sent if m["touser"] == "zhangsan"] and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    sent = [m for m in qyapi.wecom_sent if m["touser"] == "zhangsan"]
    assert len(sent) == 1, sent
    assert sent[0]["agentid"] == CORP["agent_id"]
    # A plain answer goes as a text message; one with markup as markdown.
    assert sent[0]["msgtype"] == "text" and sent[0]["text"]["content"] == ANSWER
    assert upstream.chat_request_count() - before == 1
    assert qyapi.gettoken_requests >= 1
    upstream.pieces = ["# 标题\n", "- 一\n- 二\n"]
    url, body = wecom_message(wecom_daemon, "zhangsan", "列个清单", 7003)
    assert post(url, body) == (200, "")
    deadline = time.time() + 10
    while len([m for m in qyapi.wecom_sent if m["touser"] == "zhangsan"]) < 2 and time.time() < deadline:
        time.sleep(0.1)
    md = [m for m in qyapi.wecom_sent if m["touser"] == "zhangsan"][-1]
    assert md["msgtype"] == "markdown" and md["markdown"]["content"] == "# 标题\n- 一\n- 二\n"


def test_app_picture_reaches_the_engine(wecom_daemon, upstream, qyapi):
    """A picture message (PicUrl) goes to the engine as a picture: this daemon's model cannot
    see, so the user is told so, for free and without an LLM call."""
    before = upstream.chat_request_count()
    pic = f"http://127.0.0.1:{upstream.port}/picture.png"
    url, body = wecom_message(wecom_daemon, "lisi", "", 7201, fields=(
        f"<MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[{pic}]]></PicUrl><MediaId><![CDATA[m1]]></MediaId>"))
    assert post(url, body) == (200, "")
    deadline = time.time() + 10
    while not [m for m in qyapi.wecom_sent if m["touser"] == "lisi"] and time.time() < deadline:
        time.sleep(0.1)
    sent = [m for m in qyapi.wecom_sent if m["touser"] == "lisi"]
    assert len(sent) == 1 and "看不到图片" in sent[0]["text"]["content"], sent
    assert upstream.chat_request_count() == before


def test_app_bad_input_changes_nothing(wecom_daemon, upstream):
    before = upstream.chat_request_count()
    url, body = wecom_message(wecom_daemon, "lisi", "hi", 7002)
    forged = url.replace("msg_signature=", "msg_signature=0")
    assert post(forged, body)[0] == 403
    assert post(url, "<xml><Encrypt>garbage</Encrypt></xml>")[0] in (400, 403)
    assert post(url, "not xml at all")[0] in (400, 403)
    assert upstream.chat_request_count() == before


def bot_call(d, payload):
    key = base64.b64decode(BOT["aes_key"] + "=")
    encrypted = encrypt(key, json.dumps(payload, ensure_ascii=False), "")
    ts, nonce = str(int(time.time())), secrets.token_hex(4)
    q = {"msg_signature": sha1_sorted(BOT["token"], ts, nonce, encrypted), "timestamp": ts, "nonce": nonce}
    status, body = post(f"{d.url}/wecom/aibot/{BOT['id']}?" + urllib.parse.urlencode(q),
                        json.dumps({"encrypt": encrypted}), content_type="application/json")
    assert status == 200, (status, body)
    if not body:
        return None
    sealed = json.loads(body)
    assert sealed["msgsignature"] == sha1_sorted(BOT["token"], sealed["timestamp"], sealed["nonce"], sealed["encrypt"])
    return json.loads(PrpCrypto(key).decrypt(sealed["encrypt"], ""))


def test_aibot_stream_refreshed_to_completion(wecom_daemon, upstream):
    upstream.pieces = [f"第{i}段。" for i in range(20)]
    upstream.piece_delay = 0.1
    first = bot_call(wecom_daemon, {"msgid": "bm1", "aibotid": "b", "chattype": "group", "chatid": "c1",
                                    "from": {"userid": "wangwu"}, "response_url": "http://127.0.0.1:9/none",
                                    "msgtype": "text", "text": {"content": "@机器人 讲个故事"}})
    assert first["msgtype"] == "stream"
    stream_id = first["stream"]["id"]
    seen = []
    for _ in range(100):
        r = bot_call(wecom_daemon, {"msgid": f"refresh-{len(seen)}", "aibotid": "b", "msgtype": "stream",
                                    "stream": {"id": stream_id}})
        seen.append(r["stream"]["content"])
        if r["stream"]["finish"]:
            break
        time.sleep(0.1)
    assert r["stream"]["finish"], seen[-3:]
    assert seen[-1] == "".join(upstream.pieces)
    # Cumulative: every snapshot is a prefix of the next, and the answer grew while refreshed.
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:])), seen
    assert any(0 < len(x) < len(seen[-1]) for x in seen), seen
    # A retry of the same message gets the same stream, not a second answer.
    again = bot_call(wecom_daemon, {"msgid": "bm1", "aibotid": "b", "chattype": "group", "chatid": "c1",
                                    "from": {"userid": "wangwu"}, "msgtype": "text", "text": {"content": "@机器人 讲个故事"}})
    assert again["stream"]["id"] == stream_id


def test_aibot_welcome_and_late_answer_to_response_url(wecom_daemon, upstream, qyapi):
    welcome = bot_call(wecom_daemon, {"msgid": "ev1", "aibotid": "b", "msgtype": "event",
                                      "from": {"userid": "zhaoliu"}, "event": {"eventtype": "enter_chat"}})
    assert welcome == {"msgtype": "text", "text": {"content": "你好，我是 AI 机器人"}}
    upstream.mode, upstream.delay = "delayed", 10.5  # longer than stream_window_secs = 10
    first = bot_call(wecom_daemon, {"msgid": "bm2", "aibotid": "b", "chattype": "single",
                                    "from": {"userid": "zhaoliu"}, "response_url": f"{qyapi.url}/response/abc",
                                    "msgtype": "text", "text": {"content": "慢问题"}})
    assert first["stream"]["finish"] is False
    deadline = time.time() + 20
    while not qyapi.responses and time.time() < deadline:
        time.sleep(0.2)
    assert qyapi.responses == [("/response/abc", {"msgtype": "markdown", "markdown": {"content": ANSWER}})]


def test_alerts_reach_the_group_robot(wecom_daemon, upstream, qyapi):
    # Five upstream failures in a row alert the operators.
    upstream.mode = "error"
    for i in range(5):
        url, body = wecom_message(wecom_daemon, "ops-test", f"q{i}", 7100 + i)
        post(url, body)
    deadline = time.time() + 20
    while not qyapi.robot_sent and time.time() < deadline:
        time.sleep(0.2)
    assert qyapi.robot_sent, "no alert reached the robot"
    key, body = qyapi.robot_sent[0]
    assert key == ROBOT_KEY and body["msgtype"] == "text" and "连续" in body["text"]["content"]


def bot_toml(window_secs=360):
    return f"""
[[wecom_aibot]]
id = "{BOT['id']}"
token = "{BOT['token']}"
encoding_aes_key = "{BOT['aes_key']}"
stream_window_secs = {window_secs}
"""


def ledger_of(d, user):
    """The whole ledger of the AI-bot user `user`."""
    found = json.loads(d.cli("--json", "user", "find", user).stdout)
    if not found:
        return []
    uid = found[0]["uid"]
    return json.loads(d.cli("--json", "user", "show", str(uid), "--ledger", "1000").stdout)["ledger"]


def test_aibot_answer_finished_but_not_fetched_at_shutdown_is_refunded(upstream, qyapi):
    """SIGTERM while an AI-bot answer is finished and charged but WeCom has not fetched the
    stream's end: after the restart WeCom is told the answer was interrupted, so the user
    gets the charge back, once (the bot has no outbox to keep it in)."""
    d = Daemon(upstream.base_url, extra_toml=bot_toml(), free_daily=100, llm_timeout=30).start()
    try:
        first = bot_call(d, {"msgid": "sig-1", "aibotid": "b", "chattype": "single",
                             "from": {"userid": "sunqi"}, "response_url": f"{qyapi.url}/response/sig",
                             "msgtype": "text", "text": {"content": "问一个问题"}})
        stream_id = first["stream"]["id"]
        charge_ref = "msg:wecom:bot:sunqi#sig-1"
        deadline = time.time() + 20
        while not any(e["reference"] == charge_ref for e in ledger_of(d, "sunqi")) and time.time() < deadline:
            time.sleep(0.2)
        charge = [e for e in ledger_of(d, "sunqi") if e["reference"] == charge_ref]
        assert len(charge) == 1, ledger_of(d, "sunqi")
        assert charge[0]["free_delta"] + charge[0]["paid_delta"] == -3, charge
        assert d.stop() == 0, d.logs()
        d.start()
        ledger = ledger_of(d, "sunqi")
        refunds = [e for e in ledger if e["reference"] == f"undelivered:{charge_ref}"]
        assert len(refunds) == 1, ledger
        assert refunds[0]["kind"] == "refund" and refunds[0]["paid_delta"] == 3, refunds
        assert "shutting down before WeCom fetched the answer" in "\n".join(d.log_lines()), d.logs()
        # WeCom's next refresh learns the answer was interrupted; the answer was never posted.
        r = bot_call(d, {"msgid": "sig-r", "aibotid": "b", "msgtype": "stream", "stream": {"id": stream_id}})
        assert r["stream"]["finish"] is True and "中断" in r["stream"]["content"], r
        assert not [p for p, _ in qyapi.responses if p == "/response/sig"], qyapi.responses
    finally:
        assert d.stop() == 0, d.logs()


def test_aibot_answer_whose_response_url_post_fails_is_refunded(upstream, qyapi):
    """WeCom stopped asking before the answer was done, and the late post to `response_url`
    fails: the charge comes back."""
    d = Daemon(upstream.base_url, extra_toml=bot_toml(10), free_daily=100, llm_timeout=30).start()
    try:
        upstream.mode, upstream.delay = "delayed", 10.5  # longer than stream_window_secs = 10
        # Nothing listens on port 9 of 127.0.0.1: the post fails.
        bot_call(d, {"msgid": "late-1", "aibotid": "b", "chattype": "single", "from": {"userid": "zhouba"},
                     "response_url": "http://127.0.0.1:9/response/x", "msgtype": "text",
                     "text": {"content": "慢问题"}})
        refund_ref = "undelivered:msg:wecom:bot:zhouba#late-1"
        deadline = time.time() + 30
        while not any(e["reference"] == refund_ref for e in ledger_of(d, "zhouba")) and time.time() < deadline:
            time.sleep(0.3)
        ledger = ledger_of(d, "zhouba")
        assert [e["paid_delta"] for e in ledger if e["reference"] == refund_ref] == [3], ledger
        assert [e["free_delta"] for e in ledger if e["reference"] == "msg:wecom:bot:zhouba#late-1"] == [-3], ledger
    finally:
        assert d.stop() == 0, d.logs()
