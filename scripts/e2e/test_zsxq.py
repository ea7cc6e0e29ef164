"""zsxq end to end: the real binary polls a fake zsxq API and answers each question exactly
once — across restarts, ambiguous posts and a crash — gently (1059 backs off, 401 stops and
alerts, quiet hours are respected)."""

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import Daemon
from fake_openai import ANSWER
from fake_zsxq import FakeZsxq

BIG_ID = 18446744073709551  # beyond 2^53: exact only if never parsed as a float
GROUP_ID = "51111888224444"


def zsxq_toml(fake, quiet_hours=None, token="good-token"):
    quiet = f'quiet_hours = "{quiet_hours}"' if quiet_hours else ""
    return f"""
[[zsxq]]
id = "star"
group_id = "{GROUP_ID}"
access_token = "{token}"
schedule = "* * * * * *"
silenced = true
api_base = "{fake.url}"
min_interval_ms = 500
{quiet}
"""


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def fake():
    f = FakeZsxq()
    yield f
    f.stop()


def test_each_question_answered_once_across_restarts(upstream, fake):
    fake.add(BIG_ID, "第一个问题 <e type=\"hashtag\" hid=\"1\" title=\"%23AI%23\" />")
    fake.add(412851145544158, "第二个问题", owner=None)  # anonymous
    d = Daemon(upstream.base_url, extra_toml=zsxq_toml(fake), free_daily=100).start()
    try:
        wait_for(lambda: fake.answers_for(BIG_ID) and fake.answers_for(412851145544158), 20, "both answers")
        body = fake.answers_for(BIG_ID)[0]
        assert body == {"req_data": {"text": ANSWER, "image_ids": [], "silenced": True}}
        # The markup reached the model as plain text.
        asked = [r[2]["messages"][-1]["content"] for r in upstream.requests if "第一个问题" in json.dumps(r[2], ensure_ascii=False)]
        assert asked and "#AI#" in asked[-1] and "<e " not in asked[-1], asked
        # zsxq keeps listing them (a stale listing): they are still not answered again.
        fake.list_answered_too = True
        time.sleep(2.5)
        assert d.stop() == 0
        d.start()
        time.sleep(2.5)
        assert len(fake.answers_for(BIG_ID)) == 1
        assert len(fake.answers_for(412851145544158)) == 1
        status = json.loads(d.cli("--json", "zsxq", "list").stdout)[0]
        assert status["id"] == "star" and status["answered_today"] == 2 and not status["token_expired"]
        # The group pays: its payer spent 2 answers' worth of free credits.
        payer = d.user(status["payer_uid"])
        assert len([e for e in payer["ledger"] if e["kind"] == "usage"]) == 2
    finally:
        d.stop()


def test_an_ambiguous_post_and_a_crash_do_not_double_answer(upstream, fake):
    fake.add(7001, "会被重置连接的问题")
    fake.reset_answers.add(7001)
    fake.list_answered_too = True
    d = Daemon(upstream.base_url, extra_toml=zsxq_toml(fake), free_daily=100).start()
    try:
        wait_for(lambda: fake.answers_for(7001), 20, "the first post")
        d.proc.kill()  # crash right after posting, before anything is recorded as answered
        d.proc.wait()
        d.start()
        time.sleep(3)
        assert len(fake.answers_for(7001)) == 1, "the topic was answered twice"
        assert len([r for r in upstream.requests if "会被重置连接的问题" in json.dumps(r[2], ensure_ascii=False)]) == 1, \
            "the answer was asked of the LLM again"
    finally:
        d.stop()


def test_1059_backs_off(upstream, fake):
    fake.too_frequent = 2
    fake.add(7101, "退避测试")
    d = Daemon(upstream.base_url, extra_toml=zsxq_toml(fake), free_daily=100).start()
    try:
        wait_for(lambda: fake.answers_for(7101), 25, "the answer after backing off")
        times = [t for t, _, _ in fake.list_requests]
        assert times[1] - times[0] >= 1.9, f"no backoff after 1059: {times[:3]}"
        assert times[2] - times[1] >= 3.8, f"backoff does not grow: {times[:3]}"
    finally:
        d.stop()


def test_401_stops_polling_alerts_and_resumes_with_a_new_token(upstream, fake):
    fake.add(7201, "token 过期时的问题")
    d = Daemon(upstream.base_url, extra_toml=zsxq_toml(fake, token="expired-token"), free_daily=100).start()
    try:
        wait_for(lambda: fake.list_requests, 10, "a first poll")
        time.sleep(3)
        assert len(fake.list_requests) == 1, "kept polling after a 401"
        status = json.loads(d.cli("--json", "zsxq", "list").stdout)[0]
        assert status["token_expired"] is True
        assert "access_token 已失效" in d.logs()
        d.cli("zsxq", "token", "star", "good-token")
        wait_for(lambda: fake.answers_for(7201), 15, "the answer after the token was replaced")
    finally:
        d.stop()


def test_quiet_hours_are_respected(upstream, fake):
    now = datetime.now(timezone(timedelta(hours=8)))
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    quiet = f"{start:%H:%M}-{end:%H:%M}"
    fake.add(7301, "夜里的问题")
    d = Daemon(upstream.base_url, extra_toml=zsxq_toml(fake, quiet_hours=quiet), free_daily=100).start()
    try:
        time.sleep(3)
        assert fake.list_requests == [], "polled during quiet hours"
        d.cli("zsxq", "pause", "star")
        d.cli("zsxq", "resume", "star")
    finally:
        d.stop()


def test_sigkill_at_random_moments_while_answering_and_chatting(upstream, fake):
    """Topics being answered and chat requests in flight while the daemon is killed at random
    moments: at the end every topic is answered exactly once and every ledger sums up."""
    import random
    import threading
    import urllib.request
    seed = int(time.time())
    rng = random.Random(seed)
    print(f"kill timing seed: {seed}")
    topics = [9100 + i for i in range(12)]
    for t in topics:
        fake.add(t, f"第 {t} 个问题")
    fake.list_answered_too = True
    d = Daemon(upstream.base_url, extra_toml=zsxq_toml(fake), free_daily=1000).start()
    try:
        uid, token = d.new_user("chatter", credits=200)
        for round_ in range(3):
            stop = threading.Event()

            def chat():
                body = json.dumps({"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}).encode()
                while not stop.is_set():
                    req = urllib.request.Request(d.url + "/v1/chat/completions", data=body, method="POST")
                    req.add_header("content-type", "application/json")
                    req.add_header("authorization", f"Bearer {token}")
                    try:
                        urllib.request.urlopen(req, timeout=5).read()
                    except Exception:
                        time.sleep(0.02)

            threads = [threading.Thread(target=chat) for _ in range(2)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.5, 2.0))
            d.proc.kill()
            d.proc.wait(timeout=10)
            stop.set()
            for t in threads:
                t.join(timeout=10)
            d.start()
            assert d.audit()["mismatches"] == [], f"round {round_} (seed {seed})"
        wait_for(lambda: all(fake.answers_for(t) for t in topics), 45, "every topic answered")
        time.sleep(2)  # more polls over the stale listing: nothing answered again
        for t in topics:
            assert len(fake.answers_for(t)) == 1, f"topic {t} answered {len(fake.answers_for(t))} times (seed {seed})"
        assert d.audit()["mismatches"] == []
    finally:
        d.stop()


def test_a_reload_replaces_the_token_and_restarts_only_that_poller(upstream, fake):
    """The operator rotates the zsxq token in the file and reloads: the group's poller restarts
    with the new token (after the old one's run), and nothing is answered twice."""
    fake.token = "rotated-token"
    fake.add(7301, "轮换令牌前的问题")
    d = Daemon(upstream.base_url, extra_toml=zsxq_toml(fake, token="old-token"), free_daily=100).start()
    try:
        wait_for(lambda: fake.list_requests, 10, "a first poll")
        wait_for(lambda: json.loads(d.cli("--json", "zsxq", "list").stdout)[0]["token_expired"], 10, "the 401")
        d.config.write_text(d.config.read_text().replace('access_token = "old-token"', 'access_token = "rotated-token"'))
        out = d.cli("reload").stdout
        assert "zsxq" in out, out
        wait_for(lambda: fake.answers_for(7301), 15, "the answer with the rotated token")
        assert "restarting the poller" in d.logs()
        # A reload that changes nothing of the group keeps its poller.
        polls = len(fake.list_requests)
        d.cli("reload")
        assert d.logs().count("restarting the poller") == 1
        time.sleep(2.5)
        assert len(fake.list_requests) > polls, "still polling"
        assert len(fake.answers_for(7301)) == 1
    finally:
        d.stop()
