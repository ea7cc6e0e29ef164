"""A fake api.weixin.qq.com, open.weixin.qq.com and qyapi.weixin.qq.com on 127.0.0.1: the Official
Account's stable_token and customer-service API; web authorization (网页授权, OAuth 2.0: the
browser's `connect/oauth2/authorize` and the server's `sns/oauth2/access_token`, `sns/userinfo`);
WeCom's gettoken, message/send and group robot webhook; and a place for AI bot `response_url`
posts.

`GET /cgi-bin/media/get?access_token&media_id` serves `fake.media[media_id]` (bytes, as
audio/amr) and counts the calls in `media_gets`; an unknown media_id gets errcode 40007 as JSON.
The same path is WeCom's (qyapi) media/get: it takes the Official Account's tokens (`tok-`) and
WeCom's (`wtok-`, from gettoken) alike; any other token gets errcode 40014 (invalid
access_token), as both platforms answer. `expire_wecom_tokens()` makes every WeCom token issued
so far expired: media/get answers them errcode 42001, as WeCom does (a fresh gettoken works).
`POST /cgi-bin/media/upload?type=voice` takes a multipart `media` file (at most 2 MB, as WeChat)
and records it in `uploads` under the media_id it answers (`up-<n>`).

Tokens are `tok-<appid>-<n>`. Apps listed in `no_push` answer custom/send with errcode 48001
(an unverified subscription account), as WeChat does. The group robot, like WeCom's, takes 20
messages a minute and answers errcode 45009 beyond (`robot_refused` counts those).

Web authorization, as WeChat does it
------------------------------------
Register each Official Account first: `fake.add_oauth_app(appid, secret)`. Then point the
daemon's `oauth_base` and `api_base` at `fake.url`.

`GET /connect/oauth2/authorize?appid&redirect_uri&response_type=code&scope&state` plays WeChat's
browser for the "current phone user" (`set_phone_user`): 302 to `redirect_uri?code=C&state=S`,
where C is bound to that appid and the user's openid, single-use, and expires after `code_ttl`
seconds (300). Without a phone user it shows WeChat's "请在微信客户端打开链接" page (HTTP 200);
an unknown appid, a scope other than snsapi_base/snsapi_userinfo, a response_type other than
`code`, a state that is not up to 128 `[A-Za-z0-9]`, or parameters not in WeChat's order
(appid, redirect_uri, response_type, scope, state: WeChat matches the link strictly) also give a
WeChat-like error page (200, recorded in `authorize_errors`). A phone user with `refuse` (the user taps 拒绝 on the consent
page) is sent to `redirect_uri?state=S` without a code.

The daemon's public_url is not reachable from a test: `route(public_origin, local_origin)` makes
the fake rewrite the origin of every redirect_uri it sends the browser to (e.g.
`https://chat.example.test` -> `http://127.0.0.1:PORT`). `authorize_requests` records the
parameters exactly as received (before any rewrite).

`GET /sns/oauth2/access_token?appid&secret&code&grant_type=authorization_code` answers the real
JSON `{"access_token","expires_in":7200,"refresh_token","openid","scope"[,"is_snapshotuser":1]
[,"unionid"]}` or `{"errcode","errmsg"}`: 40013 unknown appid, 40125 wrong secret, 40029 an
unknown or expired code or one issued for another appid, 40163 a code already used, 40002 a
wrong grant_type. `exchanges` records (params, errcode or 0). `fail_next_exchange(errcode,
errmsg)` makes the next exchange fail with that error (whatever the code; the code stays unused).
`GET /sns/userinfo?access_token&openid[&lang]` -> `{"openid","nickname",...}` for a token issued
with scope snsapi_userinfo (48001 otherwise, 40001 unknown token, 40003 wrong openid).

Control API (Python, and the same over HTTP for browser-side helpers; every /fake/* answer carries
`Access-Control-Allow-Origin: *`, JSON bodies in and out):
  set_phone_user(openid, unionid=None, snapshot=False, refuse=False, nickname=None, openids=None)
  clear_phone_user()                          POST /fake/phone_user   {"openid",..} or {} to clear
      `openids` {appid: openid} overrides `openid` per appid (the openid is per AppID in WeChat).
  mint_code(appid, openid, unionid=None, snapshot=False, scope="snsapi_base") -> code
                                              POST /fake/oauth/code   {"appid","openid",..} -> {"code"}
      a code as if WeChat had redirected the phone (for tests that do not follow the authorize
      redirect); bound, single-use and expiring like the others.
  expire_code(code)                           POST /fake/oauth/expire {"code"}
  fail_next_exchange(errcode, errmsg)         POST /fake/oauth/fail   {"errcode","errmsg"}
  route(public_origin, local_origin)          POST /fake/route        {"public","local"}
  oauth_log() -> {"authorize": [...], "exchanges": [...], "authorize_errors": [...]}
                                              GET  /fake/oauth/log
  openids_issued(appid) -> set of openids that got a code for that appid

Run this file directly for a self-check of the web authorization fake (no daemon needed):
    .venv/bin/python scripts/e2e/fake_wechat.py
"""

import html
import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

OAUTH_SCOPES = ("snsapi_base", "snsapi_userinfo")
AUTHORIZE_ORDER = ("appid", "redirect_uri", "response_type", "scope", "state")
STATE_RE = re.compile(r"[A-Za-z0-9]{0,128}")


def _rid():
    """The `rid` WeChat appends to every errmsg."""
    return f"{secrets.token_hex(4)}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"


def map_origin(url, routes):
    """`url` with its scheme://host[:port] replaced when `routes` maps that origin."""
    u = urlparse(url)
    origin = f"{u.scheme}://{u.netloc}"
    local = routes.get(origin.lower())
    if not local:
        return url
    lu = urlparse(local)
    return urlunparse((lu.scheme, lu.netloc, u.path, u.params, u.query, u.fragment))


def add_query(url, params):
    """`url` with `params` appended to its query (keeping what is there)."""
    u = urlparse(url)
    extra = urlencode(params)
    query = f"{u.query}&{extra}" if u.query else extra
    return urlunparse((u.scheme, u.netloc, u.path, u.params, query, u.fragment))


def _page(title, text):
    """A small HTML page like WeChat's in-app notices."""
    return (f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"></head>'
            f'<body><h2>{html.escape(title)}</h2><p>{html.escape(text)}</p></body></html>').encode()


class FakeWechat:
    def __init__(self, code_ttl=300):
        self.no_push = set()
        self.sent = []           # (appid, body) of custom/send calls that succeeded
        self.token_requests = 0
        self.wecom_sent = []     # message/send bodies
        self.robot_sent = []     # (key, body) of webhook/send
        self.robot_times = []    # when each accepted webhook/send arrived
        self.robot_refused = 0   # webhook/send refused by the 20-a-minute limit
        self.responses = []      # (path, body) posted to response URLs
        self.gettoken_requests = 0
        self.wecom_expired_upto = 0  # WeCom tokens wtok-<corp>-<n> with n <= this are expired
        self.media = {}              # media_id -> bytes served by /cgi-bin/media/get
        self.media_gets = []         # media_ids asked for
        self.uploads = []            # (media_id, parsed multipart) of /cgi-bin/media/upload
        # Web authorization (see the module doc).
        self.code_ttl = code_ttl
        self.oauth_apps = {}         # appid -> secret
        self.phone_user = None       # dict(openid, unionid, snapshot, refuse, nickname, openids)
        self.codes = {}              # code -> dict(appid, openid, unionid, snapshot, scope, at, used)
        self.sns_tokens = {}         # sns access_token -> dict(appid, openid, scope, unionid, nickname)
        self.routes = {}             # public origin (lower case) -> local origin
        self.authorize_requests = []  # query dicts of /connect/oauth2/authorize, as received
        self.authorize_errors = []   # (query dict, reason)
        self.exchanges = []          # (query dict, errcode or 0) of /sns/oauth2/access_token
        self.userinfo_requests = []  # query dicts of /sns/userinfo
        self.exchange_failures = []  # queued (errcode, errmsg) for the next exchanges
        self.issued = {}             # appid -> set of openids that got a code
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, obj, status=200, cors=False):
                body = json.dumps(obj, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                if cors:
                    self.send_header("access-control-allow-origin", "*")
                self.end_headers()
                self.wfile.write(body)

            def _html(self, body, status=200):
                self.send_response(status)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _redirect(self, location):
                self.send_response(302)
                self.send_header("location", location)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_OPTIONS(self):
                # CORS preflight for the control API (a page's stub calls it cross-origin).
                self.send_response(204)
                self.send_header("access-control-allow-origin", "*")
                self.send_header("access-control-allow-methods", "GET, POST, OPTIONS")
                self.send_header("access-control-allow-headers", "content-type")
                self.send_header("access-control-max-age", "600")
                self.end_headers()

            def do_GET(self):
                url = urlparse(self.path)
                q = dict(parse_qsl(url.query, keep_blank_values=True))
                if url.path == "/cgi-bin/gettoken":
                    with fake.lock:
                        fake.gettoken_requests += 1
                        n = fake.gettoken_requests
                    self._json({"errcode": 0, "errmsg": "ok", "access_token": f"wtok-{q.get('corpid', '')}-{n}",
                                "expires_in": 7200})
                elif url.path == "/cgi-bin/media/get":
                    with fake.lock:
                        fake.media_gets.append(q.get("media_id", ""))
                        data = fake.media.get(q.get("media_id", ""))
                    if not q.get("access_token", "").startswith(("tok-", "wtok-")):
                        self._json({"errcode": 40014, "errmsg": f"invalid access_token, rid: {_rid()}"})
                        return
                    token = q.get("access_token", "")
                    if token.startswith("wtok-") and int(token.rsplit("-", 1)[1]) <= fake.wecom_expired_upto:
                        self._json({"errcode": 42001, "errmsg": f"access_token expired, rid: {_rid()}"})
                        return
                    if data is None:
                        self._json({"errcode": 40007, "errmsg": f"invalid media_id, rid: {_rid()}"})
                        return
                    self.send_response(200)
                    self.send_header("content-type", "audio/amr")
                    self.send_header("content-disposition", 'attachment; filename="voice.amr"')
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif url.path == "/connect/oauth2/authorize":
                    self._authorize(q)
                elif url.path == "/sns/oauth2/access_token":
                    self._json(fake._exchange(q))
                elif url.path == "/sns/userinfo":
                    self._json(fake._userinfo(q))
                elif url.path == "/fake/oauth/log":
                    self._json(fake.oauth_log(), cors=True)
                else:
                    self._json({"errcode": 40001, "errmsg": "unknown path"})

            def _authorize(self, q):
                with fake.lock:
                    fake.authorize_requests.append(dict(q))
                    user = dict(fake.phone_user) if fake.phone_user else None
                appid, state = q.get("appid", ""), q.get("state", "")
                redirect_uri, scope = q.get("redirect_uri", ""), q.get("scope", "")
                reason = None
                keys = [k for k, _ in parse_qsl(urlparse(self.path).query, keep_blank_values=True)]
                if appid not in fake.oauth_apps:
                    reason = ("参数错误", "appid 无效 (errcode 40013)")
                elif q.get("response_type") != "code":
                    reason = ("参数错误", "response_type 必须为 code")
                elif scope not in OAUTH_SCOPES:
                    reason = ("Scope 参数错误或没有 Scope 权限", "errcode 10005")
                elif not redirect_uri or urlparse(redirect_uri).scheme not in ("http", "https"):
                    reason = ("redirect_uri 参数错误", "errcode 10003")
                elif not STATE_RE.fullmatch(state):
                    reason = ("参数错误", "state 参数只能为 a-zA-Z0-9，最多 128 字节")
                elif keys[:5] != list(AUTHORIZE_ORDER):
                    # WeChat matches the link strictly: the parameters must come in this order.
                    reason = ("参数错误", f"参数顺序必须为 {'&'.join(AUTHORIZE_ORDER)}，收到 {'&'.join(keys)}")
                if reason:
                    with fake.lock:
                        fake.authorize_errors.append((dict(q), reason[1]))
                    self._html(_page(*reason))
                    return
                if user is None:
                    self._html(_page("请在微信客户端打开链接", "这个页面需要在微信里打开"))
                    return
                target = map_origin(redirect_uri, fake.routes)
                if user.get("refuse"):
                    self._redirect(add_query(target, {"state": state}))
                    return
                openid = (user.get("openids") or {}).get(appid) or user["openid"]
                code = fake.mint_code(appid, openid, unionid=user.get("unionid"),
                                      snapshot=user.get("snapshot", False), scope=scope,
                                      nickname=user.get("nickname"))
                self._redirect(add_query(target, {"code": code, "state": state}))

            def _body(self):
                raw = self.rfile.read(int(self.headers.get("content-length", "0") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = None
                return body if isinstance(body, dict) else {}

            def _control(self, path, body):
                if path == "/fake/phone_user":
                    if body.get("openid"):
                        fake.set_phone_user(body["openid"], unionid=body.get("unionid"),
                                            snapshot=bool(body.get("snapshot")), refuse=bool(body.get("refuse")),
                                            nickname=body.get("nickname"), openids=body.get("openids"))
                    else:
                        fake.clear_phone_user()
                    return {"ok": True}
                if path == "/fake/oauth/code":
                    return {"code": fake.mint_code(body.get("appid", ""), body.get("openid", ""),
                                                   unionid=body.get("unionid"), snapshot=bool(body.get("snapshot")),
                                                   scope=body.get("scope", "snsapi_base"),
                                                   nickname=body.get("nickname"))}
                if path == "/fake/oauth/expire":
                    fake.expire_code(body.get("code", ""))
                    return {"ok": True}
                if path == "/fake/oauth/fail":
                    fake.fail_next_exchange(int(body.get("errcode", 40029)), body.get("errmsg", "invalid code"))
                    return {"ok": True}
                if path == "/fake/route":
                    fake.route(body.get("public", ""), body.get("local", ""))
                    return {"ok": True}
                return None

            def do_POST(self):
                url = urlparse(self.path)
                if url.path.startswith("/fake/"):
                    answer = self._control(url.path, self._body())
                    if answer is None:
                        self._json({"error": f"no control endpoint {url.path}"}, status=404, cors=True)
                    else:
                        self._json(answer, cors=True)
                    return
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                if url.path == "/cgi-bin/media/upload":
                    # Temporary media, as WeChat takes it: multipart `media`, voice <= 2 MB.
                    from fake_openai import parse_multipart
                    kind = dict(parse_qsl(url.query)).get("type", "")
                    upload = parse_multipart(self.headers.get("content-type", ""), raw)
                    if upload is None or not upload.get("file"):
                        self._json({"errcode": 41005, "errmsg": "media data missing"})
                        return
                    if kind != "voice" or len(upload["file"]) > 2 * 1024 * 1024:
                        self._json({"errcode": 40004, "errmsg": "invalid media type or size"})
                        return
                    with fake.lock:
                        media_id = f"up-{len(fake.uploads) + 1}"
                        fake.uploads.append((media_id, upload))
                    self._json({"type": kind, "media_id": media_id, "created_at": int(time.time())})
                    return
                body = json.loads(raw or b"{}")
                if url.path == "/cgi-bin/stable_token":
                    with fake.lock:
                        fake.token_requests += 1
                        n = fake.token_requests
                    self._json({"access_token": f"tok-{body['appid']}-{n}", "expires_in": 7200})
                elif url.path == "/cgi-bin/message/custom/send":
                    token = dict(parse_qsl(url.query)).get("access_token", "")
                    appid = token.split("-")[1] if token.count("-") >= 2 else ""
                    if appid in fake.no_push:
                        self._json({"errcode": 48001, "errmsg": "api unauthorized"})
                        return
                    with fake.lock:
                        fake.sent.append((appid, body))
                    self._json({"errcode": 0, "errmsg": "ok"})
                elif url.path == "/cgi-bin/message/send":
                    with fake.lock:
                        fake.wecom_sent.append(body)
                    self._json({"errcode": 0, "errmsg": "ok", "msgid": "m1"})
                elif url.path == "/cgi-bin/webhook/send":
                    with fake.lock:
                        now = time.time()
                        fake.robot_times = [t for t in fake.robot_times if now - t < 60]
                        if len(fake.robot_times) >= 20:
                            fake.robot_refused += 1
                            self._json({"errcode": 45009, "errmsg": "api freq out of limit"})
                            return
                        fake.robot_times.append(now)
                        fake.robot_sent.append((dict(parse_qsl(url.query)).get("key", ""), body))
                    self._json({"errcode": 0, "errmsg": "ok"})
                elif url.path.startswith("/response/"):
                    with fake.lock:
                        fake.responses.append((url.path, body))
                    self._json({"errcode": 0, "errmsg": "ok"})
                elif url.path == "/cgi-bin/message/custom/typing":
                    self._json({"errcode": 0, "errmsg": "ok"})
                else:
                    self._json({"errcode": 40001, "errmsg": "unknown path"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()

    def expire_wecom_tokens(self):
        """Every WeCom access_token issued so far is expired from now on (errcode 42001)."""
        with self.lock:
            self.wecom_expired_upto = self.gettoken_requests

    def sent_to(self, openid):
        with self.lock:
            return [b for _, b in self.sent if b.get("touser") == openid]

    # -- web authorization: test controls -------------------------------------------------------

    def add_oauth_app(self, appid, secret):
        """An Official Account with web authorization (its AppID and AppSecret)."""
        with self.lock:
            self.oauth_apps[appid] = secret

    def set_phone_user(self, openid, unionid=None, snapshot=False, refuse=False, nickname=None, openids=None):
        """Who holds the phone whose WeChat browser follows the authorize link."""
        with self.lock:
            self.phone_user = dict(openid=openid, unionid=unionid, snapshot=snapshot, refuse=refuse,
                                   nickname=nickname, openids=dict(openids or {}))

    def clear_phone_user(self):
        with self.lock:
            self.phone_user = None

    def route(self, public_origin, local_origin):
        """Redirects to `public_origin` go to `local_origin` instead (both `scheme://host[:port]`)."""
        with self.lock:
            self.routes[public_origin.rstrip("/").lower()] = local_origin.rstrip("/")

    def mint_code(self, appid, openid, unionid=None, snapshot=False, scope="snsapi_base", nickname=None):
        """A code WeChat would hand the redirect for this user of `appid`."""
        code = "0" + secrets.token_hex(15)  # WeChat's codes: 32 characters
        with self.lock:
            self.codes[code] = dict(appid=appid, openid=openid, unionid=unionid, snapshot=bool(snapshot),
                                    scope=scope, at=time.time(), used=False, nickname=nickname)
            self.issued.setdefault(appid, set()).add(openid)
        return code

    def expire_code(self, code):
        with self.lock:
            if code in self.codes:
                self.codes[code]["at"] = 0

    def fail_next_exchange(self, errcode, errmsg):
        with self.lock:
            self.exchange_failures.append((errcode, errmsg))

    def openids_issued(self, appid):
        with self.lock:
            return set(self.issued.get(appid, ()))

    def oauth_log(self):
        with self.lock:
            return {"authorize": list(self.authorize_requests), "exchanges": [list(e) for e in self.exchanges],
                    "authorize_errors": [list(e) for e in self.authorize_errors],
                    "userinfo": list(self.userinfo_requests)}

    def exchanges_of(self, code):
        """(params, errcode) of every exchange that named `code`."""
        with self.lock:
            return [(p, e) for p, e in self.exchanges if p.get("code") == code]

    def code_used(self, code):
        with self.lock:
            c = self.codes.get(code)
            return bool(c and c["used"])

    # -- web authorization: the server-side API --------------------------------------------------

    def _exchange(self, q):
        with self.lock:
            answer = self._exchange_locked(q)
            self.exchanges.append((dict(q), answer.get("errcode", 0)))
            return answer

    def _exchange_locked(self, q):
        def err(code, msg):
            return {"errcode": code, "errmsg": f"{msg}, rid: {_rid()}"}

        appid = q.get("appid", "")
        if appid not in self.oauth_apps:
            return err(40013, "invalid appid")
        if not secrets.compare_digest(q.get("secret", "").encode(), self.oauth_apps[appid].encode()):
            return err(40125, "invalid appsecret")
        if q.get("grant_type") != "authorization_code":
            return err(40002, "invalid grant_type")
        if self.exchange_failures:
            return err(*self.exchange_failures.pop(0))
        c = self.codes.get(q.get("code", ""))
        if c is None or c["appid"] != appid or time.time() - c["at"] > self.code_ttl:
            return err(40029, "invalid code")
        if c["used"]:
            return err(40163, "code been used")
        c["used"] = True
        token = "sns-" + secrets.token_hex(20)
        self.sns_tokens[token] = dict(appid=appid, openid=c["openid"], scope=c["scope"], unionid=c["unionid"],
                                      nickname=c.get("nickname"))
        answer = {"access_token": token, "expires_in": 7200, "refresh_token": "snsr-" + secrets.token_hex(20),
                  "openid": c["openid"], "scope": c["scope"]}
        if c["snapshot"]:
            answer["is_snapshotuser"] = 1
        if c["unionid"]:
            answer["unionid"] = c["unionid"]
        return answer

    def _userinfo(self, q):
        with self.lock:
            self.userinfo_requests.append(dict(q))
            t = self.sns_tokens.get(q.get("access_token", ""))
        if t is None:
            return {"errcode": 40001, "errmsg": f"invalid credential, access_token is invalid or not latest, rid: {_rid()}"}
        if q.get("openid") != t["openid"]:
            return {"errcode": 40003, "errmsg": f"invalid openid, rid: {_rid()}"}
        if t["scope"] != "snsapi_userinfo":
            return {"errcode": 48001, "errmsg": f"api unauthorized, rid: {_rid()}"}
        info = {"openid": t["openid"], "nickname": t["nickname"] or f"微信用户{t['openid'][-4:]}", "sex": 0,
                "province": "", "city": "", "country": "", "headimgurl": "", "privilege": []}
        if t["unionid"]:
            info["unionid"] = t["unionid"]
        return info


def _self_check():
    """The web authorization fake against a client written from PROTOCOLS.md §8.1."""
    import urllib.error
    import urllib.request

    fake = FakeWechat()
    fake.add_oauth_app("wxapp1", "secret1")
    fake.add_oauth_app("wxapp2", "secret2")
    fake.route("https://chat.example.test", "http://127.0.0.1:9")
    checks = []

    def check(what, ok):
        checks.append(bool(ok))
        print(("ok   " if ok else "FAIL ") + what)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)

    def get(path):
        try:
            with opener.open(fake.url + path, timeout=5) as r:
                return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    def authorize(**over):
        q = dict(appid="wxapp1", redirect_uri="https://chat.example.test/auth/wechat/main/callback",
                 response_type="code", scope="snsapi_base", state="abc123")
        q.update(over)
        return get("/connect/oauth2/authorize?" + urlencode(q) + "#wechat_redirect")

    def exchange(code, appid="wxapp1", secret="secret1"):
        return json.loads(get("/sns/oauth2/access_token?" + urlencode(
            dict(appid=appid, secret=secret, code=code, grant_type="authorization_code")))[2])

    st, _, text = authorize()
    check("no phone user: WeChat's open-in-client page", st == 200 and "微信客户端" in text)
    fake.set_phone_user("o_user1", unionid="u_1")
    st, h, _ = authorize()
    loc = urlparse(h["Location"]) if st == 302 else None
    q = dict(parse_qsl(loc.query)) if loc else {}
    check("302 to the routed redirect_uri with code and state",
          loc and f"{loc.scheme}://{loc.netloc}{loc.path}" == "http://127.0.0.1:9/auth/wechat/main/callback"
          and q.get("state") == "abc123" and q.get("code"))
    code = q["code"]
    check("another appid's exchange: 40029", exchange(code, "wxapp2", "secret2")["errcode"] == 40029)
    check("a wrong secret: 40125", exchange(code, secret="nope")["errcode"] == 40125)
    a = exchange(code)
    check("exchange: openid, unionid, scope", a.get("openid") == "o_user1" and a.get("unionid") == "u_1"
          and a.get("scope") == "snsapi_base" and a.get("expires_in") == 7200 and "is_snapshotuser" not in a)
    check("the same code again: 40163", exchange(code)["errcode"] == 40163)
    check("an unknown code: 40029", exchange("nosuchcode")["errcode"] == 40029)
    user_info = json.loads(get(f"/sns/userinfo?access_token={a['access_token']}&openid=o_user1&lang=zh_CN")[2])
    check("userinfo needs snsapi_userinfo: 48001", user_info.get("errcode") == 48001)
    code2 = fake.mint_code("wxapp1", "o_user2", scope="snsapi_userinfo", snapshot=True, nickname="小明")
    b = exchange(code2)
    check("a snapshot user: is_snapshotuser 1", b.get("is_snapshotuser") == 1 and b.get("openid") == "o_user2")
    info = json.loads(get(f"/sns/userinfo?access_token={b['access_token']}&openid=o_user2")[2])
    check("userinfo: nickname", info.get("nickname") == "小明")
    code3 = fake.mint_code("wxapp1", "o_user3")
    fake.expire_code(code3)
    check("an expired code: 40029", exchange(code3)["errcode"] == 40029)
    fake.fail_next_exchange(-1, "system error")
    code4 = fake.mint_code("wxapp1", "o_user4")
    check("an injected error, the code stays unused", exchange(code4)["errcode"] == -1 and not fake.code_used(code4)
          and exchange(code4).get("openid") == "o_user4")
    q = "appid=wxapp1&scope=snsapi_base&redirect_uri=https%3A%2F%2Fchat.example.test%2Fcb&response_type=code&state=s1"
    st, _, text = get("/connect/oauth2/authorize?" + q)
    check("parameters out of order: an error page", st == 200 and "参数顺序" in text)
    st, _, text = authorize(state="bad-state!")
    check("a state outside [A-Za-z0-9]: an error page", st == 200 and "state" in text)
    fake.set_phone_user("o_user1", refuse=True)
    st, h, _ = authorize(scope="snsapi_userinfo")
    check("a refused consent: back with the state, no code",
          st == 302 and "code=" not in h["Location"] and "state=abc123" in h["Location"])
    fake.stop()
    print(f"\n{sum(checks)}/{len(checks)} checks passed")
    return all(checks)


if __name__ == "__main__":
    raise SystemExit(0 if _self_check() else 1)
