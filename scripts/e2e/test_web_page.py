"""The web chat page's polish (issue 26) in a real browser: Playwright drives Debian's Chromium
against the real binary. Markdown, code and formulas as the offline demo model answers them;
edit-and-resend; export as Markdown; the model picker with prices; the send button and
Enter / Shift+Enter; no English on the Chinese page; the drawn payment marks; dark mode; and
conversations kept on the server (two browsers, one user; a conversation from the Official
Account continued on the web). The renderer's pure parts are also checked under Node.

Screenshots go to target/e2e-screenshots/ (the ones worth keeping are copied to
docs/screenshots/)."""

import json
import time
import re
import shutil
import subprocess
import urllib.request

import pytest
from playwright.sync_api import expect

from conftest import COST, MODEL, ROOT, Daemon
from test_web import DESKTOP, PHONE, TIMEOUT, last_answer, login, me, new_page, send, shot, token_of, web  # noqa: F401
from test_web import browser  # noqa: F401  (the fixture)

PAGE_JS = ROOT / "scripts" / "e2e" / "page_js.js"  # loads the page's pure parts into Node
CHEAP, DEAR = "mini-fake", "big-fake"
CLIENTS = 0


def demo_daemon(extra=""):
    """A daemon without an LLM key (the offline demo answers) and two models at two prices."""
    # Guests are limited per address: the page's "browsers" come through a trusted proxy,
    # each from its own address.
    d = Daemon("http://127.0.0.1:9", server_toml='trusted_proxies = ["127.0.0.1"]', extra_toml=f"""
[web]
title = "演示助手"
guest_credits = 50
""")
    text = d.config.read_text()
    text = text.replace('provider = "openai"\n', "").replace('api_keys = ["sk-fake-upstream-key"]\n', "demo_piece_delay_ms = 5\n")
    text = text.replace(f'[[llm.models]]\nname = "{MODEL}"\ncredits = {COST}\n',
                        f'[[llm.models]]\nname = "{CHEAP}"\ncredits = 1\n\n'
                        f'[[llm.models]]\nname = "{DEAR}"\ncredits = 5\ncredits_per_1k_tokens = 2\n')
    text = text.replace(f'model = "{MODEL}"\n', f'model = "{CHEAP}"\n')
    d.config.write_text(text + extra)
    return d.start()


@pytest.fixture(scope="module")
def demo():
    d = demo_daemon()
    yield d
    code = d.stop()
    assert code == 0, d.logs()


def guest(d, browser, viewport, scheme="light", locale="zh-CN"):  # noqa: F811
    global CLIENTS
    CLIENTS += 1
    ctx = browser.new_context(viewport=viewport, locale=locale, color_scheme=scheme, accept_downloads=True,
                              extra_http_headers={"X-Forwarded-For": f"10.26.{CLIENTS // 200}.{CLIENTS % 200 + 1}"})
    # Layout shifts (CLS, as Chrome counts them: not the ones right after user input).
    ctx.add_init_script("""
      window.__cls = 0;
      new PerformanceObserver((list) => {
        for (const e of list.getEntries()) if (!e.hadRecentInput) window.__cls += e.value;
      }).observe({ type: 'layout-shift', buffered: true });
    """)
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.console_errors = errors
    page.goto(d.url + "/")
    page.get_by_test_id("guest-start").click()
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    return page


def questions(page):
    """The questions' text (without their buttons)."""
    return page.locator('[data-testid="message-user"] .bubble')


def answered(page):
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "done", timeout=TIMEOUT)
    return answer


# ------------------------------------------------------------------------------ renderer (Node)

NODE_CHECKS = r"""
const m = require(process.argv[1]);
const out = {};
out.sum = m.texToMathml('\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}', true);
out.inline = m.renderMarkdown('质能 $E = mc^2$，价格 $5 和 $10，代码 `$x$`');
out.paren = m.renderMarkdown('见 \\(\\alpha^2 + \\beta_1\\) 与 \\[\\sqrt[3]{x} \\le \\mathbb{R}\\]');
out.block = m.renderMarkdown('$$\n\\begin{pmatrix} a & b \\\\ c & d \\end{pmatrix}\n$$\n\n后文');
out.hostile = m.texToMathml('\\text{<img src=x onerror=alert(1)>} \\foo <script>', false);
out.deep = m.texToMathml('{'.repeat(5000) + 'x', false);
out.table = m.renderMarkdown('| a | b |\n| --- | :-: |\n| 1 | 2 |');
// Streaming: the settled head and the tail rendered apart give what the whole gives, at
// every length, for text that ends its blocks cleanly.
const src = '第一段\n\n```js\nlet a = 1;\n\nlet b = 2;\n```\n\n- 一\n- 二\n\n| a | b |\n| - | - |\n| 1 | 2 |\n\n$$\nx^2\n$$\n\n末段 **粗**';
out.splitBad = [];
for (let n = 1; n <= src.length; n++) {
  const s = src.slice(0, n);
  const { head, tail } = m.splitStable(s);
  if (!s.startsWith(head) || (head + tail !== s && head + '\n' + tail !== s)) out.splitBad.push(n);
}
const whole = m.splitStable(src);
out.headEnds = whole.head.slice(-8);
out.pieces = m.renderMarkdown(whole.head) + m.renderMarkdown(whole.tail) === m.renderMarkdown(src);
console.log(JSON.stringify(out));
"""


def test_renderer_formulas_tables_and_streaming_split():
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        pytest.fail("the renderer checks need node: apt-get install nodejs")
    r = subprocess.run([node, "-e", NODE_CHECKS, str(PAGE_JS)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # Display sums put their limits under and over; fractions are fractions.
    assert out["sum"].startswith('<math class="math" display="block">'), out["sum"]
    assert "<munderover><mo largeop=\"true\" movablelimits=\"true\">∑</mo>" in out["sum"], out["sum"]
    assert "<mfrac><mrow><mi>n</mi><mo>(</mo>" in out["sum"], out["sum"]
    # Inline $...$ is a formula; prices with dollars and code spans stay text.
    assert out["inline"].count("<math") == 1 and "<msup><mi>c</mi><mn>2</mn></msup>" in out["inline"], out["inline"]
    assert "$5 和 $10" in out["inline"] and "<code>$x$</code>" in out["inline"], out["inline"]
    assert "<msup><mi>α</mi><mn>2</mn></msup>" in out["paren"] and "<msub><mi>β</mi><mn>1</mn></msub>" in out["paren"]
    assert '<math class="math" display="block"><mrow><mroot><mi>x</mi><mn>3</mn></mroot>' in out["paren"]
    assert "ℝ" in out["paren"], out["paren"]
    assert "<mtable><mtr><mtd><mi>a</mi></mtd><mtd><mi>b</mi></mtd></mtr><mtr>" in out["block"], out["block"]
    assert out["block"].endswith("<p>后文</p>"), out["block"]
    # Nothing from the TeX becomes markup; unknown commands are shown, not dropped.
    assert "<img" not in out["hostile"] and "<script" not in out["hostile"], out["hostile"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in out["hostile"]
    assert '<mtext class="math-unknown">\\foo</mtext>' in out["hostile"]
    assert out["deep"].startswith("<math") and len(out["deep"]) < 2000, out["deep"][:200]
    assert '<th class="al-c">b</th>' in out["table"] and "<td>1</td>" in out["table"], out["table"]
    assert out["splitBad"] == [], out["splitBad"]
    assert out["pieces"], "head and tail rendered apart differ from the whole"


# ------------------------------------------------------------------------------ rendering

def test_demo_answer_renders_list_table_code_and_math(demo, browser):  # noqa: F811
    for name, viewport, scheme in (("phone", PHONE, "light"), ("desktop", DESKTOP, "light"),
                                   ("phone-dark", PHONE, "dark"), ("desktop-dark", DESKTOP, "dark"),
                                   ("narrow", {"width": 360, "height": 740}, "light"),
                                   ("wide", {"width": 1440, "height": 900}, "light")):
        page = guest(demo, browser, viewport, scheme)
        send(page, "给我看看格式")
        answer = answered(page)
        md = answer.locator(".md")
        expect(md.locator("ul > li").first).to_contain_text("粗体")
        expect(md.locator("table th").first).to_have_text("模型")
        expect(md.locator("table td")).to_have_count(4)
        code = md.locator("pre.code-block code")
        expect(code).to_contain_text("def fib(n):")
        expect(code.locator(".tk-k").first).to_have_text("def")
        expect(md.locator("pre.code-block [data-copy-code]")).to_be_visible()
        # The formulas are MathML the browser lays out: the block one is taller than a line.
        expect(md.locator("math[display=block] munderover")).to_have_count(1)
        expect(md.locator("math[display=block] mfrac")).to_have_count(1)
        expect(md.locator("li math msup")).to_have_count(1)
        box = md.locator("math[display=block]").bounding_box()
        assert box and box["height"] > 30, box
        answer.get_by_test_id("answer-model").wait_for()
        expect(answer.get_by_test_id("answer-model")).to_have_text(CHEAP)
        if scheme == "dark":
            bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert bg == "rgb(21, 23, 26)", bg
        # Nothing moves sideways at this width: no horizontal scrolling anywhere.
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow == 0, overflow
        # Loading, logging in and a streamed answer move nothing already on screen.
        cls = page.evaluate("window.__cls")
        assert cls < 0.05, cls
        answer.scroll_into_view_if_needed()
        page.locator("#messages").evaluate("el => el.scrollTop = el.scrollHeight")
        shot(page, f"{name}-markdown")
        assert not page.console_errors, page.console_errors
        page.context.close()


def test_code_copy_button_copies_the_code(demo, browser):  # noqa: F811
    page = guest(demo, browser, DESKTOP)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    send(page, "代码")
    answer = answered(page)
    answer.locator("[data-copy-code]").click()
    expect(answer.locator("[data-copy-code]")).to_have_text("已复制")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("def fib(n):\n    a, b = 0, 1\n"), copied
    page.context.close()


# ------------------------------------------------------------------------------ interaction

def test_edit_and_resend_replaces_the_rest_and_export_downloads_markdown(demo, browser, tmp_path):  # noqa: F811
    page = guest(demo, browser, DESKTOP)
    send(page, "第一个问题")
    answered(page)
    send(page, "第二个问题")
    answered(page)
    expect(page.get_by_test_id("message-user")).to_have_count(2)
    # Edit the first question: everything after it goes, the new text is answered.
    first = page.get_by_test_id("message-user").first
    first.hover()
    first.get_by_test_id("edit-message").click()
    box = page.get_by_test_id("edit-input")
    expect(box).to_have_value("第一个问题")
    box.fill("")
    expect(page.get_by_test_id("edit-save")).to_be_disabled()
    box.fill("改过的问题")
    shot(page, "desktop-edit")
    page.get_by_test_id("edit-save").click()
    answer = answered(page)
    expect(page.get_by_test_id("message-user")).to_have_count(1)
    expect(page.get_by_test_id("message-assistant")).to_have_count(1)
    expect(questions(page)).to_have_text(re.compile("改过的问题"))
    expect(answer).to_contain_text("你刚才说：「改过的问题」")
    # Escape cancels an edit without changing anything.
    page.get_by_test_id("message-user").first.get_by_test_id("edit-message").click()
    page.get_by_test_id("edit-input").fill("不要这个")
    page.get_by_test_id("edit-input").press("Escape")
    expect(questions(page)).to_have_text(re.compile("改过的问题"))

    # Export: a Markdown file with the title, both turns and the model.
    with page.expect_download() as dl:
        page.get_by_test_id("export-chat").click()
    download = dl.value
    assert download.suggested_filename == "改过的问题.md", download.suggested_filename
    path = tmp_path / "export.md"
    download.save_as(path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# 改过的问题\n\n> 导出于 "), text[:80]
    assert "\n## 你\n\n改过的问题\n" in text, text
    assert f"\n## 助手 · {CHEAP}\n\n【演示模式】" in text, text
    assert "```python\ndef fib(n):" in text and "第二个问题" not in text, text
    page.context.close()


def test_send_button_enter_and_shift_enter(demo, browser):  # noqa: F811
    page = guest(demo, browser, DESKTOP)
    button = page.get_by_test_id("send")
    box = page.get_by_test_id("chat-input")
    expect(button).to_be_disabled()
    box.fill("   ")
    expect(button).to_be_disabled()
    box.fill("")
    box.type("第一行")
    expect(button).to_be_enabled()
    box.press("Shift+Enter")
    box.type("第二行")
    expect(box).to_have_value("第一行\n第二行")
    expect(page.get_by_test_id("message-user")).to_have_count(0)
    box.press("Enter")
    expect(questions(page)).to_have_text(re.compile("第一行\\s*第二行"))
    expect(box).to_have_value("")
    expect(button).to_be_disabled()
    answered(page)
    page.context.close()


def drawer_gone(page):
    """Waits until the phone's conversation drawer has slid away (0.2 s) and is hidden, so
    that a screenshot does not catch it half-way (or its shadow)."""
    page.wait_for_function("""() => {
        const s = document.getElementById('sidebar');
        return s.getBoundingClientRect().right <= 0 && getComputedStyle(s).visibility === 'hidden';
    }""")


def test_model_picker_shows_prices_and_the_pick_is_used(demo, browser):  # noqa: F811
    page = guest(demo, browser, DESKTOP)
    picker = page.get_by_test_id("model-select")
    expect(picker).to_contain_text(CHEAP)
    expect(picker).to_contain_text("1 额度/条")
    picker.click()
    options = page.get_by_test_id("model-option")
    expect(options).to_have_count(2)
    expect(options.nth(0)).to_have_attribute("aria-selected", "true")
    expect(options.nth(1)).to_contain_text(DEAR)
    expect(options.nth(1)).to_contain_text("5 额度/条 +2/千词元")
    shot(page, "desktop-model-picker")
    # Keyboard: down, Enter picks; the list closes and focus is back on the button.
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("model-list")).to_be_hidden()
    expect(picker).to_be_focused()
    expect(picker).to_contain_text(DEAR)
    send(page, "用贵的模型")
    answer = answered(page)
    expect(answer.get_by_test_id("answer-model")).to_have_text(DEAR)
    token = token_of(page)
    req = urllib.request.Request(demo.url + "/api/usage?limit=5", headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        usage = json.loads(r.read())["data"]
    assert usage[0]["model"] == DEAR and usage[0]["credits"]["total"] >= 5, usage
    # Kept for the next visit.
    page.reload()
    expect(page.get_by_test_id("model-select")).to_contain_text(DEAR)
    page.set_viewport_size(PHONE)
    drawer_gone(page)
    page.get_by_test_id("model-select").click()
    expect(page.get_by_test_id("model-option")).to_have_count(2)
    shot(page, "phone-model-picker")
    page.keyboard.press("Escape")
    expect(page.get_by_test_id("model-list")).to_be_hidden()
    page.context.close()


# ------------------------------------------------------------------------------ language

# Words that may appear on the Chinese page: model names (product names, as configured),
# brand and format names, and the redemption code's shape (XXXX-XXXX-...).
ALLOWED = {"gpt", "fake", "mini", "big", "Telegram", "API", "Markdown", "XXXX"}
LATIN_WORD = re.compile(r"[A-Za-z]{2,}")

VISIBLE_TEXT = r"""() => {
  const out = [];
  const skip = (el) => el.closest('.md, .bubble, .model-option-name, #model-name, .tag-model, [lang="en"], .usage-kind, #live, .sr-only');
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    const text = n.textContent.trim();
    if (!text || !el || skip(el)) continue;
    const r = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (r.width === 0 || r.height === 0 || style.visibility === 'hidden' || el.closest('[hidden]')) continue;
    out.push(text);
  }
  for (const el of document.querySelectorAll('[aria-label], [placeholder], [title], img[alt]')) {
    if (el.closest('[hidden]') || el.closest('[lang="en"]')) continue;
    for (const a of ['aria-label', 'placeholder', 'title', 'alt']) if (el.getAttribute(a)) out.push(el.getAttribute(a));
  }
  return out;
}"""


def english_words(page):
    found = []
    for text in page.evaluate(VISIBLE_TEXT):
        words = [w for w in LATIN_WORD.findall(text) if w not in ALLOWED]
        if words:
            found.append((text, words))
    return found


def test_no_english_on_the_chinese_page(web, browser):  # noqa: F811
    # The browser asks for English (Accept-Language): the page is Chinese all the same, and
    # so are the server's errors it shows.
    ctx = browser.new_context(viewport=DESKTOP, locale="en-US")
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT)
    token = login(web, page, "o_page_words")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    # No credits yet: the error is the server's, in Chinese.
    send(page, "没有额度")
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "error")
    expect(answer.get_by_test_id("answer-error")).to_contain_text("额度不足")
    assert english_words(page) == [], english_words(page)
    uid = me(web, token)["uid"]
    web.cli("grant", str(uid), "20", "--reason", "补偿")
    page.reload()
    send(page, "现在有额度了")
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    assert english_words(page) == [], english_words(page)
    page.get_by_test_id("account-open").click()
    expect(page.get_by_test_id("answer-item")).to_have_count(1)
    expect(page.locator("#usage-list")).to_contain_text("回答（gpt-fake）")
    expect(page.locator("#usage-list")).to_contain_text("补偿")
    assert english_words(page) == [], english_words(page)
    page.keyboard.press("Escape")
    page.get_by_test_id("buy-open").click()
    expect(page.get_by_test_id("channel-wechat")).to_be_visible()
    expect(page.get_by_test_id("logo-wechat")).to_be_visible()
    expect(page.get_by_test_id("logo-alipay")).to_be_visible()
    assert english_words(page) == [], english_words(page)
    page.get_by_test_id("product-p10").click()
    page.get_by_test_id("channel-alipay").click()
    expect(page.get_by_test_id("order-qr")).to_be_visible()
    assert english_words(page) == [], english_words(page)
    shot(page, "desktop-buy-logos")
    page.set_viewport_size(PHONE)
    page.get_by_test_id("channel-wechat").click()
    expect(page.get_by_test_id("order-qr")).to_be_visible()
    shot(page, "phone-buy-logos")
    ctx.close()


def web_api_error_codes():
    """Every `error.code` the web API's routes (src/channels/web) can answer with, and the
    redemption failures' codes."""
    codes = set()
    for f in (ROOT / "src" / "channels" / "web").glob("*.rs"):
        text = f.read_text()
        codes |= set(re.findall(r'error\(\s*StatusCode::\w+,\s*"(\w+)"', text))
        codes |= set(re.findall(r'"code":\s*"(\w+)"', text))
    redeem = (ROOT / "src" / "codes.rs").read_text()
    redeem = redeem[redeem.index("pub fn code(&self)"):redeem.index("pub fn message(&self)")]
    codes |= set(re.findall(r'=> "(\w+)"', redeem))
    return codes


def test_every_web_api_error_has_words_in_both_languages():
    codes = web_api_error_codes()
    assert {"bad_code", "too_large", "conflict", "malformed", "already_used"} <= codes, codes
    js = (ROOT / "src" / "channels" / "web" / "text.js").read_text()
    zh, en = js.split("\n  en: {", 1)
    for table, name in [(zh, "zh"), (en, "en")]:
        keys = set(re.findall(r"^\s+(err_\w+):", table, re.M))
        missing = [c for c in codes if not any(k == f"err_{c}" or k.endswith(f"_{c}") for k in keys)]
        assert not missing, (name, missing)


def test_api_errors_are_shown_in_the_pages_language(demo, browser):  # noqa: F811
    page = guest(demo, browser, DESKTOP)
    page.get_by_test_id("account-open").click()
    result = page.get_by_test_id("redeem-result")
    page.get_by_test_id("redeem-code").fill("abc")
    page.get_by_test_id("redeem-submit").click()
    expect(result).to_contain_text("兑换码格式不对")
    page.keyboard.press("Escape")
    page.get_by_test_id("lang-toggle").click()
    page.get_by_test_id("account-open").click()
    page.get_by_test_id("redeem-code").fill("abc")
    page.get_by_test_id("redeem-submit").click()
    expect(result).to_contain_text("Not a redemption code")
    page.get_by_test_id("redeem-code").fill("ABCD-EFGH-JKMN-PQRS")
    page.get_by_test_id("redeem-submit").click()
    expect(result).to_contain_text("No such code")
    page.context.close()


def test_guest_history_is_translated_both_ways(demo, browser):  # noqa: F811
    page = guest(demo, browser, PHONE)
    send(page, "试试")
    answered(page)
    page.get_by_test_id("account-open").click()
    usage = page.locator("#usage-list")
    expect(usage).to_contain_text("试用赠送")
    expect(usage).to_contain_text(f"回答（{CHEAP}）")
    expect(page.locator("#account-name")).to_contain_text("试用用户")
    expect(page.get_by_test_id("answer-item").first).to_contain_text("网页")
    assert english_words(page) == [], english_words(page)
    page.keyboard.press("Escape")
    page.get_by_test_id("menu-open").click()
    page.get_by_test_id("lang-toggle").click()
    page.keyboard.press("Escape")
    page.get_by_test_id("account-open").click()
    expect(usage).to_contain_text("Trial credits")
    expect(usage).to_contain_text(f"Answer ({CHEAP})")
    expect(page.locator("#account-name")).to_contain_text("Guest")
    expect(page.get_by_test_id("answer-item").first).to_contain_text("Web")
    page.context.close()


# ------------------------------------------------------------------------------ conversations on the server

def conversations(d, token):
    req = urllib.request.Request(d.url + "/api/conversations", headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())["conversations"]


def logged_in(d, browser, viewport, openid):  # noqa: F811
    ctx = browser.new_context(viewport=viewport, locale="zh-CN")
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.console_errors = errors
    token = login(d, page, openid)
    return page, token


def test_two_browsers_of_one_user_see_the_same_conversations(web, browser):  # noqa: F811
    phone, token = logged_in(web, browser, PHONE, "o_page_two")
    uid = me(web, token)["uid"]
    web.cli("grant", str(uid), "60", "--reason", "e2e")
    # A conversation kept only in this browser from before the server kept them: moved
    # there once (with an id the server accepts).
    old = [{"id": "0123456789abcdef", "title": "以前的对话", "created": 1, "updated": 2,
            "messages": [{"role": "user", "content": "以前问的"}, {"role": "assistant", "content": "以前答的"}]}]
    phone.evaluate("([k, v]) => localStorage.setItem(k, v)", [f"chatrelay.convs.{uid}", json.dumps(old)])
    phone.reload()
    expect(phone.get_by_test_id("chat-input")).to_be_visible()
    send(phone, "在手机上问的问题")
    expect(last_answer(phone)).to_have_attribute("data-state", "done")

    def titles():
        return sorted(c["title"] for c in conversations(web, token))
    deadline = time.time() + 10
    while titles() != ["以前的对话", "在手机上问的问题"] and time.time() < deadline:
        time.sleep(0.1)
    assert titles() == ["以前的对话", "在手机上问的问题"], conversations(web, token)
    moved = [c for c in conversations(web, token) if c["title"] == "以前的对话"][0]
    assert moved["id"] == "w_0123456789abcdef" and moved["count"] == 2, moved

    # The desktop (another browser, its own login) lists both, and opens them from the server.
    desktop, token2 = logged_in(web, browser, DESKTOP, "o_page_two")
    assert token2 != token
    items = desktop.get_by_test_id("conversation-item")
    expect(items).to_have_count(2)
    expect(items.first).to_have_text("在手机上问的问题")
    items.first.click()
    expect(questions(desktop)).to_have_text(["在手机上问的问题"])
    expect(desktop.get_by_test_id("message-assistant")).to_have_count(1)
    send(desktop, "在电脑上接着问")
    expect(last_answer(desktop)).to_have_attribute("data-state", "done")
    shot(desktop, "desktop-synced")
    # Back on the phone: the conversation has the desktop's turns.
    phone.reload()
    phone.get_by_test_id("menu-open").click()
    phone.get_by_test_id("conversation-item").first.click()
    expect(questions(phone)).to_have_text(["在手机上问的问题", "在电脑上接着问"])
    expect(phone.get_by_test_id("message-assistant")).to_have_count(2)

    # Edited on the phone while the desktop still shows the old version: the desktop's next
    # answer does not overwrite it; its version is kept as a copy, the server's is shown.
    first = phone.get_by_test_id("message-user").first
    first.get_by_test_id("edit-message").click()
    phone.get_by_test_id("edit-input").fill("手机上改过的问题")
    phone.get_by_test_id("edit-save").click()
    expect(last_answer(phone)).to_have_attribute("data-state", "done")
    expect(phone.get_by_test_id("message-user")).to_have_count(1)
    deadline = time.time() + 10
    while "手机上改过的问题" not in titles() and time.time() < deadline:
        time.sleep(0.1)
    send(desktop, "电脑上的第三个问题")
    expect(last_answer(desktop)).to_have_attribute("data-state", "done")
    expect(desktop.locator("#toast")).to_contain_text("其他设备")
    expect(questions(desktop)).to_have_text(["手机上改过的问题"])
    expect(desktop.get_by_test_id("conversation-item")).to_have_count(3)
    expect(desktop.get_by_test_id("conversation-item").first).to_contain_text("（副本）")

    # Deleted on the desktop: gone on the phone too.
    n = len(conversations(web, token))
    desktop.get_by_test_id("conversation-delete").first.click()
    deadline = time.time() + 10
    while len(conversations(web, token)) != n - 1 and time.time() < deadline:
        time.sleep(0.1)
    assert len(conversations(web, token)) == n - 1
    expect(desktop.locator("#toast")).to_contain_text("已删除对话")
    expect(desktop.get_by_test_id("conversation-item")).to_have_count(n - 1)
    phone.reload()
    expect(phone.get_by_test_id("conversation-item")).to_have_count(n - 1)

    # Renamed on the desktop (Escape first keeps the name): the phone shows the new name.
    item = desktop.get_by_test_id("conversation-item").last
    old_title = item.inner_text().strip()
    desktop.get_by_test_id("conversation-rename").last.click()
    box = desktop.get_by_test_id("conversation-rename-input")
    box.fill("不要这个名字")
    box.press("Escape")
    expect(box).to_have_count(0)
    expect(desktop.get_by_test_id("conversation-item").last).to_have_text(old_title)
    desktop.get_by_test_id("conversation-rename").last.click()
    shot(desktop, "desktop-rename")
    box.fill("  改过名字的对话  ")
    box.press("Enter")
    expect(desktop.get_by_test_id("conversation-item").filter(has_text="改过名字的对话")).to_have_count(1)
    deadline = time.time() + 10
    while "改过名字的对话" not in titles() and time.time() < deadline:
        time.sleep(0.1)
    assert "改过名字的对话" in titles() and old_title not in titles(), titles()
    phone.reload()
    phone.get_by_test_id("menu-open").click()
    expect(phone.get_by_test_id("conversation-item").filter(has_text="改过名字的对话")).to_have_count(1)
    assert not phone.console_errors and not desktop.console_errors, (phone.console_errors, desktop.console_errors)
    phone.context.close()
    desktop.context.close()


def test_an_official_account_conversation_continues_on_the_web(web, browser, upstream):  # noqa: F811
    from test_wechat_mp import SUB, WeChat
    openid = "o_page_oa"
    page, token = logged_in(web, browser, PHONE, openid)
    uid = me(web, token)["uid"]
    web.cli("grant", str(uid), "60", "--reason", "e2e")
    _, reply = WeChat(web, SUB).send_text(openid, "我叫小明，请记住", timeout=5)
    assert reply and reply["Content"], reply
    # Listed with its label, opened with its messages.
    page.reload()
    page.get_by_test_id("menu-open").click()
    item = page.locator('[data-testid="conversation-item"][data-source="wechat_mp"]')
    expect(item).to_have_text("公众号对话")
    page.wait_for_timeout(400)  # the drawer's slide, for the screenshot only
    shot(page, "phone-conversations")
    item.click()
    expect(page.get_by_test_id("platform-note")).to_contain_text("这是你在公众号上的对话")
    expect(questions(page)).to_have_text(["我叫小明，请记住"])
    expect(page.get_by_test_id("message-assistant")).to_have_count(1)
    # No edit or regenerate there: its memory lives on the server.
    expect(page.get_by_test_id("edit-message")).to_have_count(0)
    expect(page.get_by_test_id("regenerate")).to_have_count(0)
    before = upstream.chat_request_count()
    send(page, "我叫什么？")
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer).to_contain_text("Hello from the fake upstream")
    # The model was asked with the Official Account conversation's memory.
    assert upstream.chat_request_count() == before + 1
    sent = upstream.requests[-1][2]["messages"]
    texts = [m["content"] for m in sent if isinstance(m.get("content"), str)]
    assert "我叫小明，请记住" in texts and texts[-1] == "我叫什么？", sent
    drawer_gone(page)
    shot(page, "phone-oa-continued")
    # And the memory has the web's turns: the next message on the Official Account sees them.
    WeChat(web, SUB).send_text(openid, "再说一遍", timeout=5)
    sent = upstream.requests[-1][2]["messages"]
    texts = [m["content"] for m in sent if isinstance(m.get("content"), str)]
    assert "我叫什么？" in texts and texts[-1] == "再说一遍", sent
    # In English, the label is English.
    page.reload()
    page.get_by_test_id("menu-open").click()
    page.get_by_test_id("lang-toggle").click()
    expect(item).to_have_text("Official Account chat")
    # Deleting it clears its memory (as "/new" there).
    item.hover()
    page.locator('[data-testid="conversation-item"][data-source="wechat_mp"] + [data-testid="conversation-delete"]').click()
    expect(item).to_have_count(0)
    expect(page.locator("#toast")).to_contain_text("memory cleared")
    deadline = time.time() + 10
    while any(c["source"] == "wechat_mp" for c in conversations(web, token)) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(c["source"] == "wechat_mp" for c in conversations(web, token))
    # Cleared on the Official Account ("/new"): gone from the page at its next sync too, even
    # from the copy this browser keeps.
    WeChat(web, SUB).send_text(openid, "又来了", timeout=5)
    page.reload()
    expect(item).to_have_count(1)
    WeChat(web, SUB).send_text(openid, "/new", timeout=5)
    page.reload()
    expect(page.get_by_test_id("chat-input")).to_be_visible()
    expect(item).to_have_count(0)
    page.context.close()


# ------------------------------------------------------------------------------ size

def test_first_load_is_under_150_kb_compressed(demo, browser):  # noqa: F811
    ctx = browser.new_context(viewport=PHONE, locale="zh-CN")
    page = ctx.new_page()
    encodings = {}
    page.on("response", lambda r: encodings.__setitem__(r.url.replace(demo.url, ""), r.headers.get("content-encoding")))
    page.goto(demo.url + "/")
    expect(page.get_by_test_id("guest-start")).to_be_visible()
    sizes = page.evaluate("""() => {
      const nav = performance.getEntriesByType('navigation')[0];
      const all = [nav, ...performance.getEntriesByType('resource')];
      return all.map((e) => [e.name, e.transferSize, e.encodedBodySize, e.decodedBodySize]);
    }""")
    total = sum(s[1] for s in sizes)
    assert total < 150 * 1024, sizes
    html = (ROOT / "src" / "channels" / "web" / "index.html").read_text()
    scripts = re.findall(r'<script src="(/assets/[\w.]+)"', html)
    assert len(scripts) >= 10, scripts
    for path in ["/", "/assets/app.css", *scripts]:
        assert encodings.get(path) == "gzip", encodings
    # What it would be uncompressed: over the budget, so compression is what keeps it.
    assert sum(s[3] for s in sizes) > 150 * 1024, sizes
    print("first load:", total, "bytes over the wire;", sizes)
    ctx.close()


def test_answers_saved_while_the_server_was_unreachable_reach_it_later(demo, browser):  # noqa: F811
    page = guest(demo, browser, PHONE)
    token = token_of(page)
    send(page, "第一问")
    answered(page)
    deadline = time.time() + 10
    while not conversations(demo, token) and time.time() < deadline:
        time.sleep(0.1)
    [saved] = conversations(demo, token)
    assert saved["count"] == 2, saved
    # Saving fails (offline, a restart): the answer is kept in the browser...
    page.route("**/api/conversations/*", lambda route: route.abort() if route.request.method == "PUT" else route.continue_())
    send(page, "第二问")
    answered(page)
    page.wait_for_timeout(300)
    assert conversations(demo, token)[0]["count"] == 2
    # ...and saved on the next sync (here: the next visit), on top of the version it had.
    page.unroute("**/api/conversations/*")
    page.reload()
    deadline = time.time() + 10
    while conversations(demo, token)[0]["count"] != 4 and time.time() < deadline:
        time.sleep(0.1)
    [saved] = conversations(demo, token)
    assert saved["count"] == 4 and saved["id"].startswith("w_"), saved
    page.context.close()


def test_the_top_bar_fits_at_360_px_with_everything_in_it(web, browser):  # noqa: F811
    page, token = logged_in(web, browser, {"width": 360, "height": 740}, "o_page_narrow")
    web.cli("grant", str(me(web, token)["uid"]), "9", "--reason", "e2e")
    send(page, "窄屏")
    expect(last_answer(page)).to_have_attribute("data-state", "done")
    # Buy, export and new chat are all there; nothing spills over or scrolls sideways.
    for tid in ("buy-open", "export-chat", "new-chat", "model-select", "account-open", "menu-open"):
        expect(page.get_by_test_id(tid)).to_be_visible()
        box = page.get_by_test_id(tid).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 360, (tid, box)
    spill = page.evaluate("(() => { const b = document.querySelector('.topbar'); return b.scrollWidth - b.clientWidth; })()")
    assert spill == 0, spill
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow == 0, overflow
    shot(page, "phone-360-topbar")
    page.context.close()


def test_the_pages_scripts_override_nothing_the_browser_has(browser):  # noqa: F811
    """The page's scripts share the global scope (classic scripts, no build step): a top-level
    function becomes a property of `window`, so one named like a browser's own (`open`,
    `close`, `print`...) would replace it. None may, and no name is declared twice."""
    web = ROOT / "src" / "channels" / "web"
    html = (web / "index.html").read_text()
    files = re.findall(r'<script src="/assets/([\w.]+)"', html)
    functions, lexical = [], []
    for f in files:
        if f == "wechat.js":  # its own closure; it exports only window.ChatrelayWechat
            continue
        text = (web / f).read_text()
        functions += re.findall(r"^(?:async )?function\*? ?(\w+)", text, re.M)
        lexical += re.findall(r"^(?:const|let|class) (\w+)", text, re.M)
    names = functions + lexical
    assert len(functions) > 150 and len(lexical) > 50, (len(functions), len(lexical))
    assert len(names) == len(set(names)), sorted(n for n in set(names) if names.count(n) > 1)
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto("about:blank")
    taken = page.evaluate("(names) => names.filter((n) => n in window)", functions)
    ctx.close()
    assert not taken, taken
