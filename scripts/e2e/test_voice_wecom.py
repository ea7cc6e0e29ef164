"""Voice messages in on WeCom, with wechatpy's WeCom crypto playing WeCom against the real binary.

The self-built app: a voice message's AMR audio downloaded through WeCom's media/get (the fake
qyapi, with the app's token), converted by ffmpeg, transcribed by the fake upstream (which checks
the multipart upload and the model) and answered through message/send with the voice price
charged; WeCom's retries of the message join the one answer (one download); the failures (too
big, corrupt, unknown media, transcriber down) a clear reply at no charge. The AI bot: WeCom's
own transcript answered as a voice message (voice price, a spoken command stays chat), an
empty one a clear reply.

Fixtures and helpers are test_voice.py's (audio made by the test; AMR through ffmpeg where it
is installed) and test_wecom.py's (encrypted callbacks)."""

import time

import pytest

from conftest import COST, Daemon
from fake_openai import ANSWER
from fake_wechat import FakeWechat
from test_voice import FFMPEG, HEARD, MAX_BYTES, PER_MINUTE, VOICE_CREDITS, amr_bytes, needs_ffmpeg, speech_toml
import test_wecom as wecom
from test_wecom import BOT, CORP, bot_call, ledger_of, post, wecom_message

TOO_LONG = "语音太长了，请控制在 30 秒以内，或者发送文字。"
NOT_HEARD = "这条语音没有听清，请再说一次或者发送文字。"
NO_VOICE = "语音暂不支持，请发送文字。"


@pytest.fixture(scope="module")
def qyapi():
    fake = FakeWechat()
    yield fake
    fake.stop()


def wecom_toml(qyapi):
    return wecom.wecom_toml(qyapi, window_secs=30)


@pytest.fixture(scope="module")
def daemon(upstream, qyapi):
    d = Daemon(upstream.base_url, extra_toml=speech_toml() + wecom_toml(qyapi), free_daily=100,
               llm_timeout=10).start()
    yield d
    assert d.stop() == 0, d.logs()


@pytest.fixture(autouse=True)
def clean(upstream, qyapi):
    upstream.transcript, upstream.transcribe_status = "今天天气怎么样", 200
    upstream.transcriptions.clear()
    qyapi.media_gets.clear()
    yield
    upstream.transcribe_status = 200


def voice_fields(media_id, recognition=None):
    rec = f"<Recognition><![CDATA[{recognition}]]></Recognition>" if recognition is not None else ""
    return (f"<MsgType><![CDATA[voice]]></MsgType><MediaId><![CDATA[{media_id}]]></MediaId>"
            f"<Format><![CDATA[amr]]></Format>{rec}")


MSG_IDS = iter(range(9_100_000, 9_200_000))


def send_app_voice(d, qyapi, user, media_id, recognition=None, retries=1):
    """Delivers an app voice message (`retries` times, as WeCom redelivers one message) and
    waits for what the app sends `user` through message/send; returns the texts sent."""
    url, body = wecom_message(d, user, "", next(MSG_IDS), fields=voice_fields(media_id, recognition))
    for _ in range(retries):
        assert post(url, body) == (200, "")
    deadline = time.time() + 20
    while not sent_to(qyapi, user) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # room for a second (wrong) answer to show up
    return sent_to(qyapi, user)


def sent_to(qyapi, user):
    with qyapi.lock:
        return [m["text"]["content"] if m["msgtype"] == "text" else m["markdown"]["content"]
                for m in qyapi.wecom_sent if m["touser"] == user]


def usage(d, user):
    return [e for e in ledger_of(d, user) if e["kind"] == "usage"]


def last_question(upstream):
    return upstream.requests[-1][2]["messages"][-1]["content"]


# -- the self-built app --------------------------------------------------------------------------

@needs_ffmpeg
def test_app_voice_is_downloaded_once_converted_transcribed_and_charged(daemon, upstream, qyapi):
    import io
    import wave
    qyapi.media["wv-ok"] = amr_bytes(1.5)
    before = upstream.chat_request_count()
    sent = send_app_voice(daemon, qyapi, "wv_amr", "wv-ok", retries=3)
    assert sent == [f"{HEARD}今天天气怎么样\n\n{ANSWER}"], sent
    assert qyapi.media_gets == ["wv-ok"], "WeCom's retries join the one answer: one download"
    assert upstream.chat_request_count() - before == 1
    assert len(upstream.transcriptions) == 1
    up = upstream.transcriptions[0]
    assert up["fields"]["model"] == "whisper-1", up["fields"]
    assert up["filename"] == "voice.wav" and up["content_type"] == "audio/wav"
    with wave.open(io.BytesIO(up["file"])) as w:  # what ffmpeg made of the AMR
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
    assert 1.3 < (len(up["file"]) - 44) / 32000 < 1.7
    assert last_question(upstream) == "今天天气怎么样"
    entries = usage(daemon, "wv_amr")
    # 1.5 s is one started minute.
    assert [e["free_delta"] for e in entries] == [-(COST + VOICE_CREDITS + PER_MINUTE)], entries


@needs_ffmpeg
def test_app_voice_with_an_expired_token_refetches_it_once(daemon, upstream, qyapi):
    qyapi.media["wv-tok"] = amr_bytes(1.0)
    assert send_app_voice(daemon, qyapi, "wv_warm", "wv-none-1") == [NOT_HEARD]  # a token is cached
    qyapi.media_gets.clear()
    qyapi.expire_wecom_tokens()
    tokens_before = qyapi.gettoken_requests
    sent = send_app_voice(daemon, qyapi, "wv_tok", "wv-tok")
    assert sent == [f"{HEARD}今天天气怎么样\n\n{ANSWER}"], sent
    assert qyapi.media_gets == ["wv-tok", "wv-tok"], "42001, then again with a new token"
    assert qyapi.gettoken_requests == tokens_before + 1
    assert [e["free_delta"] for e in usage(daemon, "wv_tok")] == [-(COST + VOICE_CREDITS + PER_MINUTE)]


def test_app_recognition_is_answered_without_a_download_and_a_spoken_command_is_chat(daemon, upstream, qyapi):
    before = upstream.chat_request_count()
    sent = send_app_voice(daemon, qyapi, "wv_rec", "wv-never", recognition="明天会下雨吗")
    assert sent == [f"{HEARD}明天会下雨吗\n\n{ANSWER}"], sent
    assert qyapi.media_gets == [] and upstream.transcriptions == []
    assert last_question(upstream) == "明天会下雨吗"
    assert [e["free_delta"] for e in usage(daemon, "wv_rec")] == [-(COST + VOICE_CREDITS)]
    sent = send_app_voice(daemon, qyapi, "wv_cmd", "wv-never", recognition="/quota")
    assert sent == [f"{HEARD}/quota\n\n{ANSWER}"], "answered by the model, not the quota command"
    assert upstream.chat_request_count() - before == 2


def test_app_oversize_voice_is_refused_at_no_charge(daemon, upstream, qyapi):
    qyapi.media["wv-big"] = b"#!AMR\n" + b"\x3c" * (MAX_BYTES + 100)
    before = upstream.chat_request_count()
    sent = send_app_voice(daemon, qyapi, "wv_big", "wv-big")
    if FFMPEG is None:
        assert sent == [NO_VOICE], sent
    else:
        assert sent == [TOO_LONG], sent
        assert qyapi.media_gets == ["wv-big"], "refused on the announced size"
    assert upstream.transcriptions == [] and upstream.chat_request_count() == before
    assert usage(daemon, "wv_big") == [], "nothing charged"


@needs_ffmpeg
def test_app_corrupt_or_unknown_media_is_a_clear_reply_at_no_charge(daemon, upstream, qyapi):
    qyapi.media["wv-cut"] = b"#!AMR\n\x3c" + b"\x00" * 10
    qyapi.media["wv-garbage"] = b"this is not audio, only text pretending to be a voice message"
    before = upstream.chat_request_count()
    for media in ("wv-cut", "wv-garbage", "wv-expired"):
        user = media.replace("-", "_")
        assert send_app_voice(daemon, qyapi, user, media) == [NOT_HEARD], media
        assert usage(daemon, user) == [], "nothing charged"
    assert qyapi.media_gets == ["wv-cut", "wv-garbage", "wv-expired"], "the expired one got errcode 40007"
    assert upstream.transcriptions == [] and upstream.chat_request_count() == before


@needs_ffmpeg
def test_app_transcriber_down_costs_nothing(daemon, upstream, qyapi):
    qyapi.media["wv-down"] = amr_bytes(1.0)
    upstream.transcribe_status = 500
    before = upstream.chat_request_count()
    assert send_app_voice(daemon, qyapi, "wv_down", "wv-down") == [NOT_HEARD]
    assert len(upstream.transcriptions) >= 1, "the upstream was asked"
    assert upstream.chat_request_count() == before
    assert usage(daemon, "wv_down") == []


def test_app_voice_without_speech_or_ffmpeg_is_a_clear_reply(upstream, qyapi):
    d = Daemon(upstream.base_url, extra_toml=speech_toml("/nonexistent/ffmpeg") + wecom_toml(qyapi),
               free_daily=100, llm_timeout=10).start()
    try:
        qyapi.media["wv-x"] = b"#!AMR\n" + b"\x3c" + b"\x00" * 31
        assert send_app_voice(d, qyapi, "wv_noff", "wv-x") == [NO_VOICE]
        assert qyapi.media_gets == [], "nothing downloaded that could not be used"
        assert usage(d, "wv_noff") == []
    finally:
        assert d.stop() == 0, d.logs()
    d = Daemon(upstream.base_url, extra_toml=wecom_toml(qyapi), free_daily=100, llm_timeout=10).start()
    try:
        assert send_app_voice(d, qyapi, "wv_nospeech", "wv-x") == [NO_VOICE], "no [speech]"
        assert qyapi.media_gets == [] and usage(d, "wv_nospeech") == []
    finally:
        assert d.stop() == 0, d.logs()


# -- the AI bot ------------------------------------------------------------------------------------

def bot_voice(d, user, msgid, content):
    """Sends an AI-bot voice message and refreshes its stream to the end; returns the first
    reply and every stream content seen."""
    first = bot_call(d, {"msgid": msgid, "aibotid": "b", "chattype": "single", "from": {"userid": user},
                         "msgtype": "voice", "voice": {"content": content}})
    stream = first["stream"]
    seen = [stream["content"]]
    for i in range(200):
        if stream["finish"]:
            break
        time.sleep(0.1)
        stream = bot_call(d, {"msgid": f"{msgid}-r{i}", "aibotid": "b", "msgtype": "stream",
                              "stream": {"id": stream["id"]}})["stream"]
        seen.append(stream["content"])
    assert stream["finish"], seen[-3:]
    return first, seen


def test_aibot_voice_is_answered_with_the_voice_price(daemon, upstream):
    upstream.pieces = [f"第{i}段。" for i in range(10)]
    upstream.piece_delay = 0.1
    before = upstream.chat_request_count()
    _, seen = bot_voice(daemon, "bv_user", "bv-1", "明天会下雨吗")
    heard = f"{HEARD}明天会下雨吗\n\n"
    assert seen[-1] == heard + "".join(upstream.pieces), seen[-1]
    # What was heard shows from the start, and every refresh extends the one before.
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:])), seen
    assert any(x.startswith(heard) and x != seen[-1] for x in seen), seen
    assert upstream.chat_request_count() - before == 1
    assert last_question(upstream) == "明天会下雨吗"
    assert upstream.transcriptions == [], "WeCom's transcript is used as it is"
    charge = [e for e in ledger_of(daemon, "bv_user") if e["reference"] == "msg:wecom:bot:bv_user#bv-1"]
    assert [e["free_delta"] for e in charge] == [-(COST + VOICE_CREDITS)], charge


def test_aibot_spoken_command_is_chat_and_empty_voice_a_clear_reply(daemon, upstream):
    before = upstream.chat_request_count()
    _, seen = bot_voice(daemon, "bv_cmd", "bv-2", "/quota")
    assert seen[-1] == f"{HEARD}/quota\n\n{ANSWER}", seen[-1]
    assert upstream.chat_request_count() - before == 1, "answered by the model, not the quota command"
    assert [e["free_delta"] for e in usage(daemon, "bv_cmd")] == [-(COST + VOICE_CREDITS)]

    first, seen = bot_voice(daemon, "bv_empty", "bv-3", "  ")
    assert first["stream"]["finish"] is True and seen == [NOT_HEARD], seen
    assert upstream.chat_request_count() - before == 1
    assert usage(daemon, "bv_empty") == []
