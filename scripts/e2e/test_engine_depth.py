"""Engine depth against the real binary: two fake upstreams (one failing) and the fallback,
model permissions through the official `openai` client, sensitive words on questions (from a
word file, reloaded) and on streamed answers, the moderation endpoint, keyword replies, and
check-config's report of bad rules."""

import json
import subprocess
import time
import urllib.request

import openai
import pytest

from conftest import BINARY, MODEL, Daemon
from fake_openai import ANSWER, ANSWER_PIECES, FakeOpenAI
from test_operations import MP, mp_post, mp_send


def mp_send_picture(daemon, openid, pic_url):
    """A picture message (PicUrl + MediaId), as WeChat sends it."""
    return mp_post(daemon, openid, f"<MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[{pic_url}]]></PicUrl>"
                                   "<MediaId><![CDATA[media-1]]></MediaId>")


WORDS = "# 敏感词表\n机密\n内部资料\n"


class DepthDaemon(Daemon):
    def __init__(self, primary, backup):
        # (picture_trusted_hosts lands in [bot]: the fake upstream serves the pictures on
        # loopback, which only a trusted host reaches.)
        super().__init__(primary.base_url, free_daily=100, extra_toml=f"""
picture_trusted_hosts = ["127.0.0.1"]

[[llm.upstreams]]
id = "backup"
base_url = "{backup.base_url}"
api_keys = ["sk-backup-key"]
max_retries = 0
headers = {{ "X-Tenant" = "e2e" }}

[[llm.models]]
name = "gpt-backup"
credits = 2
upstream = "backup"
upstream_model = "backup-real-name"

[[llm.models]]
name = "gpt-vip"
credits = 1
upstream = "backup"
paid_only = true

[[llm.models]]
name = "gpt-eyes"
credits = 1
vision = true
credits_per_image = 2

[[scopes]]
scope = "wechat_mp:{MP['id']}"
model = "gpt-eyes"

[images]
model = "img-model"
credits = 5

[[filters]]
id = "law"
word_files = ["words.txt"]
apply_to = "input"
refusal = "该问题无法回答。"

[[filters]]
id = "out"
words = ["forbidden-output"]
apply_to = "output"

[[keywords]]
id = "price"
match = "contains"
patterns = ["价格"]
reply = "价格表：10 元 100 次"
priority = 1

[moderation]
base_url = "{primary.base_url}"
model = "omni-moderation-latest"
refusal = "内容未通过审核。"

[[wechat_mp]]
id = "{MP['id']}"
app_id = "{MP['app_id']}"
token = "{MP['token']}"
passive_wait_ms = 3000
retry_window_ms = 4500
""")
        (self.dir / "words.txt").write_text(WORDS)
        # The default model falls back to the backup upstream's model.
        text = self.config.read_text()
        self.config.write_text(text.replace("credits = 3\n", 'credits = 3\nfallbacks = ["gpt-backup"]\n', 1))


@pytest.fixture(scope="module")
def fakes():
    primary, backup = FakeOpenAI().start(), FakeOpenAI().start()
    yield primary, backup
    primary.stop()
    backup.stop()


@pytest.fixture(scope="module")
def depth(fakes):
    d = DepthDaemon(*fakes).start()
    yield d
    d.stop()


def client(daemon, token):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key=token, max_retries=0)


def test_a_failing_upstream_falls_back_to_the_other(depth, fakes):
    primary, backup = fakes
    uid, token = depth.new_user("fallback", credits=20)
    primary.mode = "error"
    try:
        before_backup = backup.chat_request_count()
        r = client(depth, token).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello?"}])
        assert r.choices[0].message.content == ANSWER
        assert backup.chat_request_count() == before_backup + 1, "answered by the backup"
        _, headers, body = backup.requests[-1]
        assert body["model"] == "backup-real-name", "the model's name at that upstream"
        assert headers.get("x-tenant") == "e2e" and headers.get("authorization") == "Bearer sk-backup-key"
        assert depth.user(uid)["balance"]["free_left"] == 97, "charged at the chosen model's price (3)"
    finally:
        primary.mode = "ok"
    health = {u["id"]: u for u in json.loads(depth.cli("--json", "upstreams").stdout)}
    assert health["default"]["errors_total"] >= 1 and health["default"]["last_error"], health
    assert health["backup"]["requests_total"] >= 1 and health["backup"]["errors_total"] == 0
    table = depth.cli("upstreams").stdout
    assert table.splitlines()[0].split()[:2] == ["UPSTREAM", "STATE"] and "backup" in table
    with urllib.request.urlopen(depth.url + "/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert 'chatrelay_upstream_state{upstream="backup"} 0' in metrics
    assert 'chatrelay_llm_fallbacks_total{upstream="backup"}' in metrics


def test_model_permissions_through_the_openai_client(depth):
    uid, token = depth.new_user("vip-wannabe")
    with pytest.raises(openai.PermissionDeniedError) as e:
        client(depth, token).chat.completions.create(
            model="gpt-vip", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_allowed"
    depth.cli("grant", str(uid), "5", "--reason", "vip")
    r = client(depth, token).chat.completions.create(
        model="gpt-vip", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == ANSWER


def test_questions_keywords_and_moderation_on_the_official_account(depth, fakes):
    primary, _ = fakes
    before = primary.chat_request_count()
    assert mp_send(depth, "o_depth", "请问价格多少？") == "价格表：10 元 100 次"
    assert mp_send(depth, "o_depth", "给我看看 机 密 文件") == "该问题无法回答。"
    assert mp_send(depth, "o_depth", "FLAGME please") == "内容未通过审核。"
    assert primary.chat_request_count() == before, "none of these reached the LLM"
    assert primary.moderations and primary.moderations[-1]["model"] == "omni-moderation-latest"
    assert "Hello" in (mp_send(depth, "o_depth", "an ordinary question") or "")

    hits = json.loads(depth.cli("--json", "hits").stdout)
    rules = {(h["rule"], h["scope"], h["direction"]) for h in hits}
    assert ("law", "wechat_mp:ops", "input") in rules, hits
    assert ("moderation", "wechat_mp:ops", "input") in rules, hits
    table = depth.cli("hits", "--limit", "5").stdout
    assert table.splitlines()[0].split()[:4] == ["TIME", "UID", "SCOPE", "DIR"] and "law" in table


def test_a_streamed_answer_is_cut_by_an_output_rule(depth, fakes):
    primary, _ = fakes
    _, token = depth.new_user("cut", credits=10)
    primary.pieces = ["This is ", "fine. ", "forbidden-", "output and more"]
    try:
        stream = client(depth, token).chat.completions.create(
            model=MODEL, stream=True, messages=[{"role": "user", "content": "tell me"}])
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        primary.pieces = list(ANSWER_PIECES)
    assert text.startswith("This is fine. "), text
    assert "output and more" not in text and "已中止" in text, text


def test_word_lists_reload_with_the_configuration(depth):
    assert "Hello" in (mp_send(depth, "o_reload_words", "新词出现了") or "")
    (depth.dir / "words.txt").write_text(WORDS + "新词\n")
    depth.cli("reload")
    assert mp_send(depth, "o_reload_words", "新词出现了") == "该问题无法回答。"


def test_check_config_reports_bad_rules_with_key_and_line(tmp_path):
    (tmp_path / "bad.txt").write_bytes("好词\n".encode() + b"\xff\xfe\n" + "另一个\n".encode())
    cfg = tmp_path / "chatrelay.toml"
    cfg.write_text("""
[[filters]]
id = "law"
word_files = ["bad.txt"]

[[keywords]]
id = "re"
match = "regex"
patterns = ["(unclosed"]
reply = "x"
""")
    r = subprocess.run([str(BINARY), "--config", str(cfg), "check-config"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r
    assert "filters[0].word_files[0] (line 2)" in r.stderr, r.stderr
    assert "keywords[0].patterns[0]" in r.stderr and "unclosed" in r.stderr, r.stderr


def test_pictures_reach_a_vision_model_and_cost_per_picture(depth, fakes):
    primary, _ = fakes
    openid = "o_eyes"
    assert "Hello" in (mp_send(depth, openid, "hi first") or "")
    uid = json.loads(depth.cli("--json", "user", "find", openid).stdout)[0]["uid"]
    free_before = depth.user(uid)["balance"]["free_left"]
    pic = f"http://127.0.0.1:{primary.port}/picture.png"
    answer = mp_send_picture(depth, openid, pic)
    assert answer == ANSWER, answer
    body = primary.requests[-1][2]
    assert body["model"] == "gpt-eyes"
    parts = body["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "请描述这张图片。"}, parts
    assert parts[1]["type"] == "image_url" and parts[1]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")
    assert depth.user(uid)["balance"]["free_left"] == free_before - 1 - 2, "the answer plus 2 per picture"

    # A model that cannot see says so, for free, without calling the LLM.
    depth.cli("grant", str(uid), "1", "--reason", "setup")
    assert "gpt-fake" in mp_send(depth, openid, "/model gpt-fake")
    before = primary.chat_request_count()
    answer = mp_send_picture(depth, openid, pic)
    assert "看不到图片" in answer, answer
    assert primary.chat_request_count() == before
    # A picture that cannot be downloaded is reported, not guessed at.
    mp_send(depth, openid, "/model gpt-eyes")
    answer = mp_send_picture(depth, openid, f"http://127.0.0.1:{primary.port}/missing")
    assert answer == "图片没有收到，请重新发送。", answer


def test_the_image_command_draws_and_charges(depth, fakes):
    primary, _ = fakes
    openid = "o_draw"
    answer = mp_send(depth, openid, "/image 雪地里的小猫")
    assert answer == f"图片已生成：http://127.0.0.1:{primary.port}/generated-1.png", answer
    assert primary.image_requests[-1] == {"model": "img-model", "prompt": "雪地里的小猫", "n": 1,
                                          "response_format": "url"}, primary.image_requests[-1]
    uid = json.loads(depth.cli("--json", "user", "find", openid).stdout)[0]["uid"]
    ledger = depth.user(uid)["ledger"]
    assert ledger[0]["free_delta"] == -5 and "image" in ledger[0]["reason"], ledger
    assert "用法" in mp_send(depth, openid, "画图"), "the command without a prompt explains itself"
    assert mp_send(depth, openid, "/image 机密 文件") == "该问题无法回答。", "the prompt is checked too"


def test_the_web_page_gets_keyword_answers_and_pictures_streamed(depth, fakes):
    primary, _ = fakes
    _, token = depth.new_user("web-page", credits=20)
    web = openai.OpenAI(base_url=depth.url + "/v1", api_key=token, max_retries=0,
                        default_headers={"X-Chatrelay-Client": "web"})

    def streamed(c, text):
        chunks = c.chat.completions.create(model=MODEL, stream=True, messages=[{"role": "user", "content": text}])
        return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

    before = primary.chat_request_count()
    assert streamed(web, "价格多少？") == "价格表：10 元 100 次"
    drawn = streamed(web, "/image 小猫")
    assert drawn == f"![image](http://127.0.0.1:{primary.port}/generated-1.png)", drawn
    assert primary.chat_request_count() == before, "neither reached the chat model"
    # An API client asked a model, and gets the model.
    assert streamed(client(depth, token), "价格多少？") == ANSWER
