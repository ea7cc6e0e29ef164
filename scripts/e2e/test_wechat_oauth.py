"""Official Account web authorization (网页授权) and desktop scan login, end to end at the HTTP
level: the real binary against fake_wechat (which plays WeChat's browser redirect for a "phone
user" and checks the daemon's `sns/oauth2/access_token` calls: appid, secret, single-use codes
bound to their AppID). No browser: every redirect is checked, then followed by hand; each
"browser" (desktop, phone, stranger) is a requests session whose cookie jar honours Path like a
browser does, and sends the `Secure` cookie to 127.0.0.1 (the public_url is https).

Daemons: `oauth` (both accounts with web authorization, auto login on) and `no_oauth` (the same
accounts without it, to see scan login refused).
"""

import json
import re
import secrets
from urllib.parse import parse_qsl, urlencode, urlparse

import pytest
import requests

from conftest import OA_MAIN, OA_OTHER, PUBLIC_URL_WX
from test_wechat_mp import LOGIN_CODE, WeChat

RETRY_LINK = re.compile(r'<a [^>]*href="/auth/wechat/main[^"]*"[^>]*>\s*重新登录\s*</a>')
STATE = re.compile(r"[A-Za-z0-9]{1,128}")


@pytest.fixture(scope="module")
def oauth(upstream, inwechat):
    d = inwechat.daemon(upstream).start()
    d.fakes = inwechat
    yield d
    code = d.stop()
    assert code == 0, f"daemon exited with {code}: {d.logs()}"


@pytest.fixture(scope="module")
def no_oauth(upstream, inwechat):
    d = inwechat.daemon(upstream, public_url="https://nooauth.example.test", oauth=False).start()
    yield d
    code = d.stop()
    assert code == 0, f"daemon exited with {code}: {d.logs()}"


@pytest.fixture(autouse=True)
def no_phone_user(inwechat):
    inwechat.wechat.clear_phone_user()
    yield
    inwechat.wechat.clear_phone_user()


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

class Browser(requests.Session):
    """A browser's cookie handling: a jar that honours Path and expiry like a browser, and
    sends `Secure` cookies to http://127.0.0.1 too, as Chromium does for a loopback origin (the
    daemon's public_url is https, so its cookies are Secure; Python's jar would never send
    them over http)."""

    def request(self, *args, **kwargs):
        r = super().request(*args, **kwargs)
        for c in self.cookies:
            c.secure = False
        return r


def new_browser():
    return Browser()


def get(d, path, browser=None, headers=None):
    return (browser or requests).get(d.url + path, headers=headers, allow_redirects=False, timeout=10)


def not_500(r, what):
    assert r.status_code < 500 or r.status_code == 502, f"{what}: HTTP {r.status_code} {r.text[:300]!r}"


def oauth_cookie(r):
    """`chatrelay_oauth=<nonce>` from a Set-Cookie, and the cookie's attributes (lower case)."""
    raw = r.headers.get("set-cookie", "")
    m = re.search(r"chatrelay_oauth=([^;,\s]+)", raw)
    assert m, f"no chatrelay_oauth cookie in {raw!r} (HTTP {r.status_code})"
    attrs = {a.strip().split("=")[0].lower(): (a.strip().split("=", 1) + [""])[1]
             for a in raw[m.end():].split(";") if a.strip()}
    return f"chatrelay_oauth={m.group(1)}", attrs


def start(d, account="main", browser=None, **params):
    """GET /auth/wechat/{account} in `browser` (a new one by default): (authorize URL, its
    query dict, the browser, which now holds the cookie)."""
    b = browser or new_browser()
    path = f"/auth/wechat/{account}" + (("?" + urlencode(params)) if params else "")
    r = get(d, path, b)
    assert r.status_code == 302, f"GET {path}: HTTP {r.status_code} {r.text[:300]!r}"
    location = r.headers["location"]
    oauth_cookie(r)
    return location, dict(parse_qsl(urlparse(location).query, keep_blank_values=True)), b


def phone_follows(location):
    """The phone's WeChat follows the authorize link: the fake's 302 back to the daemon."""
    r = requests.get(location.split("#")[0], allow_redirects=False, timeout=10)
    assert r.status_code == 302, f"fake authorize: HTTP {r.status_code} {r.text[:300]!r}"
    return r.headers["location"]


def callback_path(url):
    u = urlparse(url)
    return u.path + ("?" + u.query if u.query else "")


def handoff_of(location):
    """H from a callback's `{next}#login=H`."""
    frag = urlparse(location).fragment
    m = re.fullmatch(r"login=([A-Za-z0-9_\-]+)", frag)
    assert m, f"no #login=H in {location!r}"
    return m.group(1)


def ticket(d, t, browser=None, xff=None):
    """GET /api/login/ticket/{t} from `browser` (none: a client without cookies)."""
    r = get(d, f"/api/login/ticket/{t}", browser, headers={"X-Forwarded-For": xff} if xff else None)
    assert r.status_code == 200, f"GET /api/login/ticket/{t}: HTTP {r.status_code} {r.text[:300]!r}"
    return r.json()


def me(d, token):
    r = requests.get(d.url + "/api/me", headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, f"/api/me: HTTP {r.status_code} {r.text[:300]!r}"
    return r.json()


def oauth_login(d, openid, account="main", **params):
    """The whole same-browser flow for `openid`, as the page runs it: start, WeChat, callback,
    then the page at `{next}#login=H` collects the token with `GET /api/login/ticket/H` (from
    the same browser). Returns (callback response, the collect JSON or None)."""
    d.fakes.wechat.set_phone_user(openid)
    location, _, b = start(d, account, **params)
    r = get(d, callback_path(phone_follows(location)), b)
    not_500(r, "callback")
    if r.status_code == 302 and "#login=" in r.headers.get("location", ""):
        return r, ticket(d, handoff_of(r.headers["location"]), b)
    return r, None


def chat_login(d, openid, account=OA_MAIN):
    """(uid, token) of `openid` chatting with `account` (created by this message): the account
    sends a login code (wechatpy encrypts the message), which the web API trades for a token."""
    _, reply = WeChat(d, account).send_text(openid, "验证码", timeout=5)
    code = re.search(LOGIN_CODE, reply["Content"]).group(0)
    r = requests.post(d.url + "/api/login", json={"code": code}, timeout=10)
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    return me(d, token)["uid"], token


def chat_uid(d, openid):
    return chat_login(d, openid)[0]


def scan_login(d, openid):
    """Logs a desktop in by scanning with `openid`'s phone (web authorization on the login
    account, then 确认登录): (uid, token)."""
    desktop = new_browser()
    r = desktop.post(d.url + "/api/login/ticket", timeout=10)
    assert r.status_code == 200, r.text
    t = r.json()
    phone, page = phone_scans(d, openid, t)
    ok = phone_confirms(d, phone, page)
    assert "已在电脑上登录" in ok.text, ok.text[:300]
    done = ticket(d, t["ticket"], desktop)
    assert done["status"] == "done", done
    return done["uid"], done["token"]


def user_count(d):
    return json.loads(d.cli("--json", "user", "list", "--sort", "uid", "--limit", "1").stdout)["total"]


def found(d, query):
    """Users whose platform key, uid or name contains `query` (e.g. an openid)."""
    return json.loads(d.cli("--json", "user", "find", query).stdout)


def tokens_of(d, uid):
    return d.user(uid).get("tokens", [])


def assert_refused_page(r, status, what):
    assert r.status_code == status, f"{what}: HTTP {r.status_code}, expected {status}: {r.text[:400]!r}"
    assert "text/html" in r.headers.get("content-type", ""), f"{what}: not an HTML page: {r.headers}"
    assert RETRY_LINK.search(r.text), f"{what}: no retry link (<a href=\"/auth/wechat/main…\">重新登录</a>) in {r.text[:800]!r}"
    assert "#login=" not in r.headers.get("location", ""), f"{what}: a login handoff was issued"


# ---------------------------------------------------------------------------------------------
# The redirect flow
# ---------------------------------------------------------------------------------------------

def test_authorize_url_and_cookie(oauth):
    r = get(oauth, "/auth/wechat/main")
    assert r.status_code == 302, r.text[:300]
    location = r.headers["location"]
    u = urlparse(location)
    assert f"{u.scheme}://{u.netloc}{u.path}" == f"{oauth.fakes.wechat.url}/connect/oauth2/authorize", location
    assert u.fragment == "wechat_redirect", f"#wechat_redirect is required: {location}"
    pairs = parse_qsl(u.query, keep_blank_values=True)
    assert [k for k, _ in pairs] == ["appid", "redirect_uri", "response_type", "scope", "state"], \
        f"WeChat matches the link strictly, in this order: {location}"
    q = dict(pairs)
    assert q["appid"] == OA_MAIN["app_id"]
    assert q["redirect_uri"] == f"{PUBLIC_URL_WX}/auth/wechat/main/callback"
    assert (q["response_type"], q["scope"]) == ("code", "snsapi_base")
    assert STATE.fullmatch(q["state"]), f"state must be 1-128 [A-Za-z0-9]: {q['state']!r}"
    assert len(q["state"]) >= 16, f"state too short to be unguessable: {q['state']!r}"
    cookie, attrs = oauth_cookie(r)
    # The contract says /auth/wechat; "/" too lets the page collect its #login handoff.
    assert attrs.get("path") in ("/auth/wechat", "/"), attrs
    assert "httponly" in attrs and attrs.get("samesite", "").lower() == "lax", attrs
    assert attrs.get("max-age") == "600", attrs
    assert "secure" in attrs, f"public_url is https: the cookie must be Secure: {attrs}"
    # Two starts: two states, two cookies.
    _, q2, b2 = start(oauth)
    assert q2["state"] != q["state"] and "chatrelay_oauth=" + b2.cookies.get("chatrelay_oauth") != cookie
    # The other account authorizes with its own AppID.
    _, q3, _ = start(oauth, "other")
    assert q3["appid"] == OA_OTHER["app_id"]
    assert q3["redirect_uri"] == f"{PUBLIC_URL_WX}/auth/wechat/other/callback"
    # Nothing was exchanged yet.
    assert oauth.fakes.wechat.oauth_log()["authorize_errors"] == []


def test_unknown_account_is_a_404_page(oauth, no_oauth):
    for d, path in ((oauth, "/auth/wechat/nosuch"), (no_oauth, "/auth/wechat/main"),
                    (oauth, "/auth/wechat/nosuch/callback?code=x&state=y")):
        r = get(d, path)
        assert r.status_code == 404, f"{path}: HTTP {r.status_code} {r.text[:200]!r}"
        assert "text/html" in r.headers.get("content-type", ""), f"{path}: {r.headers}"


def test_full_flow_logs_in_the_chat_user(oauth):
    openid = "o_chat_" + secrets.token_hex(6)
    uid = chat_uid(oauth, openid)
    before, tokens = user_count(oauth), len(tokens_of(oauth, uid))
    r, handoff = oauth_login(oauth, openid)
    assert r.status_code == 302, f"callback: HTTP {r.status_code} {r.text[:300]!r}"
    assert r.headers["location"].startswith("/#login="), r.headers["location"]
    assert handoff and handoff["status"] == "done", handoff
    assert handoff["uid"] == uid, f"web login uid {handoff['uid']} is not the chat uid {uid}"
    assert me(oauth, handoff["token"])["uid"] == uid
    assert user_count(oauth) == before, "the chat user must be reused, not a new one"
    assert len(tokens_of(oauth, uid)) == tokens + 1, "one login, one new token"
    # The handoff is delivered once.
    assert ticket(oauth, handoff_of(r.headers["location"])) == {"status": "expired"}
    # The daemon exchanged the code once, with the right appid and secret.
    ex = [(p, e) for p, e in oauth.fakes.wechat.exchanges if p.get("appid") == OA_MAIN["app_id"]]
    assert ex and ex[-1][1] == 0 and ex[-1][0]["secret"] == OA_MAIN["app_secret"], ex[-1:]
    assert ex[-1][0]["grant_type"] == "authorization_code"


def test_new_openid_is_the_same_user_in_chat_later(oauth):
    openid = "o_new_" + secrets.token_hex(6)
    r, handoff = oauth_login(oauth, openid)
    assert handoff and handoff["status"] == "done", (r.status_code, r.text[:300])
    assert chat_uid(oauth, openid) == handoff["uid"], "the OA chat must find the user web login created"


def test_next_is_kept_when_local(oauth):
    r, handoff = oauth_login(oauth, "o_next_" + secrets.token_hex(6), next="/chat/new?x=1")
    assert r.status_code == 302 and handoff and handoff["status"] == "done"
    assert r.headers["location"].startswith("/chat/new?x=1#login="), r.headers["location"]


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example", "/\\evil.example",
                                    "//evil.example/%2F..", "http:evil.example", "javascript:alert(1)"])
def test_next_open_redirect_ends_on_a_local_path(oauth, target):
    oauth.fakes.wechat.set_phone_user("o_redirect_" + secrets.token_hex(6))
    r = get(oauth, "/auth/wechat/main?" + urlencode({"next": target}))
    not_500(r, f"start with next={target!r}")
    if r.status_code != 302:
        assert r.status_code in (400, 404), f"next={target!r}: HTTP {r.status_code}"
        return
    location, _, b = start(oauth, next=target)
    r = get(oauth, callback_path(phone_follows(location)), b)
    assert r.status_code == 302, f"next={target!r}: callback HTTP {r.status_code} {r.text[:200]!r}"
    loc = r.headers["location"]
    u = urlparse(loc)
    assert loc.startswith("/") and not loc.startswith("//") and not loc.startswith("/\\"), \
        f"next={target!r} led to {loc!r}"
    assert not u.scheme and not u.netloc and "evil.example" not in loc.split("#")[0], \
        f"next={target!r} led to {loc!r}"


# ---------------------------------------------------------------------------------------------
# Refusals: each changes nothing
# ---------------------------------------------------------------------------------------------

def test_forged_state_changes_nothing(oauth):
    openid = "o_forge_" + secrets.token_hex(6)
    uid = chat_uid(oauth, openid)
    tokens, before = len(tokens_of(oauth, uid)), user_count(oauth)
    _, q, cookie = start(oauth)
    code = oauth.fakes.wechat.mint_code(OA_MAIN["app_id"], openid)
    for state in ("forged" + secrets.token_hex(8), q["state"][:-1] + ("A" if q["state"][-1] != "A" else "B"), "",
                  q["state"] + "0", "A" * 4000, q["state"].lower() if q["state"] != q["state"].lower() else "Z"):
        r = get(oauth, "/auth/wechat/main/callback?" + urlencode({"code": code, "state": state}), cookie)
        assert_refused_page(r, 400, f"forged state {state!r}")
        assert "登录链接已失效" in r.text, r.text[:400]
    assert oauth.fakes.wechat.exchanges_of(code) == [], "a forged state must not reach WeChat"
    assert not oauth.fakes.wechat.code_used(code)
    assert user_count(oauth) == before and len(tokens_of(oauth, uid)) == tokens


def test_state_of_another_account_is_refused(oauth):
    """A state (and cookie) started for the account `other`, brought to `main`'s callback."""
    openid = "o_xacct_" + secrets.token_hex(6)
    _, q, cookie = start(oauth, "other")
    code = oauth.fakes.wechat.mint_code(OA_MAIN["app_id"], openid)
    r = get(oauth, "/auth/wechat/main/callback?" + urlencode({"code": code, "state": q["state"]}), cookie)
    assert_refused_page(r, 400, "another account's state")
    assert oauth.fakes.wechat.exchanges_of(code) == [] and found(oauth, openid) == []


def test_reused_state_changes_nothing(oauth):
    openid = "o_reuse_" + secrets.token_hex(6)
    oauth.fakes.wechat.set_phone_user(openid)
    location, q, cookie = start(oauth)
    back = callback_path(phone_follows(location))
    r = get(oauth, back, cookie)
    assert r.status_code == 302 and "#login=" in r.headers["location"], (r.status_code, r.text[:300])
    uid = ticket(oauth, handoff_of(r.headers["location"]), cookie)["uid"]
    tokens, before = len(tokens_of(oauth, uid)), user_count(oauth)
    # The same callback again (a reload, or a stolen URL), then the same state with a new code.
    r2 = get(oauth, back, cookie)
    assert_refused_page(r2, 400, "the same callback twice")
    fresh = oauth.fakes.wechat.mint_code(OA_MAIN["app_id"], openid)
    r3 = get(oauth, "/auth/wechat/main/callback?" + urlencode({"code": fresh, "state": q["state"]}), cookie)
    assert_refused_page(r3, 400, "a used state with a new code")
    assert oauth.fakes.wechat.exchanges_of(fresh) == []
    code = dict(parse_qsl(urlparse(back).query))["code"]
    assert len(oauth.fakes.wechat.exchanges_of(code)) == 1, "the used code must not be sent to WeChat again"
    assert user_count(oauth) == before and len(tokens_of(oauth, uid)) == tokens


@pytest.mark.parametrize("which", ["missing", "wrong", "other_start"])
def test_cookie_must_match_the_state(oauth, which):
    openid = "o_cookie_" + secrets.token_hex(6)
    oauth.fakes.wechat.set_phone_user(openid)
    location, q, _ = start(oauth)
    _, _, other_browser = start(oauth)
    back = callback_path(phone_follows(location))
    before = user_count(oauth)
    wrong = new_browser()
    wrong.cookies.set("chatrelay_oauth", secrets.token_urlsafe(32), domain="127.0.0.1", path="/")
    sent = {"missing": new_browser(), "wrong": wrong, "other_start": other_browser}[which]
    r = get(oauth, back, sent)
    assert_refused_page(r, 400, f"{which} cookie")
    code = dict(parse_qsl(urlparse(back).query))["code"]
    assert oauth.fakes.wechat.exchanges_of(code) == [], f"{which} cookie: the code reached WeChat"
    assert user_count(oauth) == before and found(oauth, openid) == []


def test_code_for_another_appid_is_refused(oauth):
    openid = "o_xapp_" + secrets.token_hex(6)
    _, q, cookie = start(oauth)
    code = oauth.fakes.wechat.mint_code(OA_OTHER["app_id"], openid)
    before = user_count(oauth)
    r = get(oauth, "/auth/wechat/main/callback?" + urlencode({"code": code, "state": q["state"]}), cookie)
    assert_refused_page(r, 502, "a code issued for another AppID")
    ex = oauth.fakes.wechat.exchanges_of(code)
    assert ex and ex[0][1] == 40029, f"WeChat should have answered 40029: {ex}"
    assert user_count(oauth) == before and found(oauth, openid) == []


@pytest.mark.parametrize("errcode,errmsg", [(40163, "code been used"), (40029, "invalid code"),
                                            (-1, "system error"), (45011, "api minute-quota reach limit")])
def test_wechat_errors_are_a_page_with_a_retry_link(oauth, errcode, errmsg):
    openid = "o_err_" + secrets.token_hex(6)
    oauth.fakes.wechat.set_phone_user(openid)
    location, _, cookie = start(oauth)
    back = callback_path(phone_follows(location))
    before = user_count(oauth)
    oauth.fakes.wechat.fail_next_exchange(errcode, errmsg)
    r = get(oauth, back, cookie)
    assert_refused_page(r, 502, f"errcode {errcode}")
    assert user_count(oauth) == before and found(oauth, openid) == []


def test_expired_code_and_refused_consent(oauth):
    openid = "o_exp_" + secrets.token_hex(6)
    oauth.fakes.wechat.set_phone_user(openid)
    location, _, cookie = start(oauth)
    back = callback_path(phone_follows(location))
    oauth.fakes.wechat.expire_code(dict(parse_qsl(urlparse(back).query))["code"])
    assert_refused_page(get(oauth, back, cookie), 502, "an expired code")
    # The user refuses the consent page: WeChat comes back with the state and no code.
    oauth.fakes.wechat.set_phone_user(openid, refuse=True)
    location, _, cookie = start(oauth)
    back = callback_path(phone_follows(location))
    assert "code=" not in back
    r = get(oauth, back, cookie)
    not_500(r, "no code")
    assert "#login=" not in r.headers.get("location", ""), r.headers
    assert RETRY_LINK.search(r.text), r.text[:400]
    assert found(oauth, openid) == []


def test_snapshot_user_is_not_logged_in(oauth):
    openid = "o_snap_" + secrets.token_hex(6)
    oauth.fakes.wechat.set_phone_user(openid, snapshot=True)
    before = user_count(oauth)
    location, _, cookie = start(oauth)
    r = get(oauth, callback_path(phone_follows(location)), cookie)
    not_500(r, "snapshot user")
    assert "#login=" not in r.headers.get("location", ""), f"a snapshot visitor got a login: {r.headers}"
    assert "text/html" in r.headers.get("content-type", ""), r.headers
    assert user_count(oauth) == before and found(oauth, openid) == []


# ---------------------------------------------------------------------------------------------
# Desktop login by scanning
# ---------------------------------------------------------------------------------------------

def new_ticket(d, xff, desktop=None):
    """POST /api/login/ticket from the desktop browser (which keeps its cookie)."""
    r = (desktop or requests).post(d.url + "/api/login/ticket", headers={"X-Forwarded-For": xff}, timeout=10)
    assert r.status_code == 200, f"POST /api/login/ticket: HTTP {r.status_code} {r.text[:300]!r}"
    return r.json()


CONFIRM_FORM = re.compile(r'<form method="post" action="(/auth/wechat/main/confirm)">.*?name="c" value="([^"]+)"', re.S)


def phone_scans(d, openid, t):
    """A phone opens the QR's URL in WeChat and authorizes: (its browser, the callback response)."""
    d.fakes.wechat.set_phone_user(openid)
    location, _, phone = start(d, **dict(parse_qsl(urlparse(t["url"]).query)))
    r = get(d, callback_path(phone_follows(location)), phone)
    not_500(r, "the phone's callback")
    return phone, r


def phone_confirms(d, phone, page):
    """The phone taps 确认登录 on the page the callback showed."""
    m = CONFIRM_FORM.search(page.text)
    assert m, f"no confirmation form on the phone: HTTP {page.status_code} {page.text[:500]!r}"
    return phone.post(d.url + m.group(1), data={"c": m.group(2)}, allow_redirects=False, timeout=10)


def test_config_tells_the_page(oauth, no_oauth):
    c = requests.get(oauth.url + "/api/config", timeout=10).json()
    assert c.get("wechat_login") == {"account": "main", "oauth": True, "auto": True}, c.get("wechat_login")
    c = requests.get(no_oauth.url + "/api/config", timeout=10).json()
    wl = c.get("wechat_login")
    assert wl is None or wl.get("oauth") is False, wl


def test_scan_flow(oauth):
    xff = "198.51.100.10"
    desktop = new_browser()
    t = new_ticket(oauth, xff, desktop)
    assert set(t) >= {"ticket", "account", "url", "qr_svg", "expires_at"}, t
    assert t["account"] == "main"
    assert t["url"] == f"{PUBLIC_URL_WX}/auth/wechat/main?ticket={t['ticket']}", t
    assert t["qr_svg"] == f"/api/login/ticket/{t['ticket']}/qr.svg"
    assert len(t["ticket"]) >= 16, t
    qr = get(oauth, t["qr_svg"])
    assert qr.status_code == 200 and qr.headers["content-type"].startswith("image/svg+xml"), qr.headers
    assert "<svg" in qr.text
    assert ticket(oauth, t["ticket"], desktop) == {"status": "pending"}

    # The phone scans the QR: WeChat opens the URL and runs web authorization; the phone is
    # asked before the desktop is logged in, and a scan alone logs nobody in.
    openid = "o_scan_" + secrets.token_hex(6)
    uid = chat_uid(oauth, openid)
    phone, r = phone_scans(oauth, openid, t)
    assert r.status_code == 200 and "#login=" not in r.headers.get("location", ""), (r.status_code, r.headers)
    assert "已在电脑上登录" not in r.text, "a scan alone must not log the desktop in"
    assert ticket(oauth, t["ticket"], desktop) == {"status": "pending"}
    # Someone else's browser cannot confirm with the phone's form.
    stranger = phone_confirms(oauth, new_browser(), r)
    not_500(stranger, "a confirmation from another browser")
    assert "已在电脑上登录" not in stranger.text
    assert ticket(oauth, t["ticket"], desktop) == {"status": "pending"}
    ok = phone_confirms(oauth, phone, r)
    assert ok.status_code == 200 and "已在电脑上登录" in ok.text, (ok.status_code, ok.text[:300])

    # Only the desktop that asked for the ticket collects it, once.
    assert ticket(oauth, t["ticket"]) == {"status": "expired"}, "a client without the desktop's cookie"
    assert ticket(oauth, t["ticket"], phone) == {"status": "expired"}, "the phone's browser"
    done = ticket(oauth, t["ticket"], desktop)
    assert done.get("status") == "done" and done.get("uid") == uid and done.get("token"), done
    assert me(oauth, done["token"])["uid"] == uid
    assert ticket(oauth, t["ticket"], desktop) == {"status": "expired"}, "the token is delivered once"

    # Scanning the used ticket again binds nothing: the QR has expired.
    oauth.fakes.wechat.set_phone_user("o_scan2_" + secrets.token_hex(6))
    r = get(oauth, f"/auth/wechat/main?ticket={t['ticket']}")
    assert r.status_code in (400, 404, 410), f"a used ticket: HTTP {r.status_code} {r.text[:300]!r}"
    assert "已在电脑上登录" not in r.text and "location" not in r.headers, r.headers


def test_handoff_is_for_the_same_browser_only(oauth):
    """A #login=H link opened in another browser (leaked, forwarded) logs nobody in."""
    oauth.fakes.wechat.set_phone_user("o_leak_" + secrets.token_hex(6))
    location, _, b = start(oauth)
    r = get(oauth, callback_path(phone_follows(location)), b)
    assert r.status_code == 302, r.text[:300]
    h = handoff_of(r.headers["location"])
    assert ticket(oauth, h) == {"status": "expired"}, "no cookie"
    assert ticket(oauth, h, new_browser()) == {"status": "expired"}, "another browser"
    done = ticket(oauth, h, b)
    assert done["status"] == "done" and done["token"], \
        f"the browser that logged in could not collect its own handoff: {done} (cookies it holds: {b.cookies})"


def test_ticket_used_while_the_phone_authorizes(oauth):
    """Two phones scan the same QR: the first to confirm logs the desktop in, the second
    binds nothing."""
    xff = "198.51.100.11"
    desktop = new_browser()
    t = new_ticket(oauth, xff, desktop)
    first, second = "o_first_" + secrets.token_hex(6), "o_second_" + secrets.token_hex(6)
    phone1, r1 = phone_scans(oauth, first, t)
    phone2, r2 = phone_scans(oauth, second, t)
    ok = phone_confirms(oauth, phone1, r1)
    assert ok.status_code == 200 and "已在电脑上登录" in ok.text, (ok.status_code, ok.text[:300])
    if CONFIRM_FORM.search(r2.text):
        late = phone_confirms(oauth, phone2, r2)
        not_500(late, "the second phone")
        assert "已在电脑上登录" not in late.text, late.text[:300]
    done = ticket(oauth, t["ticket"], desktop)
    assert done["status"] == "done" and me(oauth, done["token"])["uid"] == found(oauth, first)[0]["uid"], done


def test_unknown_ticket_is_expired(oauth):
    for t in ("nosuchticket0000000000", secrets.token_urlsafe(24), "x" * 300):
        assert ticket(oauth, t) == {"status": "expired"}
    r = get(oauth, "/api/login/ticket/nosuchticket0000000000/qr.svg")
    assert r.status_code in (404, 410), f"qr of an unknown ticket: HTTP {r.status_code}"


def test_scan_login_off_without_oauth(no_oauth):
    r = requests.post(no_oauth.url + "/api/login/ticket", timeout=10)
    assert r.status_code == 404, r.text[:300]
    assert r.json()["error"]["code"] == "scan_login_off", r.text


def test_too_many_tickets_from_one_address(oauth):
    xff = "198.51.100.77"
    statuses = [requests.post(oauth.url + "/api/login/ticket", headers={"X-Forwarded-For": xff},
                              timeout=10).status_code for _ in range(120)]
    assert 429 in statuses, f"120 tickets from one address were all granted: {sorted(set(statuses))}"
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    # Another address is not affected.
    assert new_ticket(oauth, "198.51.100.78")["ticket"]


def test_authorize_floods_from_one_address_are_limited(oauth):
    """Each authorization makes a state in the store: one address cannot fill it."""
    xff = "198.51.100.91"
    statuses = [requests.get(oauth.url + "/auth/wechat/main", headers={"X-Forwarded-For": xff},
                             allow_redirects=False, timeout=10).status_code for _ in range(130)]
    assert statuses[0] == 302, statuses[:3]
    assert statuses.count(429) >= 10, f"130 authorizations from one address: {sorted(set(statuses))}"
    assert set(statuses) <= {302, 429}, sorted(set(statuses))
    # Another address still logs in.
    r = requests.get(oauth.url + "/auth/wechat/main", headers={"X-Forwarded-For": "198.51.100.92"},
                     allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.status_code


def test_scan_with_a_wechat_error_keeps_the_ticket_pending(oauth):
    xff = "198.51.100.12"
    desktop = new_browser()
    t = new_ticket(oauth, xff, desktop)
    openid = "o_scanerr_" + secrets.token_hex(6)
    oauth.fakes.wechat.set_phone_user(openid)
    location, _, phone = start(oauth, ticket=t["ticket"])
    back = callback_path(phone_follows(location))
    oauth.fakes.wechat.fail_next_exchange(-1, "system error")
    r = get(oauth, back, phone)
    assert_refused_page(r, 502, "a WeChat error during a scan")
    assert f"ticket={t['ticket']}" in r.text, "the retry link must keep the desktop's ticket"
    assert ticket(oauth, t["ticket"], desktop) == {"status": "pending"}
    # Retrying from the page's link completes the desktop login.
    link = re.search(r'href="(/auth/wechat/main[^"]*)"', r.text).group(1).replace("&amp;", "&")
    r = get(oauth, link, phone)
    assert r.status_code == 302, r.text[:300]
    r = get(oauth, callback_path(phone_follows(r.headers["location"])), phone)
    ok = phone_confirms(oauth, phone, r)
    assert ok.status_code == 200 and "已在电脑上登录" in ok.text, ok.text[:300]
    done = ticket(oauth, t["ticket"], desktop)
    assert done["status"] == "done" and me(oauth, done["token"])["uid"] == found(oauth, openid)[0]["uid"]
