"""Voice in on the web page (issue 25): the record button beside the composer, in Debian's
Chromium driven by Playwright against the real binary, with Chromium's fake microphone playing
a WAV this test writes. Held with a real touch on a phone (CDP touch events) and clicked on a
desktop; the recording goes to /v1/audio/transcriptions as webm/opus with the configured model,
the fake upstream checks the multipart upload, what was heard is sent as the user's message and
answered, and the ledger shows the transcription's charge. Then the ways out: sliding away,
Esc, too short, the auto-stop at `max_seconds`, the transcriber down, no credits, the
microphone refused, `[speech]` off (no button). The record helpers' pure parts run under Node.

Screenshots go to target/e2e-screenshots/voice-web-*.png."""

import json
import shutil
import subprocess

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import COST, ROOT, Daemon
from fake_openai import ANSWER
from test_voice import FFMPEG, PER_MINUTE, VOICE_CREDITS, page_config, speech_toml, usage_debits, wait_for, wav_bytes
from test_web import ARGS, CHROMIUM, DESKTOP, PHONE, TIMEOUT, last_answer, shot

PAGE_JS = ROOT / "scripts" / "e2e" / "page_js.js"
HEARD = "今天天气怎么样"
STT_MODEL = "sensevoice-small"  # not the daemon's default: the page must learn it
MAX_SECONDS = 4
WEBM_MAGIC = b"\x1a\x45\xdf\xa3"  # EBML: every webm file starts so
FAKE_MIC = ["--use-fake-device-for-media-stream"]
AUTO_ALLOW = ["--use-fake-ui-for-media-stream"]


def talking_toml():
    toml = speech_toml().replace('model = "whisper-1"', f'model = "{STT_MODEL}"')
    # Room for a few seconds of opus, and a short limit so the auto-stop is quick to see.
    return toml.replace("max_bytes = 16000", "max_bytes = 200000").replace(
        "max_seconds = 30", f"max_seconds = {MAX_SECONDS}")


@pytest.fixture(scope="module")
def talking(upstream):
    d = Daemon(upstream.base_url, extra_toml=talking_toml(), llm_timeout=10).start()
    yield d
    assert d.stop() == 0, d.logs()


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("mic") / "voice.wav"
    path.write_bytes(wav_bytes(3.0, rate=16000))
    return path


@pytest.fixture(scope="module")
def playwright():
    if not shutil.which(CHROMIUM):
        pytest.fail("browser tests need Debian's chromium: apt-get install chromium")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def chromium(playwright, mic_wav):
    """Chromium with a fake microphone playing `mic_wav`, allowed without asking."""
    b = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                   args=ARGS + FAKE_MIC + AUTO_ALLOW + [f"--use-file-for-fake-audio-capture={mic_wav}"])
    yield b
    b.close()


@pytest.fixture(autouse=True)
def clean_upstream(upstream):
    upstream.transcript, upstream.transcribe_status = HEARD, 200
    upstream.transcriptions.clear()
    yield
    upstream.transcribe_status = 200


# What the page hands fetch for /v1/audio/transcriptions (a FormData body, which Playwright's
# network events do not show), seen from inside the page.
SEE_UPLOADS = """
window.__uploads = [];
const pageFetch = window.fetch;
window.fetch = function (input, init) {
  if (String(input).endsWith('/v1/audio/transcriptions') && init && init.body instanceof FormData) {
    const f = init.body.get('file');
    window.__uploads.push({ model: init.body.get('model'), filename: f && f.name, type: f && f.type, size: f && f.size });
  }
  return pageFetch.apply(this, arguments);
};
"""


def uploads(page):
    return page.evaluate("window.__uploads")


def open_chat(browser, d, viewport, credits=50, touch=False, mic=True):
    """A user with `credits` logged in by token on a fresh page; the microphone granted when
    `mic`. Returns (page, uid); `uploads(page)` lists the page's transcription uploads."""
    ctx = browser.new_context(viewport=viewport, locale="zh-CN", has_touch=touch)
    if mic:
        ctx.grant_permissions(["microphone"], origin=d.url)
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # A CSP violation is a console error: none may happen (an HTTP error status is logged too:
    # the failures tested here make some on purpose).
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.console_errors = errors
    ctx.add_init_script(SEE_UPLOADS)
    uid, token = d.new_user(f"voice-web-{id(page)}", credits=credits)
    page.goto(d.url + "/")
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("token-submit").click()
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    return page, uid


def center(page, testid):
    box = page.get_by_test_id(testid).bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def touch(page, kind, x, y):
    """A real touch (CDP), as a finger on a phone makes it: pointer events of type touch."""
    if not hasattr(page, "cdp"):
        page.cdp = page.context.new_cdp_session(page)  # one session: a touch lives in it
    points = [] if kind in ("touchEnd", "touchCancel") else [{"x": x, "y": y, "id": 1}]
    page.cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})


def users_messages(page):
    return page.get_by_test_id("message-user")


def test_holding_the_button_on_a_phone_sends_what_was_heard(talking, chromium, upstream):
    cfg = page_config(talking)["speech"]
    # The e2e daemons take bodies up to 64 KiB ([server] max_body_bytes): the page keeps its
    # recordings under that, less the multipart framing, not [speech] max_bytes.
    assert cfg["model"] == STT_MODEL and cfg["max_seconds"] == MAX_SECONDS, cfg
    assert cfg["max_bytes"] == 65536 - 4096 and cfg["credits"] == VOICE_CREDITS, cfg
    page, uid = open_chat(chromium, talking, PHONE, touch=True)
    record = page.get_by_test_id("record")
    expect(record).to_be_visible()
    expect(record).to_have_attribute("aria-label", "按住说话，或点一下开始录音")
    x, y = center(page, "record")
    touch(page, "touchStart", x, y)
    expect(record).to_have_attribute("data-state", "recording")
    expect(page.get_by_test_id("rec-bar")).to_be_visible()
    expect(page.get_by_test_id("chat-input")).to_be_hidden()
    expect(page.get_by_test_id("rec-hint")).to_have_text("松开发送，手指移开取消")
    expect(page.get_by_test_id("rec-time")).to_have_text("0:01 / 0:04", timeout=3000)
    shot(page, "voice-web-recording-phone")
    touch(page, "touchEnd", x, y)

    expect(users_messages(page)).to_have_count(1)
    expect(users_messages(page).first).to_contain_text(HEARD)
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer).to_contain_text(ANSWER.split(" — ")[0])
    expect(record).to_have_attribute("data-state", "idle")
    expect(page.get_by_test_id("rec-bar")).to_be_hidden()
    shot(page, "voice-web-after-phone")

    # The page's upload: webm with the model the page learned; the daemon's to the upstream.
    [sent] = uploads(page)
    assert sent["model"] == STT_MODEL and sent["filename"] == "voice.webm", sent
    assert sent["type"].startswith("audio/webm"), sent
    assert len(upstream.transcriptions) == 1, upstream.transcriptions
    up = upstream.transcriptions[0]
    assert up["fields"]["model"] == STT_MODEL, up
    if FFMPEG:  # measured (converted) so that max_seconds and the per-minute price hold
        assert up["filename"] == "voice.wav" and up["file"].startswith(b"RIFF"), up["filename"]
        assert len(up["file"]) > 16000, "about a second of speech, at 16 kHz"
    else:
        assert up["filename"] == "voice.webm" and up["file"].startswith(WEBM_MAGIC), up["filename"]
    # The question the model got is what was heard.
    assert upstream.requests[-1][2]["messages"][-1]["content"] == HEARD
    # The ledger: the voice (its started minute, measured by ffmpeg; without ffmpeg priced as
    # the longest allowed, a minute too) and the answer.
    assert sorted(usage_debits(talking, uid)) == sorted([-(VOICE_CREDITS + PER_MINUTE), -COST])
    assert page.console_errors == [], page.console_errors
    page.context.close()


def test_click_to_start_and_stop_on_a_desktop_and_the_keyboard(talking, chromium, upstream):
    page, uid = open_chat(chromium, talking, DESKTOP)
    record = page.get_by_test_id("record")
    record.click()
    expect(record).to_have_attribute("data-state", "recording")
    expect(record).to_have_attribute("aria-label", "停止录音并发送")
    expect(page.get_by_test_id("rec-hint")).to_have_text("再点一下发送")
    expect(page.get_by_test_id("rec-time")).to_have_text("0:01 / 0:04", timeout=3000)
    shot(page, "voice-web-recording-desktop")
    record.click()
    expect(users_messages(page)).to_have_count(1)
    expect(users_messages(page).first).to_contain_text(HEARD)
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    shot(page, "voice-web-after-desktop")
    assert len(upstream.transcriptions) == 1

    # The keyboard: Enter starts, Esc cancels (nothing uploaded), Space starts and stops.
    record.focus()
    page.keyboard.press("Enter")
    expect(record).to_have_attribute("data-state", "recording")
    page.wait_for_timeout(700)
    page.keyboard.press("Escape")
    expect(record).to_have_attribute("data-state", "idle")
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    record.focus()
    page.keyboard.press(" ")
    expect(record).to_have_attribute("data-state", "recording")
    page.wait_for_timeout(1200)
    page.keyboard.press(" ")
    expect(users_messages(page)).to_have_count(2)
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    assert len(uploads(page)) == 2 and len(upstream.transcriptions) == 2, "the cancelled one never left"
    assert sorted(usage_debits(talking, uid)) == sorted([-(VOICE_CREDITS + PER_MINUTE), -COST] * 2)

    # In English, the same button says so in English, while recording too.
    page.get_by_test_id("lang-toggle").click()
    expect(record).to_have_attribute("aria-label", "Hold to talk, or click to start recording")
    record.click()
    expect(record).to_have_attribute("aria-label", "Stop recording and send")
    expect(page.get_by_test_id("rec-hint")).to_have_text("Click again to send")
    page.get_by_test_id("rec-cancel").click()
    expect(record).to_have_attribute("data-state", "idle")
    page.get_by_test_id("lang-toggle").click()
    assert len(uploads(page)) == 2

    # With a draft in the box, what was heard is added to it, not sent.
    page.get_by_test_id("chat-input").fill("补充一句：")
    record.click()
    expect(record).to_have_attribute("data-state", "recording")
    page.wait_for_timeout(1000)
    record.click()
    expect(page.get_by_test_id("chat-input")).to_have_value(f"补充一句： {HEARD}")
    expect(users_messages(page)).to_have_count(2)
    assert page.console_errors == [], page.console_errors
    page.context.close()


def test_sliding_away_esc_and_a_tap_send_nothing(talking, chromium, upstream):
    page, uid = open_chat(chromium, talking, PHONE, touch=True)
    record = page.get_by_test_id("record")
    x, y = center(page, "record")
    touch(page, "touchStart", x, y)
    expect(record).to_have_attribute("data-state", "recording")
    page.wait_for_timeout(800)
    touch(page, "touchMove", x - 150, y - 150)
    expect(page.get_by_test_id("rec-hint")).to_have_text("松开手指，取消发送")
    shot(page, "voice-web-slide-to-cancel-phone")
    touch(page, "touchEnd", x - 150, y - 150)
    expect(record).to_have_attribute("data-state", "idle")

    # Held, then Esc (a keyboard on a tablet).
    touch(page, "touchStart", x, y)
    expect(record).to_have_attribute("data-state", "recording")
    page.wait_for_timeout(600)
    page.keyboard.press("Escape")
    expect(record).to_have_attribute("data-state", "idle")
    touch(page, "touchEnd", x, y)

    # Held, then the system takes the touch (a call, a gesture): dropped.
    touch(page, "touchStart", x, y)
    expect(record).to_have_attribute("data-state", "recording")
    page.wait_for_timeout(600)
    touch(page, "touchCancel", x, y)
    expect(record).to_have_attribute("data-state", "idle")

    # Two quick taps: under half a second is not speech.
    record.tap()
    record.tap()
    expect(page.get_by_test_id("error-banner")).to_be_visible()
    expect(page.locator("#error-text")).to_have_text("说话时间太短，请按住多说一会儿")
    expect(record).to_have_attribute("data-state", "idle")

    assert uploads(page) == [] and upstream.transcriptions == []
    expect(users_messages(page)).to_have_count(0)
    assert usage_debits(talking, uid) == []
    assert page.console_errors == [], page.console_errors
    page.context.close()


def test_recording_stops_by_itself_at_max_seconds_and_is_sent(talking, chromium, upstream):
    page, _ = open_chat(chromium, talking, DESKTOP)
    record = page.get_by_test_id("record")
    record.click()
    expect(record).to_have_attribute("data-state", "recording")
    # Nobody clicks again: at 4 s it stops and sends.
    expect(users_messages(page)).to_have_count(1, timeout=MAX_SECONDS * 1000 + 8000)
    expect(users_messages(page).first).to_contain_text(HEARD)
    assert len(upstream.transcriptions) == 1
    assert page.console_errors == [], page.console_errors
    page.context.close()


def test_a_microphone_that_goes_away_sends_what_was_said(talking, chromium, upstream):
    page, _ = open_chat(chromium, talking, DESKTOP)
    record = page.get_by_test_id("record")
    record.click()
    expect(record).to_have_attribute("data-state", "recording")
    page.wait_for_timeout(1200)
    # Unplugged (or taken by the system): the recorder stops by itself.
    page.evaluate("rec.stream.getTracks().forEach((track) => track.stop())")
    # Well before the auto-stop at 4 s.
    expect(record).not_to_have_attribute("data-state", "recording", timeout=1500)
    expect(users_messages(page)).to_have_count(1)
    expect(record).to_have_attribute("data-state", "idle")
    assert len(upstream.transcriptions) == 1
    assert page.console_errors == [], page.console_errors
    page.context.close()


def test_a_transcriber_down_or_no_credits_is_said_and_nothing_is_sent(talking, chromium, upstream):
    page, uid = open_chat(chromium, talking, PHONE)
    record = page.get_by_test_id("record")
    asked = len(upstream.requests)
    upstream.transcribe_status = 500
    record.click()
    expect(record).to_have_attribute("data-state", "recording")
    expect(page.get_by_test_id("rec-cancel")).to_be_visible()
    page.wait_for_timeout(1000)
    shot(page, "voice-web-recording-click-phone")
    record.click()
    expect(page.get_by_test_id("error-banner")).to_be_visible()
    expect(page.locator("#error-text")).to_have_text("语音识别服务暂时不可用，请稍后再试或发送文字")
    shot(page, "voice-web-transcriber-down-phone")
    expect(record).to_have_attribute("data-state", "idle")
    expect(users_messages(page)).to_have_count(0)
    assert len(upstream.transcriptions) >= 1, "asked (and retried by the daemon)"
    assert usage_debits(talking, uid) == [], "a failure costs nothing"
    assert len(upstream.requests) == asked, "no question went to the model"
    page.context.close()

    # No credits: refused before the upstream hears anything.
    upstream.transcribe_status = 200
    upstream.transcriptions.clear()
    page, uid = open_chat(chromium, talking, PHONE, credits=0)
    record = page.get_by_test_id("record")
    record.click()
    expect(record).to_have_attribute("data-state", "recording")
    page.wait_for_timeout(1000)
    record.click()
    expect(page.get_by_test_id("error-banner")).to_be_visible()
    expect(page.locator("#error-text")).to_contain_text("额度")
    expect(users_messages(page)).to_have_count(0)
    assert upstream.transcriptions == [] and usage_debits(talking, uid) == []
    shot(page, "voice-web-no-credits-phone")
    assert page.console_errors == [], page.console_errors
    page.context.close()


def test_a_refused_microphone_is_said_and_nothing_is_sent(talking, playwright, upstream):
    # No auto-allow and no grant: headless Chromium refuses the microphone as a user would.
    b = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS + FAKE_MIC)
    try:
        page, _ = open_chat(b, talking, PHONE, mic=False)
        record = page.get_by_test_id("record")
        record.click()
        expect(page.get_by_test_id("error-banner")).to_be_visible()
        expect(page.locator("#error-text")).to_have_text("无法使用麦克风：请在浏览器设置中允许本网站使用麦克风")
        expect(record).to_have_attribute("data-state", "idle")
        expect(page.get_by_test_id("chat-input")).to_be_visible()
        shot(page, "voice-web-mic-refused-phone")
        assert uploads(page) == [] and upstream.transcriptions == []
    finally:
        b.close()


def test_without_speech_there_is_no_record_button(upstream, chromium):
    d = Daemon(upstream.base_url).start()
    try:
        assert page_config(d)["speech"] is None
        page, _ = open_chat(chromium, d, PHONE)
        expect(page.get_by_test_id("send")).to_be_visible()
        expect(page.get_by_test_id("record")).to_be_hidden()
        page.context.close()
    finally:
        assert d.stop() == 0, d.logs()


def test_without_media_recorder_there_is_no_record_button(talking, chromium):
    page, _ = open_chat(chromium, talking, PHONE)
    page.context.add_init_script("delete window.MediaRecorder;")
    page.reload()
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    assert page.evaluate("typeof window.MediaRecorder") == "undefined"
    expect(page.get_by_test_id("record")).to_be_hidden()
    page.context.close()


NODE_CHECKS = r"""
const m = require(process.argv[1]);
const only = (...types) => (t) => types.includes(t);
console.log(JSON.stringify({
  chromium: m.pickRecordType(only('audio/webm', 'audio/webm;codecs=opus', 'audio/ogg;codecs=opus')),
  safari: m.pickRecordType(only('audio/mp4')),
  none: m.pickRecordType(() => false),
  throws: m.pickRecordType((t) => { if (t.includes('webm')) throw new Error('x'); return t === 'audio/ogg'; }),
  ext: ['audio/webm;codecs=opus', 'audio/mp4', 'AUDIO/MP4; codecs="mp4a.40.2"', 'audio/ogg;codecs=opus', 'video/x-matroska', '', 'toString']
    .map(m.audioExtension),
  time: [0, 999, 1000, 59999, 61000, -5, NaN].map(m.formatElapsed),
  problems: [[499, 100], [500, 100], [500, 0], [61000, 100], [62000, 100], [1000, 1001]]
    .map(([ms, bytes]) => m.recordingProblem(ms, bytes, { max_seconds: 60, max_bytes: 1000 })),
}));
"""


def test_record_helpers_pick_the_type_and_check_the_limits():
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        pytest.fail("the helper checks need node: apt-get install nodejs")
    r = subprocess.run([node, "-e", NODE_CHECKS, str(PAGE_JS)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["chromium"] == "audio/webm;codecs=opus"
    assert out["safari"] == "audio/mp4"
    assert out["none"] == ""
    assert out["throws"] == "audio/ogg"
    assert out["ext"] == ["webm", "mp4", "mp4", "ogg", "", "", ""]
    assert out["time"] == ["0:00", "0:00", "0:01", "0:59", "1:01", "0:00", "0:00"]
    assert out["problems"] == ["short", "", "short", "", "long", "long"]
