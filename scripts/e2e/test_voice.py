"""Voice messages in on the Official Account, with wechatpy playing WeChat (signed, encrypted
callbacks) against the real binary: WeChat's Recognition used as is (nothing downloaded), AMR
audio downloaded through media/get, converted by ffmpeg and transcribed by the fake upstream
(which checks the multipart upload), and the failures (too big, corrupt, transcriber down, no
ffmpeg) answered clearly at no charge. Audio fixtures are made here: a WAV with the `wave`
module, turned into AMR with ffmpeg where it is installed (those tests skip, saying why, where
it is not)."""

import io
import json
import math
import secrets
import shutil
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import wave

import pytest

from conftest import BINARY, COST, Daemon
from fake_openai import ANSWER
from fake_wechat import FakeWechat
from test_wechat_mp import MAIN, WeChat

VOICE_CREDITS, PER_MINUTE, MAX_BYTES = 2, 3, 16_000
HEARD = "你说的是："
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (CI installs it: .ci/run)")


def wav_bytes(seconds=1.5, rate=8000):
    """A mono 16-bit WAV of a 440 Hz tone, made with the standard library."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                          for i in range(int(seconds * rate)))
        w.writeframes(frames)
    return buf.getvalue()


def amr_bytes(seconds=1.5):
    """AMR-NB as WeChat records it: a WAV encoded by ffmpeg where it has the encoder
    (libopencore_amrnb); else (Debian's ffmpeg only decodes AMR) a file of 12.2 kbit/s frames
    with random payloads, which is valid AMR-NB to any decoder (every bit pattern decodes)."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "wav", "-i", "pipe:0",
                          "-ar", "8000", "-ac", "1", "-c:a", "libopencore_amrnb", "-b:a", "12.2k",
                          "-f", "amr", "pipe:1"], input=wav_bytes(seconds), capture_output=True, timeout=30)
    if out.returncode == 0 and out.stdout.startswith(b"#!AMR\n"):
        return out.stdout
    frames = int(seconds * 50)  # 20 ms each
    return b"#!AMR\n" + b"".join(b"\x3c" + secrets.token_bytes(31) for _ in range(frames))


def speex_bytes(seconds=1.5):
    """Speex as WeChat's high-quality voice: a 16 kHz WAV encoded by ffmpeg's libspeex into an
    Ogg stream; None where this ffmpeg has no Speex encoder."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "wav", "-i", "pipe:0",
                          "-ar", "16000", "-ac", "1", "-c:a", "libspeex", "-f", "ogg", "pipe:1"],
                         input=wav_bytes(seconds, rate=16000), capture_output=True, timeout=30)
    return out.stdout if out.returncode == 0 and out.stdout.startswith(b"OggS") else None


def voice_xml(gh, openid, msg_id, media_id, recognition=None, fmt="amr"):
    rec = f"<Recognition><![CDATA[{recognition}]]></Recognition>" if recognition is not None else ""
    return (f"<xml><ToUserName><![CDATA[{gh}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[voice]]></MsgType>"
            f"<MediaId><![CDATA[{media_id}]]></MediaId><Format><![CDATA[{fmt}]]></Format>{rec}"
            f"<MsgId>{msg_id}</MsgId></xml>")


def send_voice(wx, openid, media_id, recognition=None, tries=3, timeout=6.0, fmt="amr"):
    """Delivers a voice message as WeChat does (a try that times out is followed by the next);
    returns the reply's text (None for `success`)."""
    xml = voice_xml(wx.gh, openid, secrets.randbelow(10**18), media_id, recognition, fmt)
    for _ in range(tries):
        try:
            status, body = wx.post_raw(xml, openid, timeout=timeout)
        except (socket.timeout, TimeoutError, urllib.error.URLError):
            continue
        assert status == 200, (status, body)
        reply = wx.open_reply(body)
        return reply["Content"] if reply else None
    return None


def speech_toml(ffmpeg="ffmpeg", max_seconds=30):
    return f"""
[speech]
model = "whisper-1"
credits = {VOICE_CREDITS}
credits_per_minute = {PER_MINUTE}
max_bytes = {MAX_BYTES}
max_seconds = {max_seconds}
ffmpeg = "{ffmpeg}"
"""


def mp_toml(wechat_api):
    return f"""
[[wechat_mp]]
id = "{MAIN['id']}"
app_id = "{MAIN['app_id']}"
app_secret = "secret-main"
token = "{MAIN['token']}"
encoding_aes_key = "{MAIN['aes_key']}"
api_base = "{wechat_api.url}"
passive_wait_ms = 4500
retry_window_ms = 20000
"""


@pytest.fixture(scope="module")
def wechat_api():
    fake = FakeWechat()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def voice_daemon(upstream, wechat_api):
    d = Daemon(upstream.base_url, extra_toml=speech_toml() + mp_toml(wechat_api), free_daily=100,
               llm_timeout=10).start()
    yield d
    assert d.stop() == 0, d.logs()


@pytest.fixture(autouse=True)
def clean_voice(upstream, wechat_api):
    upstream.transcript, upstream.transcribe_status = "今天天气怎么样", 200
    upstream.transcriptions.clear()
    wechat_api.media_gets.clear()
    yield
    upstream.transcribe_status = 200


def usage_of(daemon, openid):
    """The usage ledger entries of the Official Account user `openid` (none when never seen)."""
    found = json.loads(daemon.cli("--json", "user", "find", openid).stdout)
    if not found:
        return []
    uid = found[0]["uid"]
    ledger = json.loads(daemon.cli("--json", "user", "show", str(uid), "--ledger", "1000").stdout)["ledger"]
    return [e for e in ledger if e["kind"] == "usage"]


def last_question(upstream):
    return upstream.requests[-1][2]["messages"][-1]["content"]


def test_recognition_is_answered_without_a_download(voice_daemon, upstream, wechat_api):
    wx = WeChat(voice_daemon, MAIN)
    before = upstream.chat_request_count()
    reply = send_voice(wx, "o_rec", "media-never-fetched", recognition="明天会下雨吗")
    assert reply == f"{HEARD}明天会下雨吗\n\n{ANSWER}", reply
    assert wechat_api.media_gets == [], "WeChat's transcript needs no download"
    assert upstream.transcriptions == [], "nor a transcription"
    assert upstream.chat_request_count() - before == 1
    assert last_question(upstream) == "明天会下雨吗"
    entries = usage_of(voice_daemon, "o_rec")
    assert len(entries) == 1 and entries[0]["free_delta"] == -(COST + VOICE_CREDITS), entries


def test_a_spoken_command_is_plain_chat(voice_daemon, upstream):
    wx = WeChat(voice_daemon, MAIN)
    before = upstream.chat_request_count()
    reply = send_voice(wx, "o_cmd", "m-cmd", recognition="/quota")
    assert reply.endswith(ANSWER), reply
    assert upstream.chat_request_count() - before == 1, "answered by the model, not the quota command"


@needs_ffmpeg
def test_amr_is_downloaded_converted_transcribed_and_charged(voice_daemon, upstream, wechat_api):
    wechat_api.media["amr-ok"] = amr_bytes(1.5)
    wx = WeChat(voice_daemon, MAIN)
    reply = send_voice(wx, "o_amr", "amr-ok")
    assert reply == f"{HEARD}今天天气怎么样\n\n{ANSWER}", reply
    assert wechat_api.media_gets == ["amr-ok"]
    assert len(upstream.transcriptions) == 1
    up = upstream.transcriptions[0]
    assert up["fields"]["model"] == "whisper-1" and up["fields"]["response_format"] == "json", up["fields"]
    assert up["filename"] == "voice.wav" and up["content_type"] == "audio/wav"
    with wave.open(io.BytesIO(up["file"])) as w:  # what ffmpeg made: 16 kHz mono 16-bit
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
    assert 1.3 < (len(up["file"]) - 44) / 32000 < 1.7
    assert last_question(upstream) == "今天天气怎么样"
    entries = usage_of(voice_daemon, "o_amr")
    # 1.5 s is one started minute.
    assert len(entries) == 1 and entries[0]["free_delta"] == -(COST + VOICE_CREDITS + PER_MINUTE), entries


@needs_ffmpeg
def test_speex_is_downloaded_converted_transcribed_and_charged(voice_daemon, upstream, wechat_api):
    speex = speex_bytes(2.5)
    if speex is None:
        pytest.skip("this ffmpeg has no Speex encoder (libspeex) to make the fixture")
    wechat_api.media["spx-ok"] = speex
    before = len(upstream.transcriptions)
    reply = send_voice(WeChat(voice_daemon, MAIN), "o_spx", "spx-ok", fmt="speex")
    assert reply == f"{HEARD}今天天气怎么样\n\n{ANSWER}", reply
    assert "spx-ok" in wechat_api.media_gets
    assert len(upstream.transcriptions) == before + 1
    up = upstream.transcriptions[-1]
    assert up["filename"] == "voice.wav" and up["content_type"] == "audio/wav"
    with wave.open(io.BytesIO(up["file"])) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
    # Speex decodes to the length it was made with (its encoder pads the last frame).
    assert 2.3 < (len(up["file"]) - 44) / 32000 < 2.7
    entries = usage_of(voice_daemon, "o_spx")
    assert len(entries) == 1 and entries[0]["free_delta"] == -(COST + VOICE_CREDITS + PER_MINUTE), entries


def test_an_oversize_file_is_refused_at_no_charge(voice_daemon, upstream, wechat_api):
    wechat_api.media["too-big"] = b"#!AMR\n" + b"\x3c" * (MAX_BYTES + 100)
    wx = WeChat(voice_daemon, MAIN)
    before = upstream.chat_request_count()
    reply = send_voice(wx, "o_big", "too-big")
    if FFMPEG is None:
        assert reply == "语音暂不支持，请发送文字。", reply
    else:
        assert reply == "语音太长了，请控制在 30 秒以内，或者发送文字。", reply
        assert wechat_api.media_gets == ["too-big"]
    assert upstream.transcriptions == [] and upstream.chat_request_count() == before
    assert not usage_of(voice_daemon, "o_big"), "nothing charged"


@needs_ffmpeg
def test_a_corrupt_file_is_refused_at_no_charge(voice_daemon, upstream, wechat_api):
    # A frame cut short, then bytes that are no audio at all.
    wechat_api.media["cut"] = b"#!AMR\n\x3c" + b"\x00" * 10
    wechat_api.media["garbage"] = b"this is not audio, only text pretending to be a voice message"
    wx = WeChat(voice_daemon, MAIN)
    before = upstream.chat_request_count()
    for media in ("cut", "garbage"):
        reply = send_voice(wx, f"o_{media}", media)
        assert reply == "这条语音没有听清，请再说一次或者发送文字。", (media, reply)
        assert not usage_of(voice_daemon, f"o_{media}"), "nothing charged"
    assert upstream.transcriptions == [] and upstream.chat_request_count() == before


def test_an_unknown_media_id_is_a_clear_reply(voice_daemon, upstream, wechat_api):
    wx = WeChat(voice_daemon, MAIN)
    reply = send_voice(wx, "o_gone", "expired-media")
    if FFMPEG is None:
        assert reply == "语音暂不支持，请发送文字。" and wechat_api.media_gets == []
    else:
        assert reply == "这条语音没有听清，请再说一次或者发送文字。", reply
        assert wechat_api.media_gets == ["expired-media"], "errcode 40007 came back as JSON"
    assert upstream.transcriptions == []
    assert not usage_of(voice_daemon, "o_gone")


@needs_ffmpeg
def test_transcriber_down_costs_nothing(voice_daemon, upstream, wechat_api):
    wechat_api.media["amr-down"] = amr_bytes(1.0)
    upstream.transcribe_status = 500
    wx = WeChat(voice_daemon, MAIN)
    before = upstream.chat_request_count()
    reply = send_voice(wx, "o_down", "amr-down")
    assert reply == "这条语音没有听清，请再说一次或者发送文字。", reply
    assert len(upstream.transcriptions) >= 1, "the upstream was asked"
    assert upstream.chat_request_count() == before
    assert not usage_of(voice_daemon, "o_down")


def test_without_ffmpeg_amr_falls_back_to_recognition_or_a_clear_reply(upstream, wechat_api):
    # max_seconds 150: audio of unknown length is priced as 3 started minutes without ffmpeg.
    toml = speech_toml("/nonexistent/ffmpeg", max_seconds=150) + mp_toml(wechat_api)
    d = Daemon(upstream.base_url, extra_toml=toml, free_daily=100, llm_timeout=10).start()
    try:
        wechat_api.media["amr-x"] = b"#!AMR\n" + b"\x3c" + b"\x00" * 31
        wx = WeChat(d, MAIN)
        reply = send_voice(wx, "o_noff", "amr-x")
        assert reply == "语音暂不支持，请发送文字。", reply
        assert wechat_api.media_gets == [], "nothing downloaded that could not be used"
        assert not usage_of(d, "o_noff")
        reply = send_voice(wx, "o_noff", "amr-x", recognition="你好")
        assert reply == f"{HEARD}你好\n\n{ANSWER}", reply
        assert "ffmpeg not found" in d.logs()
        assert "ffmpeg: NOT FOUND (/nonexistent/ffmpeg)" in check_config(d)
        # A webm (a browser's recording) cannot be measured without ffmpeg: it goes to the
        # upstream as it is, priced as the longest allowed (never less than it may cost).
        uid, token = d.new_user("voice-noff", credits=100)
        webm = b"\x1a\x45\xdf\xa3" + secrets.token_bytes(3000)
        heard = api_client(d, token).audio.transcriptions.create(
            model="whisper-1", file=("talk.webm", webm, "audio/webm"))
        assert heard.text == "今天天气怎么样"
        assert upstream.transcriptions[-1]["filename"] == "voice.webm"
        assert upstream.transcriptions[-1]["file"] == webm
        assert usage_debits(d, uid) == [-(VOICE_CREDITS + 3 * PER_MINUTE)]
    finally:
        assert d.stop() == 0, d.logs()


def check_config(daemon):
    r = subprocess.run([str(BINARY), "--config", str(daemon.config), "check-config"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_ffmpeg
def test_check_config_reports_ffmpeg(voice_daemon):
    out = check_config(voice_daemon)
    assert "speech: model whisper-1 at default" in out, out
    assert "ffmpeg: ffmpeg version" in out, out


def api_client(daemon, token):
    import openai
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key=token, max_retries=0, timeout=20)


def usage_debits(daemon, uid):
    ledger = json.loads(daemon.cli("--json", "user", "show", str(uid), "--ledger", "1000").stdout)["ledger"]
    return [e["free_delta"] + e.get("paid_delta", 0) for e in ledger if e["kind"] == "usage"]


def test_v1_transcriptions_with_the_official_client(voice_daemon, upstream):
    import openai
    uid, token = voice_daemon.new_user("voice-api", credits=100)
    client = api_client(voice_daemon, token)
    wav = wav_bytes(0.5)
    heard = client.audio.transcriptions.create(model="whisper-1", file=("hello.wav", wav, "audio/wav"))
    assert heard.text == "今天天气怎么样"
    up = upstream.transcriptions[-1]
    assert up["fields"]["model"] == "whisper-1" and up["filename"] == "voice.wav"
    assert up["file"] == wav, "a WAV goes to the upstream as it is"
    # 0.5 s is one started minute.
    assert usage_debits(voice_daemon, uid) == [-(VOICE_CREDITS + PER_MINUTE)]
    as_text = client.audio.transcriptions.create(model="whisper-1", file=("hello.wav", wav, "audio/wav"),
                                                 response_format="text")
    assert as_text.strip() == "今天天气怎么样"
    assert usage_debits(voice_daemon, uid) == [-(VOICE_CREDITS + PER_MINUTE)] * 2

    with pytest.raises(openai.BadRequestError) as e:  # larger than [speech] max_bytes
        client.audio.transcriptions.create(model="whisper-1", file=("long.wav", wav_bytes(1.5), "audio/wav"))
    assert "30 秒" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="whisper-1", file=("x.wav", wav, "audio/wav"),
                                           response_format="srt")
    upstream.transcribe_status = 500
    with pytest.raises(openai.APIStatusError) as e:
        client.audio.transcriptions.create(model="whisper-1", file=("hello.wav", wav, "audio/wav"))
    assert e.value.status_code >= 500
    assert len(usage_debits(voice_daemon, uid)) == 2, "failures cost nothing"
    with pytest.raises(openai.AuthenticationError):
        api_client(voice_daemon, "not-a-token").audio.transcriptions.create(
            model="whisper-1", file=("hello.wav", wav, "audio/wav"))


def opus_bytes(seconds, container="webm", silent=False):
    """Opus audio as a browser records it (webm) or an app sends it (ogg), made by ffmpeg."""
    source = "anullsrc=r=16000:cl=mono" if silent else "sine=f=440:r=16000"
    out = subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", source,
                          "-t", str(seconds), "-c:a", "libopus", "-b:a", "12k",
                          # 60 ms frames: fewer Ogg pages, so long silence stays small
                          "-frame_duration", "60", "-f", container, "pipe:1"],
                         capture_output=True, timeout=30, check=True)
    return out.stdout


@needs_ffmpeg
def test_v1_audio_of_unknown_length_is_measured_limited_and_priced_per_minute(voice_daemon, upstream):
    """A browser's webm (or an OGG, an MP3) says nothing of its length: the daemon measures it
    (ffmpeg), so max_seconds holds and the per-minute price is charged."""
    import openai
    uid, token = voice_daemon.new_user("voice-webm", credits=100)
    client = api_client(voice_daemon, token)
    webm = opus_bytes(1.5)
    assert len(webm) < MAX_BYTES
    heard = client.audio.transcriptions.create(model="whisper-1", file=("talk.webm", webm, "audio/webm"))
    assert heard.text == "今天天气怎么样"
    up = upstream.transcriptions[-1]
    assert up["filename"] == "voice.wav"
    assert 1.3 < (len(up["file"]) - 44) / 32000 < 1.7, "what was said, measured"
    assert usage_debits(voice_daemon, uid) == [-(VOICE_CREDITS + PER_MINUTE)]
    # 35 s of (silent, so small) audio: within max_bytes, over max_seconds (30).
    long_ogg = opus_bytes(35, container="ogg", silent=True)
    assert len(long_ogg) < MAX_BYTES, len(long_ogg)
    sent = len(upstream.transcriptions)
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.transcriptions.create(model="whisper-1", file=("long.ogg", long_ogg, "audio/ogg"))
    assert "30 秒" in str(e.value)
    assert len(upstream.transcriptions) == sent, "refused before the upstream"
    assert usage_debits(voice_daemon, uid) == [-(VOICE_CREDITS + PER_MINUTE)], "a refusal costs nothing"


# -- voice out: answers spoken for a scope with voice_reply ---------------------------------------

SPEECH_CREDITS = 4


def wait_for(check, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    return check()


@pytest.fixture(scope="module")
def speaking_daemon(upstream, wechat_api):
    toml = speech_toml() + f"""speech_model = "tts-1"
voice = "nova"
reply_max_chars = 200
speech_credits = {SPEECH_CREDITS}

[[scopes]]
scope = "wechat_mp"
voice_reply = true
""" + mp_toml(wechat_api)
    d = Daemon(upstream.base_url, extra_toml=toml, free_daily=100, llm_timeout=10).start()
    yield d
    assert d.stop() == 0, d.logs()


@pytest.fixture
def clean_speech(upstream, wechat_api):
    from fake_openai import mp3_bytes
    upstream.speech_requests.clear()
    upstream.speech_audio, upstream.speech_status = mp3_bytes(2), 200
    wechat_api.uploads.clear()
    yield
    upstream.speech_audio, upstream.speech_status = mp3_bytes(2), 200


def voices_to(wechat_api, openid):
    return [b for b in wechat_api.sent_to(openid) if b.get("msgtype") == "voice"]


def test_an_answer_is_spoken_uploaded_and_sent_as_a_voice_message(speaking_daemon, upstream, wechat_api, clean_speech):
    wx = WeChat(speaking_daemon, MAIN)
    _, reply = wx.send_text("o_speak", "天气如何")
    assert reply["Content"] == ANSWER, reply  # the text, whole, as the passive reply
    sent = wait_for(lambda: voices_to(wechat_api, "o_speak"))
    assert len(sent) == 1, sent
    assert upstream.speech_requests == [{"model": "tts-1", "input": ANSWER, "voice": "nova",
                                         "response_format": "mp3"}]
    media_id, upload = wechat_api.uploads[0]
    assert sent[0]["voice"] == {"media_id": media_id}
    assert upload["filename"] == "voice.mp3" and upload["content_type"] == "audio/mpeg", upload
    assert upload["file"] == upstream.speech_audio, "the upstream's audio, as it came"
    # The answer's entry and the voice's own.
    deltas = sorted(e["free_delta"] for e in usage_of(speaking_daemon, "o_speak"))
    assert deltas == sorted([-COST, -SPEECH_CREDITS]), deltas


def test_a_voice_over_60_seconds_or_a_failed_speaker_leaves_the_text_at_no_charge(
        speaking_daemon, upstream, wechat_api, clean_speech):
    from fake_openai import mp3_bytes
    wx = WeChat(speaking_daemon, MAIN)
    upstream.speech_audio = mp3_bytes(61)  # WeChat takes at most 60 s
    _, reply = wx.send_text("o_long", "说点什么")
    assert reply["Content"] == ANSWER, reply
    assert wait_for(lambda: upstream.speech_requests), "the voice was asked for"
    time.sleep(1.0)
    assert wechat_api.uploads == [] and voices_to(wechat_api, "o_long") == []
    assert [e["free_delta"] for e in usage_of(speaking_daemon, "o_long")] == [-COST]

    upstream.speech_requests.clear()
    upstream.speech_audio, upstream.speech_status = mp3_bytes(2), 500
    _, reply = wx.send_text("o_down", "再说一次")
    assert reply["Content"] == ANSWER, reply
    assert wait_for(lambda: upstream.speech_requests)
    time.sleep(1.0)
    assert wechat_api.uploads == [] and voices_to(wechat_api, "o_down") == []
    assert [e["free_delta"] for e in usage_of(speaking_daemon, "o_down")] == [-COST]


def test_v1_speech_with_the_official_client(speaking_daemon, upstream, clean_speech):
    import openai
    uid, token = speaking_daemon.new_user("speech-api", credits=100)
    client = api_client(speaking_daemon, token)
    spoken = client.audio.speech.create(model="anything", voice="echo", input="你好，世界",
                                        response_format="opus")
    assert spoken.content == upstream.speech_audio, "the upstream's audio, as it came"
    assert upstream.speech_requests[-1] == {"model": "tts-1", "input": "你好，世界", "voice": "echo",
                                            "response_format": "opus"}, "the configured model speaks"
    assert usage_debits(speaking_daemon, uid) == [-SPEECH_CREDITS]
    # Without voice nor format: [speech] voice, MP3.
    raw = client.with_options().post("/audio/speech", body={"input": "hi"}, cast_to=bytes)
    assert raw == upstream.speech_audio
    assert upstream.speech_requests[-1]["voice"] == "nova"
    assert upstream.speech_requests[-1]["response_format"] == "mp3"
    assert usage_debits(speaking_daemon, uid) == [-SPEECH_CREDITS] * 2

    asked = len(upstream.speech_requests)
    with pytest.raises(openai.BadRequestError):  # over the API's 4096 characters
        client.audio.speech.create(model="tts-1", voice="alloy", input="字" * 4097)
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi", response_format="amr")
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="   ")
    assert len(upstream.speech_requests) == asked, "refused before any upstream call"
    upstream.speech_status = 500
    with pytest.raises(openai.APIStatusError) as e:
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert e.value.status_code >= 500
    assert len(usage_debits(speaking_daemon, uid)) == 2, "failures cost nothing"
    upstream.speech_status = 200
    with pytest.raises(openai.AuthenticationError):
        api_client(speaking_daemon, "not-a-token").audio.speech.create(model="tts-1", voice="alloy", input="hi")


# -- voice out on the web page: a play button (Playwright, Debian's Chromium) -------------------

def real_mp3(seconds=0.6):
    """A real MP3 (ffmpeg's libmp3lame) the browser can decode and play; None without it."""
    if FFMPEG is None:
        return None
    out = subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "wav", "-i", "pipe:0",
                          "-c:a", "libmp3lame", "-b:a", "32k", "-f", "mp3", "pipe:1"],
                         input=wav_bytes(seconds, rate=16000), capture_output=True, timeout=30)
    return out.stdout if out.returncode == 0 and out.stdout else None


@pytest.fixture(scope="module")
def web_speaking(upstream):
    toml = speech_toml() + f"""speech_model = "tts-1"
speech_credits = {SPEECH_CREDITS}

[web]
guest_credits = 50

[[scopes]]
scope = "web"
voice_reply = true
"""
    d = Daemon(upstream.base_url, extra_toml=toml, llm_timeout=10).start()
    yield d
    assert d.stop() == 0, d.logs()


def page_config(daemon):
    with urllib.request.urlopen(daemon.url + "/api/config", timeout=5) as r:
        return json.loads(r.read())


def test_the_web_page_plays_answers_aloud_when_the_scope_says_so(web_speaking, speaking_daemon, upstream, clean_speech):
    from playwright.sync_api import expect
    from test_web import PHONE, last_answer, new_page, send, token_of
    mp3 = real_mp3()
    if mp3 is None:
        pytest.skip("needs ffmpeg with libmp3lame to make an MP3 the browser can play")
    assert page_config(web_speaking)["voice_reply"] == {"credits": SPEECH_CREDITS, "max_chars": 300}
    assert page_config(speaking_daemon)["voice_reply"] is None, "only the web scope's voice_reply counts"
    upstream.speech_audio = mp3

    from playwright.sync_api import sync_playwright
    from test_web import ARGS, CHROMIUM
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS + ["--autoplay-policy=no-user-gesture-required"],
                                    headless=True)
        try:
            page = new_page(browser, PHONE)
            page.goto(web_speaking.url + "/")
            page.get_by_test_id("guest-start").click()
            send(page, "你好")
            answer = last_answer(page)
            expect(answer).to_have_attribute("data-state", "done")
            play = answer.get_by_test_id("play-answer")
            expect(play).to_have_text("朗读")
            token = token_of(page)
            play.click()
            expect(play).to_have_attribute("data-state", "played", timeout=15000)
            assert upstream.speech_requests == [{"model": "tts-1", "input": ANSWER, "voice": "alloy",
                                                 "response_format": "mp3"}], upstream.speech_requests
            # Played again from what was fetched: no second request, no second charge.
            play.click()
            expect(play).to_have_attribute("data-state", "played", timeout=15000)
            assert len(upstream.speech_requests) == 1
            req = urllib.request.Request(web_speaking.url + "/api/me", headers={"Authorization": "Bearer " + token})
            with urllib.request.urlopen(req, timeout=5) as r:
                usage = json.loads(r.read())["usage"]
            spent = sorted(-(u["free_delta"] + u["paid_delta"]) for u in usage if u["kind"] == "usage")
            assert spent == sorted([COST, SPEECH_CREDITS]), usage

            # The speaker down: said in a toast, nothing charged.
            upstream.speech_status = 500
            send(page, "再来一次")
            answer = last_answer(page)
            expect(answer).to_have_attribute("data-state", "done")
            expect(page.get_by_test_id("message-assistant")).to_have_count(2)
            play = answer.get_by_test_id("play-answer")
            play.click()
            expect(play).to_have_attribute("data-state", "error")
            expect(page.locator("#toast")).to_be_visible()
            assert len(upstream.speech_requests) > 1, "asked (and retried by the daemon's client)"
            with urllib.request.urlopen(req, timeout=5) as r:
                usage = json.loads(r.read())["usage"]
            assert sum(1 for u in usage if u["kind"] == "usage") == 3, usage  # two answers, one voice
            assert page.console_errors == [], page.console_errors
        finally:
            browser.close()
