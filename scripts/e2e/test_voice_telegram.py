"""Voice notes on Telegram, end to end: the real binary polling a fake Bot API
(fake_telegram.py) and transcribing through the fake OpenAI-compatible upstream. A voice note
is fetched (getFile, then the file URL), transcribed as it is (OGG/Opus needs no conversion),
what was heard is said in a message of its own, the answer follows, and the ledger holds the
answer's price plus the voice's; one announced too big is refused before getFile, at no charge.
A scope with `voice_reply` gets the text, then the answer spoken (sendVoice, OGG/Opus), charged
apart."""

import json
import secrets
import time

import pytest

from conftest import COST, Daemon
from fake_openai import ANSWER
from fake_telegram import FakeTelegram
from test_voice import MAX_BYTES, PER_MINUTE, VOICE_CREDITS, speech_toml

HEARD = "你说的是：今天天气怎么样"


@pytest.fixture(scope="module")
def telegram():
    fake = FakeTelegram()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def tg_daemon(upstream, telegram):
    toml = speech_toml() + f"""
[[telegram]]
id = "main"
token = "{telegram.token}"
api_url = "{telegram.url}"
edit_interval_ms = 100
"""
    d = Daemon(upstream.base_url, extra_toml=toml, free_daily=100, llm_timeout=10).start()
    yield d
    assert d.stop() == 0, d.logs()


def wait_for(check, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def usage_of(daemon, tg_user):
    found = json.loads(daemon.cli("--json", "user", "find", str(tg_user)).stdout)
    if not found:
        return []
    ledger = json.loads(daemon.cli("--json", "user", "show", str(found[0]["uid"]), "--ledger", "100").stdout)["ledger"]
    return [e["free_delta"] + e.get("paid_delta", 0) for e in ledger if e["kind"] == "usage"]


def test_a_voice_note_is_fetched_transcribed_shown_answered_and_charged(tg_daemon, telegram, upstream):
    chat = 5101
    ogg = b"OggS\x00\x02" + secrets.token_bytes(3000)  # sent to the upstream as it is
    before = len(upstream.transcriptions)
    telegram.push_voice(chat, "voice-ok", ogg, seconds=5)
    texts = wait_for(lambda: (t := telegram.texts_to(chat)) and any(ANSWER in x for x in t) and t)
    assert texts[0] == HEARD, texts
    assert telegram.downloads.count("voice/voice-ok.oga") == 1
    assert len(upstream.transcriptions) == before + 1
    up = upstream.transcriptions[-1]
    assert up["fields"]["model"] == "whisper-1" and up["file"] == ogg, up["fields"]
    assert up["filename"].endswith(".ogg"), up["filename"]
    assert upstream.requests[-1][2]["messages"][-1]["content"] == "今天天气怎么样"
    # 5 s is one started minute, in the answer's one entry.
    wait_for(lambda: usage_of(tg_daemon, chat))
    assert usage_of(tg_daemon, chat) == [-(COST + VOICE_CREDITS + PER_MINUTE)]


def test_a_voice_note_announced_too_big_is_refused_before_getfile_at_no_charge(tg_daemon, telegram, upstream):
    chat = 5102
    before = len(upstream.transcriptions)
    calls_before = telegram.calls.count("getFile")
    telegram.push_voice(chat, "voice-big", b"OggS", seconds=5, announced=MAX_BYTES * 10)
    texts = wait_for(lambda: telegram.texts_to(chat))
    assert "30 秒" in texts[0], texts
    time.sleep(0.5)
    assert telegram.calls.count("getFile") == calls_before, "nothing fetched"
    assert "voice/voice-big.oga" not in telegram.downloads
    assert len(upstream.transcriptions) == before
    assert usage_of(tg_daemon, chat) == []


def test_a_scope_with_voice_reply_gets_the_text_then_a_voice_note_charged_apart(upstream):
    fake = FakeTelegram(token="456:DEF")
    toml = speech_toml() + f"""speech_model = "tts-1"
voice = "nova"
speech_credits = 4

[[scopes]]
scope = "telegram:talker"
voice_reply = true

[[telegram]]
id = "talker"
token = "{fake.token}"
api_url = "{fake.url}"
edit_interval_ms = 100
"""
    d = Daemon(upstream.base_url, extra_toml=toml, free_daily=100, llm_timeout=10).start()
    try:
        upstream.speech_requests.clear()
        chat = 5103
        with fake.lock:
            fake.updates.append({"update_id": 1, "message": {
                "message_id": 1, "date": int(time.time()), "text": "天气如何",
                "chat": {"id": chat, "type": "private", "first_name": "Bo"},
                "from": {"id": chat, "is_bot": False, "first_name": "Bo"}}})
        voice = wait_for(lambda: [raw for (m, raw) in fake.sent if m == "sendVoice"])
        assert any(ANSWER in t for t in fake.texts_to(chat)), "the text first, whole"
        assert [m for (m, _) in fake.sent].index("sendVoice") > 0
        assert upstream.speech_requests[-1] == {"model": "tts-1", "input": ANSWER, "voice": "nova",
                                                "response_format": "opus"}
        assert upstream.speech_audio in voice[0], "the upstream's audio, as it came"
        assert sorted(wait_for(lambda: len(usage_of(d, chat)) == 2 and usage_of(d, chat))) == sorted([-COST, -4])
    finally:
        assert d.stop() == 0, d.logs()
        fake.stop()
