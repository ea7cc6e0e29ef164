"""Fake WeChat Pay (API v3, Native) and Alipay (open API gateway) on 127.0.0.1, real wire formats.

Both fakes check every request the daemon sends the way the real service does (WeChat: the
`Authorization: WECHATPAY2-SHA256-RSA2048 ...` signature over `METHOD\\nPATH?QUERY\\nTS\\nNONCE\\nBODY\\n`
with the merchant key; Alipay: the RSA2 `sign` over the sorted, empty-dropped `k=v&...` of every
parameter except `sign`), sign every answer the way the real service does, and record what they
received so tests can assert on it. They also build the asynchronous notifications the real
services send (`notification(...)`), signed (and, for WeChat, AES-256-GCM encrypted) exactly as
the providers do, with `tamper=` hooks for the attacks the tests try.

State of an order in the fakes: created by the daemon (native order / precreate), then
`fake.pay(no)` marks it paid at the provider (what a user scanning the QR code does). Nothing is
sent to the daemon by `pay`: tests deliver notifications themselves, or not at all (reconciliation).

In-browser payments (issue 20) pay *and* notify, as the providers do, so a browser test sees the
whole flow: the WeChat Pay H5 page (`/fake/h5`), the JSAPI control endpoint (`POST /fake/pay`,
what a stub `WeixinJSBridge` calls), and the Alipay cashier page (`确认付款`) each mark the order
paid, POST the signed notification to the order's notify_url (its origin rewritten by
`route(public_origin, local_origin)`, since the daemon's public_url is not reachable from a test),
and record the delivery in `deliveries`. `drop_notifications = True` pays without notifying (for
reconciliation tests).

Control API over HTTP (both fakes; CORS `*`, JSON or form bodies, JSON answers):
  WeChat Pay (FakeWechatPay.url):
    POST /fake/pay      {"out_trade_no"}  pay + deliver the notification -> {"paid","notify_status"}
    POST /fake/openid   {"openid","appid"?}  an openid the merchant's AppID knows (for JSAPI)
    POST /fake/route    {"public","local"}   rewrite notify/redirect origins
    POST /fake/drop     {"drop": true|false} pay without notifying
    GET  /fake/orders/{out_trade_no}        the fake's record of the order (404 if none)
    GET  /fake/h5?prepay_id=..&package=..&redirect_url=..   the H5 cashier: pays (trade_type
         MWEB), notifies, then 302 to redirect_url (200 "支付完成" page without one)
  Alipay (FakeAlipay.base):
    GET|POST /gateway.do?method=alipay.trade.wap.pay|alipay.trade.page.pay&...  the page request:
         verifies the RSA2 sign (like every request: sorted k=v of all non-empty params but
         `sign`), product_code, app_id, notify_url, return_url; renders the cashier (确认付款)
         or Alipay's error page (HTTP 200, recorded in `page_failures`)
    POST /fake/alipay/cashier  (the cashier's form: cashier_id)  pay, notify, 302 to return_url
         with Alipay's signed return parameters
    POST /fake/pay      {"out_trade_no"}  pay + deliver the notification (no redirect)
    POST /fake/route, POST /fake/drop, GET /fake/orders/{out_trade_no}  as for WeChat Pay

The same from Python: `route(public, local)`, `drop_notifications`, `pay_and_notify(no)` (->
(status, body) of the delivery, None when dropped), `deliver(no)` (one more valid notification,
e.g. a provider retry), `deliveries_for(no)`; WeChat Pay: `register_openid(openid, appid=None)`,
`jsapi_calls_for(no)`, `h5_calls_for(no)`, `order(no)` (has `prepay_id`, `trade_type`,
`payer_openid`, `scene_info`), `order_by_prepay(prepay_id)`; Alipay: `page_calls_for(no)`,
`page_failures`, `returns`, `trade(no)`, `return_params(no, method)`.

Run this file directly for a self-check of the fakes (no daemon needed):
    .venv/bin/python scripts/e2e/fake_pay.py
"""

import base64
import datetime
import json
import re
import secrets
import string
import threading
import time
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import html
import urllib.error
import urllib.request
from urllib.parse import parse_qsl, unquote, urlencode, urlparse, urlunparse

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CST = datetime.timezone(datetime.timedelta(hours=8))

# The merchant settings the tests configure the daemon with.
WECHAT = dict(
    mch_id="1900000001",
    app_id="wxpayapp00000001",
    serial_no="MERCHANTSERIAL0001",
    api_v3_key="0123456789abcdef0123456789abcdef",
    public_key_id="PUB_KEY_ID_0114232134912410000000000000",
)
ALIPAY = dict(
    app_id="2021000000000001",
    seller_id="2088000000000001",
)


# ---------------------------------------------------------------------------------------------
# Crypto helpers (RSA 2048, PKCS#1 v1.5 + SHA-256, as both providers use)
# ---------------------------------------------------------------------------------------------

def new_rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key):
    """PKCS#8 PEM (`BEGIN PRIVATE KEY`)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key):
    """SPKI PEM (`BEGIN PUBLIC KEY`) of a private or public key."""
    pub = key.public_key() if hasattr(key, "public_key") else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def rsa_sign(key, data):
    """Base64 RSASSA-PKCS1-v1_5 / SHA-256 signature of `data` (bytes or str, UTF-8)."""
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa_verify(public_key, data, sig_b64):
    if isinstance(data, str):
        data = data.encode()
    try:
        sig = base64.b64decode(sig_b64, validate=True)
        public_key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def rand_str(n, alphabet=string.ascii_letters + string.digits):
    return "".join(secrets.choice(alphabet) for _ in range(n))


def rfc3339_cst(t=None):
    return datetime.datetime.fromtimestamp(t or time.time(), CST).isoformat(timespec="seconds")


def beijing_time(t=None):
    """`yyyy-MM-dd HH:mm:ss` in UTC+8, Alipay's format."""
    return datetime.datetime.fromtimestamp(t or time.time(), CST).strftime("%Y-%m-%d %H:%M:%S")


def yuan(fen):
    """100 -> "1.00"."""
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100}.{fen % 100:02d}"


def fen_of(yuan_text):
    """ "1.00" -> 100; None when not a plain positive decimal with at most 2 places."""
    if not isinstance(yuan_text, str) or not re.fullmatch(r"\d{1,9}(\.\d{1,2})?", yuan_text):
        return None
    try:
        return int(Decimal(yuan_text) * 100)
    except InvalidOperation:
        return None


def compact(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def map_origin(url, routes):
    """`url` with its scheme://host[:port] replaced when `routes` maps that origin."""
    u = urlparse(url)
    local = routes.get(f"{u.scheme}://{u.netloc}".lower())
    if not local:
        return url
    lu = urlparse(local)
    return urlunparse((lu.scheme, lu.netloc, u.path, u.params, u.query, u.fragment))


def add_query(url, params):
    """`url` with `params` appended to its query (keeping what is there)."""
    u = urlparse(url)
    extra = urlencode(params)
    return urlunparse((u.scheme, u.netloc, u.path, u.params, f"{u.query}&{extra}" if u.query else extra,
                       u.fragment))


def post(url, body, headers, timeout=10):
    """(status, body bytes) of a POST; (0, error text) when nothing answered."""
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e).encode()


def html_page(title, text, extra=""):
    return (f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"></head><body>'
            f'<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>{extra}</body></html>').encode()


class _Routes:
    """What both fakes share: origin rewriting for the daemon's public URL, notification
    delivery records and the `drop_notifications` switch."""

    def route(self, public_origin, local_origin):
        """Deliveries and redirects to `public_origin` go to `local_origin` instead."""
        with self.lock:
            self.routes[public_origin.rstrip("/").lower()] = local_origin.rstrip("/")

    def deliveries_for(self, out_trade_no):
        """(HTTP status, response body) of each notification the fake delivered for the order."""
        with self.lock:
            return [(st, body) for no, st, body in self.deliveries if no == out_trade_no]

    def _record_delivery(self, out_trade_no, status, body):
        with self.lock:
            self.deliveries.append((out_trade_no, status, body))


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1:0 serving `handler_cls` in a daemon thread."""

    def _serve(self, handler_cls):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------
# WeChat Pay API v3
# ---------------------------------------------------------------------------------------------

_AUTH_RE = re.compile(r'(\w+)="([^"]*)"')


def _is_ip(text):
    import ipaddress
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _common_control(handler, fake, lookup, method, path, args):
    """The control endpoints both payment fakes have: pay an order (`/fake/pay`), route a public
    origin (`/fake/route`), drop notifications (`/fake/drop`), read an order (`/fake/orders/NO`).
    `lookup` finds an order by out_trade_no."""
    m_order = re.fullmatch(r"/fake/orders/([^/]+)", path)
    if path == "/fake/pay" and method == "POST":
        no = args.get("out_trade_no", "")
        if lookup(no) is None:
            _send_json(handler, 404, {"error": f"no order {no!r} at the fake"})
            return
        delivered = fake.pay_and_notify(no)
        _send_json(handler, 200, {"paid": True, "notify_status": delivered[0] if delivered else None})
    elif path == "/fake/route" and method == "POST":
        fake.route(args.get("public", ""), args.get("local", ""))
        _send_json(handler, 200, {"ok": True})
    elif path == "/fake/drop" and method == "POST":
        fake.drop_notifications = str(args.get("drop", "true")).lower() in ("1", "true", "yes")
        _send_json(handler, 200, {"ok": True, "drop": fake.drop_notifications})
    elif m_order and method == "GET":
        o = lookup(unquote(m_order.group(1)))
        _send_json(handler, 200 if o else 404, o or {"error": "no such order"})
    else:
        _send_json(handler, 404, {"error": f"no control endpoint {method} {path}"})


def _send_json(handler, status, obj):
    body = compact(obj).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json; charset=utf-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Access-Control-Allow-Origin", "*")
    handler.end_headers()
    handler.wfile.write(body)


def _send_html(handler, status, body):
    handler.send_response(status)
    handler.send_header("Content-Type", "text/html; charset=utf-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _cors_preflight(handler):
    """The control endpoints are called from pages on another origin (a stub WeixinJSBridge)."""
    handler.send_response(204)
    handler.send_header("Access-Control-Allow-Origin", "*")
    handler.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
    handler.send_header("Access-Control-Allow-Headers", "content-type")
    handler.send_header("Access-Control-Max-Age", "600")
    handler.end_headers()


def _control_body(headers, raw):
    """A control request's arguments: a JSON object or a form."""
    if not raw:
        return {}
    if "json" in headers.get("content-type", "") or raw.lstrip().startswith(b"{"):
        try:
            obj = json.loads(raw)
            return obj if isinstance(obj, dict) else {}
        except ValueError:
            return {}
    return dict(parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True))
_TRADE_DESC = {"NOTPAY": "订单未支付", "SUCCESS": "支付成功", "CLOSED": "订单已关闭", "REFUND": "订单发生过退款"}


class FakeWechatPay(_Server, _Routes):
    """`api.mch.weixin.qq.com` for one merchant (Native, JSAPI and H5 orders).

    Recorded (all under `lock`): `requests` [(method, path_and_query, headers, body bytes)] of every
    request; `native_calls` [parsed body] of Native order creations, `jsapi_calls` and `h5_calls`
    [parsed body] of JSAPI and H5 ones (whether accepted or not); `queries` [out_trade_no];
    `closes` [(out_trade_no, outcome)] with outcome "closed", "already_paid", "unknown";
    `refunds` [parsed body] of accepted refunds (one per out_refund_no), `refund_attempts` [parsed
    body] of every refund request; `bad_auth` count and `auth_failures`
    [(path, reason)] of requests whose Authorization did not verify; `deliveries`
    [(out_trade_no, HTTP status, body)] of notifications the fake itself delivered.

    JSAPI orders need `payer.openid` to be an openid of the merchant's AppID: one registered with
    `register_openid`, or (when `wechat=` is a FakeWechat) one that fake issued an OAuth code for
    under that AppID; else 400 PARAM_ERROR, as WeChat Pay answers.
    """

    def __init__(self, merchant_public_key, mch_id=WECHAT["mch_id"], app_id=WECHAT["app_id"],
                 serial_no=WECHAT["serial_no"], api_v3_key=WECHAT["api_v3_key"],
                 public_key_id=WECHAT["public_key_id"], wechat=None, h5_ttl=300):
        self.merchant_public_key = merchant_public_key
        self.mch_id, self.app_id, self.serial_no = mch_id, app_id, serial_no
        self.api_v3_key, self.public_key_id = api_v3_key, public_key_id
        self.platform_key = new_rsa_key()
        self.lock = threading.Lock()
        self.orders = {}          # out_trade_no -> dict(total, description, notify_url, code_url, state, ...)
        self.requests = []
        self.native_calls = []
        self.queries = []
        self.closes = []
        self.refunds = []
        self.refund_attempts = []
        self.bad_auth = 0
        self.auth_failures = []
        self.pay_on_close = set()  # out_trade_nos the user pays just before the daemon's close call
        self.jsapi_calls = []
        self.h5_calls = []
        self.openids = {}          # appid -> openids registered for it
        self.wechat = wechat       # a FakeWechat whose OAuth openids count as registered
        self.h5_ttl = h5_ttl
        self.routes = {}
        self.deliveries = []
        self.drop_notifications = False
        self._serve(self._handler())

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def register_openid(self, openid, appid=None):
        """`openid` is a user of `appid` (default: the merchant's AppID) for JSAPI orders."""
        with self.lock:
            self.openids.setdefault(appid or self.app_id, set()).add(openid)

    def knows_openid(self, appid, openid):
        with self.lock:
            if openid in self.openids.get(appid, ()):
                return True
        return bool(self.wechat and openid in self.wechat.openids_issued(appid))

    def jsapi_calls_for(self, out_trade_no):
        with self.lock:
            return [c for c in self.jsapi_calls if c.get("out_trade_no") == out_trade_no]

    def h5_calls_for(self, out_trade_no):
        with self.lock:
            return [c for c in self.h5_calls if c.get("out_trade_no") == out_trade_no]

    def order_by_prepay(self, prepay_id):
        with self.lock:
            for no, o in self.orders.items():
                if o.get("prepay_id") == prepay_id:
                    return no, dict(o)
        return None, None

    def pay_and_notify(self, out_trade_no, openid=None):
        """The user pays (JSAPI in WeChat, H5 page) and WeChat Pay notifies the daemon: the
        signed, encrypted TRANSACTION.SUCCESS notification is POSTed to the order's notify_url
        (routed). Returns (HTTP status, body) of the delivery, or None when dropped."""
        with self.lock:
            o = self.orders[out_trade_no]
            self._mark_paid(o, *([openid] if openid else []))
            total, notify_url = o["total"], o["notify_url"]
            drop = self.drop_notifications
        if drop:
            return None
        return self.deliver(out_trade_no, total, notify_url)

    def deliver(self, out_trade_no, total=None, notify_url=None):
        """POSTs a valid notification for the order to its notify_url (routed); records it."""
        o = self.order(out_trade_no) or {}
        headers, body = self.notification(out_trade_no, total if total is not None else o["total"])
        with self.lock:
            target = map_origin(notify_url or o["notify_url"], self.routes)
        st, answer = post(target, body, headers)
        self._record_delivery(out_trade_no, st, answer)
        return st, answer

    def platform_public_pem(self):
        return public_pem(self.platform_key)

    # -- test controls --------------------------------------------------------------------------

    def pay(self, out_trade_no, openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"):
        """The user pays the order (whatever its state, like a payment racing a close)."""
        with self.lock:
            o = self.orders[out_trade_no]
            self._mark_paid(o, openid)

    def _mark_paid(self, o, openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"):
        o["state"] = "SUCCESS"
        o.setdefault("transaction_id", "4200" + "".join(secrets.choice(string.digits) for _ in range(24)))
        o.setdefault("success_time", rfc3339_cst())
        o.setdefault("openid", openid)

    def order(self, out_trade_no):
        with self.lock:
            o = self.orders.get(out_trade_no)
            return dict(o) if o else None

    def native_calls_for(self, out_trade_no):
        with self.lock:
            return [c for c in self.native_calls if c.get("out_trade_no") == out_trade_no]

    def queries_for(self, out_trade_no):
        with self.lock:
            return self.queries.count(out_trade_no)

    def closes_for(self, out_trade_no):
        with self.lock:
            return [outcome for no, outcome in self.closes if no == out_trade_no]

    def refunds_for(self, out_trade_no):
        with self.lock:
            return [r for r in self.refunds if r.get("out_trade_no") == out_trade_no]

    def refund_attempts_for(self, out_trade_no):
        with self.lock:
            return [r for r in self.refund_attempts if r.get("out_trade_no") == out_trade_no]

    # -- what WeChat sends ---------------------------------------------------------------------

    def transaction(self, out_trade_no, total_fen, mchid=None, appid=None, trade_state="SUCCESS",
                    transaction_id=None, openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", trade_type="NATIVE"):
        """The Transaction object as the query API and the notification carry it."""
        t = {"appid": appid or self.app_id, "mchid": mchid or self.mch_id, "out_trade_no": out_trade_no}
        if trade_state in ("SUCCESS", "REFUND"):
            t["transaction_id"] = transaction_id or ("4200" + "".join(secrets.choice(string.digits) for _ in range(24)))
        t.update({"trade_type": trade_type, "trade_state": trade_state,
                  "trade_state_desc": _TRADE_DESC.get(trade_state, trade_state), "bank_type": "OTHERS",
                  "attach": ""})
        if trade_state in ("SUCCESS", "REFUND"):
            t["success_time"] = "2026-11-27T10:00:00+08:00"
            t["payer"] = {"openid": openid}
            t["amount"] = {"total": total_fen, "payer_total": total_fen, "currency": "CNY", "payer_currency": "CNY"}
        else:
            t["amount"] = {"total": total_fen, "currency": "CNY", "payer_currency": "CNY"}
        return t

    def notification(self, out_trade_no, total_fen, mchid=None, appid=None, ts=None, tamper=None,
                     event_id=None, trade_state="SUCCESS"):
        """A TRANSACTION.SUCCESS notification as WeChat Pay POSTs it: (headers dict, body bytes).

        The Transaction (with `mchid`/`appid` defaulting to the merchant's, `total_fen` as
        `amount.total`) is AES-256-GCM encrypted with the APIv3 key (nonce = 12 random ASCII
        characters, AAD = "transaction"); the body is signed over `ts\\nnonce\\nbody\\n` with the
        platform private key. `ts` overrides Wechatpay-Timestamp (int or str).

        `tamper`: None, or one of
          "forge"    sign with a different RSA key (an attacker without WeChat's key);
          "body"     change the body after signing;
          "signtest" a `WECHATPAY/SIGNTEST/` probe signature, as WeChat sends to test merchants;
          "serial"   name an unknown key in Wechatpay-Serial;
          "v3key"    encrypt the resource with a different APIv3 key (signature valid);
        or a callable(headers, body) -> (headers, body) applied last.
        """
        t = self.order(out_trade_no) or {}
        txn = self.transaction(out_trade_no, total_fen, mchid=mchid, appid=appid, trade_state=trade_state,
                               transaction_id=t.get("transaction_id"),
                               openid=t.get("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
                               trade_type=t.get("trade_type", "NATIVE"))
        plaintext = compact(txn).encode()
        nonce = rand_str(12)
        key = self.api_v3_key.encode()
        if tamper == "v3key":
            key = b"fedcba9876543210fedcba9876543210"
        sealed = AESGCM(key).encrypt(nonce.encode(), plaintext, b"transaction")  # ciphertext || tag
        envelope = {
            "id": event_id or f"EV-2018022511223320873-{secrets.token_hex(4)}",
            "create_time": rfc3339_cst(),
            "resource_type": "encrypt-resource",
            "event_type": "TRANSACTION.SUCCESS",
            "summary": "支付成功",
            "resource": {
                "original_type": "transaction",
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": base64.b64encode(sealed).decode(),
                "associated_data": "transaction",
                "nonce": nonce,
            },
        }
        body = compact(envelope).encode()
        ts = str(int(time.time()) if ts is None else ts)
        hdr_nonce = rand_str(32)
        signer = new_rsa_key() if tamper == "forge" else self.platform_key
        signature = rsa_sign(signer, f"{ts}\n{hdr_nonce}\n".encode() + body + b"\n")
        if tamper == "signtest":
            signature = "WECHATPAY/SIGNTEST/" + signature
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Mozilla/4.0",
            "Wechatpay-Timestamp": ts,
            "Wechatpay-Nonce": hdr_nonce,
            "Wechatpay-Signature": signature,
            "Wechatpay-Serial": "PUB_KEY_ID_0000000000000000000000000000000" if tamper == "serial" else self.public_key_id,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
        }
        if tamper == "body":
            body = body.replace('"summary":"支付成功"'.encode(), '"summary":"支付成功 "'.encode())
        if callable(tamper):
            headers, body = tamper(headers, body)
        return headers, body

    def decrypt_notification(self, body):
        """The Transaction inside a notification body (for self-checks)."""
        r = json.loads(body)["resource"]
        plain = AESGCM(self.api_v3_key.encode()).decrypt(
            r["nonce"].encode(), base64.b64decode(r["ciphertext"]), r["associated_data"].encode())
        return json.loads(plain)

    # -- the HTTP side -------------------------------------------------------------------------

    def _check_auth(self, method, path, headers, body):
        """None if the Authorization header verifies, else the reason."""
        auth = headers.get("authorization", "")
        scheme, _, rest = auth.partition(" ")
        if scheme != "WECHATPAY2-SHA256-RSA2048":
            return f"wrong scheme {scheme!r}"
        fields = dict(_AUTH_RE.findall(rest))
        missing = {"mchid", "nonce_str", "signature", "timestamp", "serial_no"} - fields.keys()
        if missing:
            return f"missing {sorted(missing)}"
        if fields["mchid"] != self.mch_id:
            return f"mchid {fields['mchid']!r} is not {self.mch_id!r}"
        if fields["serial_no"] != self.serial_no:
            return f"serial_no {fields['serial_no']!r} is not {self.serial_no!r}"
        if not fields["timestamp"].isdigit() or abs(time.time() - int(fields["timestamp"])) >= 300:
            return f"timestamp {fields['timestamp']!r} is not current"
        message = f"{method}\n{path}\n{fields['timestamp']}\n{fields['nonce_str']}\n".encode() + body + b"\n"
        if not rsa_verify(self.merchant_public_key, message, fields["signature"]):
            return "signature does not verify with the merchant public key"
        return None

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status, obj=None, sign=True):
                body = compact(obj).encode() if obj is not None else b""
                self.send_response(status)
                self.send_header("Request-ID", "08F4" + secrets.token_hex(14).upper())
                if body:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    if sign:
                        ts, nonce = str(int(time.time())), rand_str(32)
                        self.send_header("Wechatpay-Timestamp", ts)
                        self.send_header("Wechatpay-Nonce", nonce)
                        self.send_header("Wechatpay-Signature",
                                         rsa_sign(fake.platform_key, f"{ts}\n{nonce}\n".encode() + body + b"\n"))
                        self.send_header("Wechatpay-Serial", fake.public_key_id)
                        self.send_header("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048")
                elif status != 204:
                    self.send_header("Content-Length", "0")
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def _error(self, status, code, message):
                self._reply(status, {"code": code, "message": message})

            def _handle(self, method):
                raw = self.rfile.read(int(self.headers.get("content-length", "0") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake.lock:
                    fake.requests.append((method, self.path, headers, raw))
                why = fake._check_auth(method, self.path, headers, raw)
                if why:
                    with fake.lock:
                        fake.bad_auth += 1
                        fake.auth_failures.append((self.path, why))
                    self._error(401, "SIGN_ERROR", f"签名错误: {why}")
                    return
                url = urlparse(self.path)
                query = dict(parse_qsl(url.query, keep_blank_values=True))
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    self._error(400, "PARAM_ERROR", "请求体不是合法的JSON")
                    return
                path = url.path
                m_query = re.fullmatch(r"/v3/pay/transactions/out-trade-no/([^/]+)", path)
                m_close = re.fullmatch(r"/v3/pay/transactions/out-trade-no/([^/]+)/close", path)
                if method == "POST" and path == "/v3/pay/transactions/native":
                    self._create(body, "NATIVE")
                elif method == "POST" and path == "/v3/pay/transactions/jsapi":
                    self._create(body, "JSAPI")
                elif method == "POST" and path == "/v3/pay/transactions/h5":
                    self._create(body, "MWEB")
                elif method == "GET" and m_query:
                    self._query(unquote(m_query.group(1)), query)
                elif method == "POST" and m_close:
                    self._close(unquote(m_close.group(1)), body)
                elif method == "POST" and path == "/v3/refund/domestic/refunds":
                    self._refund(body)
                else:
                    self._error(404, "NOT_FOUND", f"no such API: {method} {path}")

            def do_GET(self):
                if urlparse(self.path).path.startswith("/fake/"):
                    self._control("GET", b"")
                else:
                    self._handle("GET")

            def do_POST(self):
                if urlparse(self.path).path.startswith("/fake/"):
                    self._control("POST", self.rfile.read(int(self.headers.get("content-length", "0") or 0)))
                else:
                    self._handle("POST")

            def do_OPTIONS(self):
                _cors_preflight(self)

            def _control(self, method, raw):
                url = urlparse(self.path)
                q = dict(parse_qsl(url.query, keep_blank_values=True))
                if url.path == "/fake/h5" and method == "GET":
                    self._h5_page(q)
                    return
                args = dict(q, **_control_body(self.headers, raw))
                if url.path == "/fake/openid" and method == "POST":
                    fake.register_openid(args.get("openid", ""), args.get("appid") or None)
                    _send_json(self, 200, {"ok": True})
                else:
                    _common_control(self, fake, fake.order, method, url.path, args)

            def _h5_page(self, q):
                """WeChat's H5 cashier (wx.tenpay.com/.../checkmweb): the user pays at once."""
                no, o = fake.order_by_prepay(q.get("prepay_id", ""))
                if o is None or o.get("trade_type") != "MWEB":
                    _send_html(self, 200, html_page("商家参数格式有误", "请联系商家解决 (prepay_id 无效)"))
                    return
                if time.time() - o["created"] > fake.h5_ttl and o["state"] == "NOTPAY":
                    _send_html(self, 200, html_page("订单已过期", "请返回商家重新下单"))
                    return
                if o["state"] == "NOTPAY":
                    fake.pay_and_notify(no)
                redirect = q.get("redirect_url")
                if redirect:
                    with fake.lock:
                        target = map_origin(redirect, fake.routes)
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    _send_html(self, 200, html_page("支付完成", f"订单 {no} 已支付"))

            def _create(self, b, kind):
                """A Native, JSAPI or H5 (trade_type MWEB) order."""
                calls = {"NATIVE": fake.native_calls, "JSAPI": fake.jsapi_calls, "MWEB": fake.h5_calls}[kind]
                with fake.lock:
                    calls.append(b)
                amount = b.get("amount") or {}
                problems = []
                if b.get("appid") != fake.app_id:
                    problems.append(f"appid {b.get('appid')!r}")
                if b.get("mchid") != fake.mch_id:
                    problems.append(f"mchid {b.get('mchid')!r}")
                no = b.get("out_trade_no")
                if not isinstance(no, str) or not re.fullmatch(r"[0-9A-Za-z_\-|*]{6,32}", no):
                    problems.append(f"out_trade_no {no!r}")
                if not isinstance(b.get("description"), str) or not b["description"]:
                    problems.append("description missing")
                total = amount.get("total")
                if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
                    problems.append(f"amount.total {total!r}")
                if amount.get("currency", "CNY") != "CNY":
                    problems.append(f"currency {amount.get('currency')!r}")
                nu = b.get("notify_url")
                if not isinstance(nu, str) or not nu.startswith("https://") or "?" in nu:
                    problems.append(f"notify_url {nu!r} (must be https, no query)")
                payer = b.get("payer")
                scene = b.get("scene_info")
                if kind == "JSAPI":
                    openid = payer.get("openid") if isinstance(payer, dict) else None
                    if not isinstance(openid, str) or not openid:
                        problems.append("payer.openid missing")
                    elif not fake.knows_openid(b.get("appid"), openid):
                        problems.append(f"openid {openid!r} 与 appid {b.get('appid')!r} 不匹配")
                elif payer is not None:
                    problems.append(f"payer is only for JSAPI orders, not {kind}")
                if kind == "MWEB":
                    h5 = scene.get("h5_info") if isinstance(scene, dict) else None
                    ip = scene.get("payer_client_ip") if isinstance(scene, dict) else None
                    if not isinstance(ip, str) or not _is_ip(ip):
                        problems.append(f"scene_info.payer_client_ip {ip!r}")
                    if not isinstance(h5, dict) or h5.get("type") not in ("Wap", "iOS", "Android"):
                        problems.append(f"scene_info.h5_info.type {h5!r} (Wap expected)")
                if problems:
                    self._error(400, "PARAM_ERROR", "; ".join(problems))
                    return
                with fake.lock:
                    o = fake.orders.get(no)
                    if o is None:
                        o = fake.orders[no] = dict(
                            total=total, description=b["description"], notify_url=nu,
                            code_url="weixin://wxpay/bizpayurl?pr=" + rand_str(7), state="NOTPAY", refunded=0,
                            time_expire=b.get("time_expire"), created=time.time(), trade_type=kind,
                            appid=b.get("appid"))
                        if kind != "NATIVE":
                            o["prepay_id"] = ("wx" + datetime.datetime.now(CST).strftime("%d%H%M%S")
                                              + secrets.token_hex(13))
                        if kind == "JSAPI":
                            o["openid"] = payer["openid"]
                            o["payer_openid"] = payer["openid"]
                        if kind == "MWEB":
                            o["scene_info"] = scene
                    # The same out_trade_no again: WeChat answers the same code_url / prepay_id
                    # for the same unpaid order, and refuses a different amount, another kind of
                    # order or an order no longer open.
                    repeat_ok = (o["total"] == total and o["state"] == "NOTPAY"
                                 and o.get("trade_type", "NATIVE") == kind
                                 and (kind != "JSAPI" or o.get("payer_openid") == payer["openid"]))
                    o = dict(o)
                if not repeat_ok:
                    self._error(400, "INVALID_REQUEST", "201 商户订单号重复")
                    return
                if kind == "NATIVE":
                    self._reply(200, {"code_url": o["code_url"]})
                elif kind == "JSAPI":
                    self._reply(200, {"prepay_id": o["prepay_id"]})
                else:
                    package = str(int(o["created"]))[-10:]
                    self._reply(200, {"h5_url": f"{fake.url}/fake/h5?"
                                      + urlencode({"prepay_id": o["prepay_id"], "package": package})})

            def _query(self, no, query):
                if query.get("mchid") != fake.mch_id:
                    self._error(400, "PARAM_ERROR", "mchid 与请求不符")
                    return
                with fake.lock:
                    fake.queries.append(no)
                    o = fake.orders.get(no)
                    o = dict(o) if o else None
                if o is None:
                    self._error(404, "ORDER_NOT_EXIST", "订单不存在")
                    return
                self._reply(200, fake.transaction(no, o["total"], trade_state=o["state"],
                                                  transaction_id=o.get("transaction_id"),
                                                  openid=o.get("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
                                                  trade_type=o.get("trade_type", "NATIVE")))

            def _close(self, no, b):
                if b.get("mchid") != fake.mch_id:
                    self._error(400, "PARAM_ERROR", "mchid 与请求不符")
                    return
                with fake.lock:
                    o = fake.orders.get(no)
                    if o is None:
                        outcome = "unknown"
                    else:
                        if no in fake.pay_on_close and o["state"] == "NOTPAY":
                            fake._mark_paid(o)  # the user paid a moment before our close
                        if o["state"] in ("SUCCESS", "REFUND"):
                            outcome = "already_paid"
                        else:
                            o["state"] = "CLOSED"
                            outcome = "closed"
                    fake.closes.append((no, outcome))
                if outcome == "unknown":
                    self._error(404, "ORDER_NOT_EXIST", "订单不存在")
                elif outcome == "already_paid":
                    self._error(400, "ORDERPAID", "订单已支付")
                else:
                    self._reply(204)

            def _refund(self, b):
                no, rno = b.get("out_trade_no"), b.get("out_refund_no")
                amount = b.get("amount") or {}
                refund, total = amount.get("refund"), amount.get("total")
                with fake.lock:
                    fake.refund_attempts.append(b)
                    o = fake.orders.get(no)
                    error = None
                    if o is None:
                        error = (404, "RESOURCE_NOT_EXISTS", "订单不存在")
                    elif not isinstance(rno, str) or not rno:
                        error = (400, "PARAM_ERROR", "缺少 out_refund_no")
                    elif amount.get("currency") != "CNY":
                        error = (400, "PARAM_ERROR", f"currency {amount.get('currency')!r}")
                    elif total != o["total"]:
                        error = (400, "PARAM_ERROR", f"amount.total {total!r} 与订单金额 {o['total']} 不一致")
                    elif o["state"] not in ("SUCCESS", "REFUND"):
                        error = (403, "TRADE_STATE_ERROR", "订单状态不允许退款")
                    else:
                        earlier = [r for r in fake.refunds if r.get("out_refund_no") == rno]
                        if earlier:
                            b = earlier[0]  # same out_refund_no: the same refund, nothing new
                            refund = b["amount"]["refund"]
                        elif not isinstance(refund, int) or refund <= 0 or refund > o["total"] - o["refunded"]:
                            error = (400, "NOT_ENOUGH", f"退款金额 {refund!r} 超过可退金额")
                        else:
                            o["refunded"] += refund
                            o["state"] = "REFUND"
                            b = dict(b, refund_id="5030" + "".join(secrets.choice(string.digits) for _ in range(25)))
                            fake.refunds.append(b)
                if error:
                    self._error(*error)
                    return
                self._reply(200, {
                    "refund_id": b["refund_id"], "out_refund_no": rno, "transaction_id": o.get("transaction_id"),
                    "out_trade_no": no, "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
                    "create_time": rfc3339_cst(), "status": "PROCESSING", "funds_account": "AVAILABLE",
                    "amount": {"total": o["total"], "refund": refund, "payer_total": o["total"],
                               "payer_refund": refund, "settlement_refund": refund,
                               "settlement_total": o["total"], "discount_refund": 0, "currency": "CNY",
                               "refund_fee": 0},
                })

        return Handler


# ---------------------------------------------------------------------------------------------
# Alipay open API gateway
# ---------------------------------------------------------------------------------------------

def alipay_content(params, exclude):
    """Alipay's string to sign: params minus `exclude`, empty values dropped, sorted, `k=v&...`."""
    kept = sorted((k, v) for k, v in params.items() if k not in exclude and k and v != "" and v is not None)
    return "&".join(f"{k}={v}" for k, v in kept)


def notify_content(params):
    """What a notification's `sign` covers (alipay-sdk-java rsaCheckV1): no sign, no sign_type."""
    return alipay_content(params, ("sign", "sign_type"))


def request_content(params):
    """What a gateway request's `sign` covers: everything but `sign` (sign_type included)."""
    return alipay_content(params, ("sign",))


def response_key(method):
    return method.replace(".", "_") + "_response"


def extract_response_text(body_text, method):
    """(raw JSON text of the `*_response` value as it appears in the body, sign), found by
    scanning the body with the JSON decoder, independently of how the fake built it."""
    dec = json.JSONDecoder()
    key = json.dumps(response_key(method))
    m = re.search(re.escape(key) + r"\s*:\s*", body_text)
    if not m:
        raise ValueError(f"no {key} in {body_text[:200]!r}")
    _, end = dec.raw_decode(body_text, m.end())
    return body_text[m.end():end], json.loads(body_text).get("sign")


class FakeAlipay(_Server, _Routes):
    """`openapi.alipay.com/gateway.do` for one app, with the page payments' cashier.

    Recorded (under `lock`): `calls` [(method, params dict, biz dict)] of every request whose
    signature verified; `bad_sign` count and `sign_failures` [(method, reason)] of requests that
    did not verify; `trades` out_trade_no -> dict(status, total_fen, subject, notify_url, trade_no,
    refunded_fen, qr_code); `refunds` [biz dict] of accepted refunds (one per out_request_no),
    `refund_attempts` [biz dict] of every refund request.
    Page payments (wap.pay / page.pay, which the browser brings): `page_calls` [(method, params,
    biz)] of page requests that verified; `page_failures` [(method, reason)] of those refused
    (not counted in `bad_sign`, which is for the daemon's own server-to-server calls);
    `deliveries` [(out_trade_no, HTTP status, body)] of notifications the cashier sent;
    `returns` [url] where the cashier sent the browser back.
    """

    METHODS = ("alipay.trade.precreate", "alipay.trade.query", "alipay.trade.close", "alipay.trade.refund")
    PAGE_METHODS = {"alipay.trade.wap.pay": "QUICK_WAP_WAY", "alipay.trade.page.pay": "FAST_INSTANT_TRADE_PAY"}

    def __init__(self, app_public_key, app_id=ALIPAY["app_id"], seller_id=ALIPAY["seller_id"]):
        self.app_public_key = app_public_key
        self.app_id, self.seller_id = app_id, seller_id
        self.alipay_key = new_rsa_key()
        self.lock = threading.Lock()
        self.trades = {}
        self.calls = []
        self.refunds = []
        self.refund_attempts = []
        self.bad_sign = 0
        self.sign_failures = []
        self.pay_on_close = set()
        self.page_calls = []
        self.page_failures = []
        self.cashiers = {}        # cashier_id -> out_trade_no
        self.returns = []
        self.routes = {}
        self.deliveries = []
        self.drop_notifications = False
        self._serve(self._handler())

    @property
    def gateway(self):
        return f"http://127.0.0.1:{self.port}/gateway.do"

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def page_calls_for(self, out_trade_no):
        with self.lock:
            return [(m, p, biz) for m, p, biz in self.page_calls if biz.get("out_trade_no") == out_trade_no]

    def pay_and_notify(self, out_trade_no, buyer_id="2088102177846880"):
        """The buyer pays and Alipay POSTs the signed async notification to the trade's
        notify_url (routed). Returns (HTTP status, body) of the delivery, or None when dropped."""
        with self.lock:
            t = self.trades[out_trade_no]
            self._mark_paid(t, buyer_id)
            total, notify_url = t["total_fen"], t["notify_url"]
            drop = self.drop_notifications
        if drop:
            return None
        return self.deliver(out_trade_no, total, notify_url)

    def deliver(self, out_trade_no, total=None, notify_url=None):
        """POSTs a valid TRADE_SUCCESS notification for the trade to its notify_url (routed)."""
        t = self.trade(out_trade_no) or {}
        body = self.notification(out_trade_no, total if total is not None else t["total_fen"])
        with self.lock:
            target = map_origin(notify_url or t["notify_url"], self.routes)
        st, answer = post(target, body, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        self._record_delivery(out_trade_no, st, answer)
        return st, answer

    def return_params(self, out_trade_no, method):
        """The signed query parameters Alipay appends to return_url (`{method}.return`)."""
        t = self.trade(out_trade_no) or {}
        p = {"charset": "utf-8", "out_trade_no": out_trade_no, "method": method + ".return",
             "total_amount": yuan(t.get("total_fen", 0)), "trade_no": t.get("trade_no", ""),
             "auth_app_id": self.app_id, "version": "1.0", "app_id": self.app_id, "sign_type": "RSA2",
             "seller_id": self.seller_id, "timestamp": beijing_time()}
        p["sign"] = rsa_sign(self.alipay_key, notify_content(p))
        return p

    def alipay_public_pem(self):
        return public_pem(self.alipay_key)

    # -- test controls --------------------------------------------------------------------------

    def pay(self, out_trade_no, buyer_id="2088102177846880"):
        with self.lock:
            self._mark_paid(self.trades[out_trade_no], buyer_id)

    def _mark_paid(self, t, buyer_id="2088102177846880"):
        t["status"] = "TRADE_SUCCESS"
        t.setdefault("gmt_payment", beijing_time())
        t.setdefault("buyer_id", buyer_id)

    def trade(self, out_trade_no):
        with self.lock:
            t = self.trades.get(out_trade_no)
            return dict(t) if t else None

    def calls_for(self, method, out_trade_no=None):
        with self.lock:
            return [(p, biz) for m, p, biz in self.calls
                    if m == method and (out_trade_no is None or biz.get("out_trade_no") == out_trade_no)]

    def refunds_for(self, out_trade_no):
        with self.lock:
            return [r for r in self.refunds if r.get("out_trade_no") == out_trade_no]

    def refund_attempts_for(self, out_trade_no):
        with self.lock:
            return [r for r in self.refund_attempts if r.get("out_trade_no") == out_trade_no]

    # -- what Alipay sends ---------------------------------------------------------------------

    def notification_params(self, out_trade_no, total_fen, status="TRADE_SUCCESS", app_id=None):
        t = self.trade(out_trade_no) or {}
        paid = status in ("TRADE_SUCCESS", "TRADE_FINISHED")
        now = time.time()
        p = {
            "notify_time": beijing_time(now),
            "notify_type": "trade_status_sync",
            "notify_id": "ac05099524730693a8b330c5ecf72da9" + secrets.token_hex(2),
            "app_id": app_id or self.app_id,
            "charset": "utf-8",
            "version": "1.0",
            "sign_type": "RSA2",
            "trade_no": t.get("trade_no") or ("2026112722001" + "".join(secrets.choice(string.digits) for _ in range(15))),
            "out_trade_no": out_trade_no,
            "trade_status": status,
            "total_amount": yuan(total_fen),
            "receipt_amount": yuan(total_fen) if paid else "",
            "buyer_id": t.get("buyer_id", "2088102177846880"),
            "seller_id": self.seller_id,
            "gmt_create": beijing_time(t.get("created", now - 30)),
            "gmt_payment": (t.get("gmt_payment") or beijing_time(now)) if paid else "",
            "subject": t.get("subject") or "10 次对话",
            "passback_params": "",
        }
        return {k: v for k, v in p.items() if v != "" or k == "passback_params"}

    def sign_notification(self, params, key=None):
        return rsa_sign(key or self.alipay_key, notify_content(params))

    def notification(self, out_trade_no, total_fen, status="TRADE_SUCCESS", app_id=None, tamper=None):
        """An async notification as Alipay POSTs it: form-urlencoded body bytes, signed per the
        notify rule (not sign/sign_type, empty values dropped, sorted) with Alipay's private key.

        `tamper`: None, or
          "forge"  sign with a different RSA key;
          "field"  sign a WAIT_BUYER_PAY notification, then flip trade_status to TRADE_SUCCESS;
        or a callable(params dict) -> params dict applied after signing.
        """
        params = self.notification_params(out_trade_no, total_fen,
                                          "WAIT_BUYER_PAY" if tamper == "field" else status, app_id)
        params["sign"] = self.sign_notification(params, new_rsa_key() if tamper == "forge" else None)
        if tamper == "field":
            params["trade_status"] = "TRADE_SUCCESS"
        if callable(tamper):
            params = tamper(dict(params))
        return urlencode(params).encode()

    # -- the HTTP side -------------------------------------------------------------------------

    def _response(self, method, payload):
        """The gateway's body: the `*_response` JSON text, signed over exactly that text."""
        inner = compact(payload)
        sign = rsa_sign(self.alipay_key, inner)
        return ('{"' + response_key(method) + '":' + inner + ',"sign":"' + sign + '"}').encode()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body):
                self.send_response(status)
                self.send_header("Content-Type", "text/html;charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._handle(b"")

            def do_POST(self):
                self._handle(self.rfile.read(int(self.headers.get("content-length", "0") or 0)))

            def do_OPTIONS(self):
                _cors_preflight(self)

            def _control(self, method, raw):
                url = urlparse(self.path)
                args = dict(dict(parse_qsl(url.query, keep_blank_values=True)), **_control_body(self.headers, raw))
                if url.path == "/fake/alipay/cashier" and method == "POST":
                    self._cashier_pay(args)
                else:
                    _common_control(self, fake, fake.trade, method, url.path, args)

            def _page_error(self, method, code, reason):
                """Alipay's error page for a refused page request (HTTP 200, like Alipay)."""
                with fake.lock:
                    fake.page_failures.append((method, reason))
                _send_html(self, 200, html_page(
                    "支付宝 - 网上支付 安全快速！",
                    f"错误代码 {code} 错误原因: {reason}",
                    '<p class="alipay-error">抱歉，您的操作出现错误，请稍后再试</p>'))

            def _page_pay(self, params, problems):
                method = params.get("method", "")
                if not params.get("sign") or not rsa_verify(fake.app_public_key, request_content(params),
                                                            params.get("sign", "")):
                    self._page_error(method, "invalid-signature",
                                     "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配")
                    return
                for k, want in (("app_id", fake.app_id), ("charset", "utf-8"), ("sign_type", "RSA2"),
                                ("version", "1.0")):
                    if params.get(k, "").lower() != want.lower():
                        problems.append(f"{k}={params.get(k)!r}, expected {want!r}")
                try:
                    ts = datetime.datetime.strptime(params.get("timestamp", ""), "%Y-%m-%d %H:%M:%S")
                    if abs(ts.replace(tzinfo=CST).timestamp() - time.time()) > 900:
                        problems.append(f"timestamp {params['timestamp']!r} is not current Beijing time")
                except ValueError:
                    problems.append(f"timestamp {params.get('timestamp')!r} is not yyyy-MM-dd HH:mm:ss")
                for k in ("notify_url", "return_url"):
                    v = params.get(k, "")
                    if not re.match(r"https?://[^/?#]+", v):
                        problems.append(f"{k} {v!r} is not an http(s) URL")
                try:
                    biz = json.loads(params.get("biz_content", ""))
                    if not isinstance(biz, dict):
                        raise ValueError
                except ValueError:
                    biz = {}
                    problems.append("biz_content is not a JSON object")
                want_code = FakeAlipay.PAGE_METHODS[method]
                if biz.get("product_code") != want_code:
                    problems.append(f"product_code {biz.get('product_code')!r}, expected {want_code!r}")
                no, total = biz.get("out_trade_no"), fen_of(biz.get("total_amount"))
                if not isinstance(no, str) or not re.fullmatch(r"[0-9A-Za-z_\-]{1,64}", no):
                    problems.append(f"out_trade_no {no!r}")
                if not total:
                    problems.append(f"total_amount {biz.get('total_amount')!r}")
                if not isinstance(biz.get("subject"), str) or not biz["subject"]:
                    problems.append("subject missing")
                te = biz.get("time_expire")
                if te is not None:
                    try:
                        datetime.datetime.strptime(te, "%Y-%m-%d %H:%M:%S")
                    except (TypeError, ValueError):
                        problems.append(f"time_expire {te!r} is not yyyy-MM-dd HH:mm:ss")
                if problems:
                    self._page_error(method, "invalid-parameter", "; ".join(problems))
                    return
                with fake.lock:
                    fake.page_calls.append((method, params, biz))
                    t = fake.trades.get(no)
                    if t is None:
                        t = fake.trades[no] = dict(
                            status="WAIT_BUYER_PAY", total_fen=total, subject=biz["subject"],
                            notify_url=params["notify_url"], qr_code=None, method=method,
                            return_url=params["return_url"], quit_url=biz.get("quit_url"),
                            trade_no="2026112722001" + "".join(secrets.choice(string.digits) for _ in range(15)),
                            refunded_fen=0, created=time.time(), time_expire=te)
                    status, t_total = t["status"], t["total_fen"]
                    cashier_id = secrets.token_hex(12)
                    fake.cashiers[cashier_id] = no
                if status != "WAIT_BUYER_PAY":
                    self._page_error(method, "ACQ.TRADE_HAS_SUCCESS" if status != "TRADE_CLOSED"
                                     else "ACQ.TRADE_HAS_CLOSE", "交易已经支付" if status != "TRADE_CLOSED"
                                     else "交易已关闭")
                    return
                if t_total != total:
                    self._page_error(method, "ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
                    return
                form = (f'<form method="post" action="/fake/alipay/cashier">'
                        f'<input type="hidden" name="cashier_id" value="{cashier_id}">'
                        f'<button type="submit" id="pay" data-testid="alipay-pay">确认付款</button></form>')
                _send_html(self, 200, html_page(
                    "支付宝收银台" if method.endswith("page.pay") else "支付宝",
                    f"{biz['subject']} ￥{yuan(total)} (订单 {no})", form))

            def _cashier_pay(self, args):
                with fake.lock:
                    no = fake.cashiers.pop(args.get("cashier_id", ""), None)
                    t = dict(fake.trades[no]) if no in fake.trades else None
                if t is None:
                    _send_html(self, 200, html_page("支付宝", "收银台已失效，请返回商家重新发起支付"))
                    return
                if t["status"] != "WAIT_BUYER_PAY":
                    _send_html(self, 200, html_page("支付宝", "交易已关闭或已支付"))
                    return
                fake.pay_and_notify(no)
                target = add_query(map_origin(t["return_url"], fake.routes), fake.return_params(no, t["method"]))
                with fake.lock:
                    fake.returns.append(target)
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _handle(self, raw):
                url = urlparse(self.path)
                if url.path.startswith("/fake/"):
                    self._control(self.command, raw)
                    return
                if url.path != "/gateway.do":
                    self._send(404, b"not found")
                    return
                params = {}
                problems = []
                for source in (url.query, raw.decode("utf-8", errors="replace")):
                    for k, v in parse_qsl(source, keep_blank_values=True):
                        if k in params and params[k] != v:
                            problems.append(f"parameter {k} given twice with different values")
                        params[k] = v
                method = params.get("method", "")
                if method in FakeAlipay.PAGE_METHODS:
                    self._page_pay(params, problems)
                    return
                reply_method = method if method in FakeAlipay.METHODS else "error"

                def fail(code, msg, sub_code, sub_msg):
                    body = fake._response(reply_method, {"code": code, "msg": msg, "sub_code": sub_code,
                                                         "sub_msg": sub_msg})
                    self._send(200, body)

                if not params.get("sign") or not rsa_verify(fake.app_public_key, request_content(params),
                                                            params.get("sign", "")):
                    with fake.lock:
                        fake.bad_sign += 1
                        fake.sign_failures.append((method, "signature does not verify with the app public key"))
                    fail("40002", "Invalid Arguments", "isv.invalid-signature",
                         "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配")
                    return
                for k, want in (("app_id", fake.app_id), ("charset", "utf-8"), ("sign_type", "RSA2"),
                                ("version", "1.0")):
                    if params.get(k, "").lower() != want.lower():
                        problems.append(f"{k}={params.get(k)!r}, expected {want!r}")
                if params.get("format", "JSON") != "JSON":
                    problems.append(f"format={params.get('format')!r}")
                try:
                    ts = datetime.datetime.strptime(params.get("timestamp", ""), "%Y-%m-%d %H:%M:%S")
                    if abs(ts.replace(tzinfo=CST).timestamp() - time.time()) > 900:
                        problems.append(f"timestamp {params['timestamp']!r} is not current Beijing time")
                except ValueError:
                    problems.append(f"timestamp {params.get('timestamp')!r} is not yyyy-MM-dd HH:mm:ss")
                try:
                    biz = json.loads(params.get("biz_content", ""))
                    if not isinstance(biz, dict):
                        raise ValueError
                except ValueError:
                    biz = None
                    problems.append("biz_content is not a JSON object")
                if method not in FakeAlipay.METHODS:
                    problems.append(f"method {method!r} not supported by the fake")
                if problems:
                    with fake.lock:
                        fake.sign_failures.append((method, "; ".join(problems)))
                    fail("40002", "Invalid Arguments", "isv.invalid-parameter", "; ".join(problems))
                    return
                with fake.lock:
                    fake.calls.append((method, params, biz))
                getattr(self, "_" + method.rsplit(".", 1)[1])(method, params, biz)

            def _biz_error(self, method, sub_code, sub_msg):
                self._send(200, fake._response(method, {"code": "40004", "msg": "Business Failed",
                                                        "sub_code": sub_code, "sub_msg": sub_msg}))

            def _ok(self, method, payload):
                self._send(200, fake._response(method, dict({"code": "10000", "msg": "Success"}, **payload)))

            def _precreate(self, method, params, biz):
                no, total = biz.get("out_trade_no"), fen_of(biz.get("total_amount"))
                if not no or not total or not biz.get("subject"):
                    self._send(200, fake._response(method, {
                        "code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-parameter",
                        "sub_msg": f"out_trade_no/total_amount/subject: {biz!r}"}))
                    return
                with fake.lock:
                    t = fake.trades.get(no)
                    if t and t["status"] != "WAIT_BUYER_PAY":
                        status = t["status"]
                    else:
                        status = None
                        if not t:
                            t = fake.trades[no] = dict(
                                status="WAIT_BUYER_PAY", total_fen=total, subject=biz["subject"],
                                notify_url=params.get("notify_url"), qr_code="https://qr.alipay.com/bax0" + rand_str(18),
                                trade_no="2026112722001" + "".join(secrets.choice(string.digits) for _ in range(15)),
                                refunded_fen=0, created=time.time(), timeout_express=biz.get("timeout_express"))
                        qr = t["qr_code"]
                if status:
                    self._biz_error(method, "ACQ.TRADE_HAS_SUCCESS" if status != "TRADE_CLOSED" else "ACQ.TRADE_HAS_CLOSE",
                                    "交易已支付" if status != "TRADE_CLOSED" else "交易已关闭")
                    return
                self._ok(method, {"out_trade_no": no, "qr_code": qr})

            def _query(self, method, params, biz):
                no = biz.get("out_trade_no")
                t = fake.trade(no)
                if not t:
                    self._biz_error(method, "ACQ.TRADE_NOT_EXIST", "交易不存在")
                    return
                paid = t["status"] in ("TRADE_SUCCESS", "TRADE_FINISHED") or t["refunded_fen"]
                payload = {"trade_no": t["trade_no"], "out_trade_no": no, "buyer_logon_id": "159****5620",
                           "trade_status": t["status"], "total_amount": yuan(t["total_fen"])}
                if paid:
                    payload.update({"buyer_pay_amount": yuan(t["total_fen"]), "point_amount": "0.00",
                                    "invoice_amount": yuan(t["total_fen"]), "send_pay_date": t.get("gmt_payment"),
                                    "receipt_amount": yuan(t["total_fen"]), "buyer_user_id": t.get("buyer_id"),
                                    "buyer_user_type": "PRIVATE"})
                self._ok(method, payload)

            def _close(self, method, params, biz):
                no = biz.get("out_trade_no")
                with fake.lock:
                    t = fake.trades.get(no)
                    if t is None:
                        outcome = "unknown"
                    else:
                        if no in fake.pay_on_close and t["status"] == "WAIT_BUYER_PAY":
                            fake._mark_paid(t)
                        if t["status"] == "WAIT_BUYER_PAY":
                            t["status"] = "TRADE_CLOSED"
                            outcome = "closed"
                        elif t["status"] == "TRADE_CLOSED" and not t["refunded_fen"]:
                            outcome = "closed"
                        else:
                            outcome = "already_paid"
                    t = dict(t) if t else None
                if outcome == "unknown":
                    self._biz_error(method, "ACQ.TRADE_NOT_EXIST", "交易不存在")
                elif outcome == "already_paid":
                    self._biz_error(method, "ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
                else:
                    self._ok(method, {"trade_no": t["trade_no"], "out_trade_no": no})

            def _refund(self, method, params, biz):
                no, rno = biz.get("out_trade_no"), biz.get("out_request_no") or biz.get("out_trade_no")
                amount = fen_of(biz.get("refund_amount"))
                with fake.lock:
                    fake.refund_attempts.append(biz)
                    t = fake.trades.get(no)
                    error = None
                    if t is None:
                        error = ("ACQ.TRADE_NOT_EXIST", "交易不存在")
                    elif t["status"] not in ("TRADE_SUCCESS", "TRADE_FINISHED") and not t["refunded_fen"]:
                        error = ("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
                    else:
                        earlier = [r for r in fake.refunds if r.get("out_trade_no") == no
                                   and (r.get("out_request_no") or no) == rno]
                        if earlier:
                            pass  # the same refund request again: idempotent, nothing moves
                        elif not amount or amount > t["total_fen"] - t["refunded_fen"]:
                            error = ("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
                        else:
                            t["refunded_fen"] += amount
                            if t["refunded_fen"] == t["total_fen"]:
                                t["status"] = "TRADE_CLOSED"
                            fake.refunds.append(biz)
                    t = dict(t) if t else None
                if error:
                    self._biz_error(method, *error)
                    return
                self._ok(method, {"trade_no": t["trade_no"], "out_trade_no": no, "buyer_logon_id": "159****5620",
                                  "fund_change": "Y", "refund_fee": yuan(t["refunded_fen"]),
                                  "gmt_refund_pay": beijing_time(), "buyer_user_id": t.get("buyer_id")})

        return Handler


# ---------------------------------------------------------------------------------------------
# Self-check: the fakes against a minimal, independent client written from PROTOCOLS.md
# ---------------------------------------------------------------------------------------------

def _self_check():
    import urllib.error
    import urllib.request

    merchant, app = new_rsa_key(), new_rsa_key()
    wx, ali = FakeWechatPay(merchant.public_key()), FakeAlipay(app.public_key())
    platform_pub = serialization.load_pem_public_key(wx.platform_public_pem())
    alipay_pub = serialization.load_pem_public_key(ali.alipay_public_pem())
    checks = []

    def check(what, ok):
        checks.append((what, bool(ok)))
        print(("ok   " if ok else "FAIL ") + what)

    # WeChat: a notification verifies with the platform public key and decrypts with the APIv3 key.
    h, body = wx.notification("E2EORDER0001", 100)
    msg = f"{h['Wechatpay-Timestamp']}\n{h['Wechatpay-Nonce']}\n".encode() + body + b"\n"
    check("wechat notification signature verifies (platform key)", rsa_verify(platform_pub, msg, h["Wechatpay-Signature"]))
    check("wechat notification does not verify with another key", not rsa_verify(new_rsa_key().public_key(), msg, h["Wechatpay-Signature"]))
    env = json.loads(body)
    r = env["resource"]
    check("wechat resource nonce is 12 ASCII chars", len(r["nonce"]) == 12 and r["nonce"].isascii())
    plain = json.loads(AESGCM(WECHAT["api_v3_key"].encode()).decrypt(
        r["nonce"].encode(), base64.b64decode(r["ciphertext"]), b"transaction"))
    check("wechat resource decrypts to the transaction",
          plain["out_trade_no"] == "E2EORDER0001" and plain["amount"]["total"] == 100
          and plain["mchid"] == WECHAT["mch_id"] and plain["appid"] == WECHAT["app_id"]
          and plain["trade_state"] == "SUCCESS")
    for tamper in ("forge", "body", "signtest"):
        h2, b2 = wx.notification("E2EORDER0001", 100, tamper=tamper)
        m2 = f"{h2['Wechatpay-Timestamp']}\n{h2['Wechatpay-Nonce']}\n".encode() + b2 + b"\n"
        check(f"wechat tamper={tamper} fails verification", not rsa_verify(platform_pub, m2, h2["Wechatpay-Signature"]))
    h3, b3 = wx.notification("E2EORDER0001", 100, tamper="v3key")
    try:
        wx.decrypt_notification(b3)
        check("wechat tamper=v3key does not decrypt", False)
    except Exception:
        check("wechat tamper=v3key does not decrypt", True)

    # WeChat API: sign requests like the daemon; verify the signed answers.
    def wx_call(method, path, obj=None, key=merchant):
        body = compact(obj).encode() if obj is not None else b""
        ts, nonce = str(int(time.time())), secrets.token_hex(16).upper()
        sig = rsa_sign(key, f"{method}\n{path}\n{ts}\n{nonce}\n".encode() + body + b"\n")
        auth = (f'WECHATPAY2-SHA256-RSA2048 mchid="{WECHAT["mch_id"]}",nonce_str="{nonce}",signature="{sig}",'
                f'timestamp="{ts}",serial_no="{WECHAT["serial_no"]}"')
        req = urllib.request.Request(wx.url + path, data=body if method == "POST" else None, method=method,
                                     headers={"Authorization": auth, "Content-Type": "application/json",
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                status, hdrs, raw = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, hdrs, raw = e.code, e.headers, e.read()
        verified = None
        if raw and 200 <= status < 300:
            m = f"{hdrs['Wechatpay-Timestamp']}\n{hdrs['Wechatpay-Nonce']}\n".encode() + raw + b"\n"
            verified = rsa_verify(platform_pub, m, hdrs["Wechatpay-Signature"]) and \
                hdrs["Wechatpay-Serial"] == WECHAT["public_key_id"]
        return status, (json.loads(raw) if raw else None), verified

    order = {"appid": WECHAT["app_id"], "mchid": WECHAT["mch_id"], "description": "10 次对话",
             "out_trade_no": "E2EORDER0002", "notify_url": "https://pay.example.test/pay/wechat/notify",
             "amount": {"total": 100, "currency": "CNY"}}
    st, obj, ver = wx_call("POST", "/v3/pay/transactions/native", order)
    check("wechat native order: 200, code_url, signed answer",
          st == 200 and obj["code_url"].startswith("weixin://wxpay/bizpayurl?pr=") and ver)
    st, obj, ver = wx_call("POST", "/v3/pay/transactions/native", order, key=new_rsa_key())
    check("wechat request signed with another key: 401 SIGN_ERROR, counted",
          st == 401 and obj["code"] == "SIGN_ERROR" and wx.bad_auth == 1)
    q = f"/v3/pay/transactions/out-trade-no/E2EORDER0002?mchid={WECHAT['mch_id']}"
    st, obj, ver = wx_call("GET", q)
    check("wechat query: NOTPAY, signed", st == 200 and obj["trade_state"] == "NOTPAY" and ver)
    wx.pay("E2EORDER0002")
    st, obj, ver = wx_call("GET", q)
    check("wechat query after pay: SUCCESS with amount", st == 200 and obj["trade_state"] == "SUCCESS"
          and obj["amount"]["total"] == 100 and ver)
    st, obj, _ = wx_call("GET", f"/v3/pay/transactions/out-trade-no/NOSUCHORDER?mchid={WECHAT['mch_id']}")
    check("wechat query unknown: 404 ORDER_NOT_EXIST", st == 404 and obj["code"] == "ORDER_NOT_EXIST")
    st, obj, _ = wx_call("POST", "/v3/pay/transactions/out-trade-no/E2EORDER0002/close", {"mchid": WECHAT["mch_id"]})
    check("wechat close of a paid order is refused", st == 400 and obj["code"] == "ORDERPAID")
    wx_call("POST", "/v3/pay/transactions/native", dict(order, out_trade_no="E2EORDER0003"))
    st, obj, _ = wx_call("POST", "/v3/pay/transactions/out-trade-no/E2EORDER0003/close", {"mchid": WECHAT["mch_id"]})
    check("wechat close: 204", st == 204 and obj is None and wx.order("E2EORDER0003")["state"] == "CLOSED")
    st, obj, ver = wx_call("POST", "/v3/refund/domestic/refunds", {
        "out_trade_no": "E2EORDER0002", "out_refund_no": "R-E2EORDER0002", "reason": "e2e",
        "amount": {"refund": 100, "total": 100, "currency": "CNY"}})
    check("wechat refund: 200 PROCESSING, signed", st == 200 and obj["status"] == "PROCESSING"
          and obj["amount"]["refund"] == 100 and ver and len(wx.refunds_for("E2EORDER0002")) == 1)

    # Alipay: notification signature per the notify rule, empty values dropped.
    body = ali.notification("E2EORDER0004", 100)
    params = dict(parse_qsl(body.decode(), keep_blank_values=True))
    check("alipay notification carries an empty passback_params", params.get("passback_params") == "")
    content = "&".join(f"{k}={params[k]}" for k in sorted(params)
                       if k not in ("sign", "sign_type") and params[k] != "")
    check("alipay notification verifies (notify rule, alipay key)", rsa_verify(alipay_pub, content, params["sign"]))
    with_empty = "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in ("sign", "sign_type"))
    check("alipay notification does not verify if empty values are kept", not rsa_verify(alipay_pub, with_empty, params["sign"]))
    check("alipay total_amount is yuan", params["total_amount"] == "1.00")
    for tamper in ("forge", "field"):
        p2 = dict(parse_qsl(ali.notification("E2EORDER0004", 100, tamper=tamper).decode(), keep_blank_values=True))
        check(f"alipay tamper={tamper} fails verification", not rsa_verify(alipay_pub, notify_content(p2), p2["sign"]))

    # Alipay gateway: requests signed like the daemon; answers verified over the extracted raw text.
    def ali_call(method, biz, key=app, with_notify=False):
        p = {"app_id": ALIPAY["app_id"], "method": method, "format": "JSON", "charset": "utf-8",
             "sign_type": "RSA2", "timestamp": beijing_time(), "version": "1.0", "biz_content": compact(biz)}
        if with_notify:
            p["notify_url"] = "https://pay.example.test/pay/alipay/notify"
        p["sign"] = rsa_sign(key, request_content(p))
        req = urllib.request.Request(ali.gateway, data=urlencode(p).encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            text = resp.read().decode()
        raw, sign = extract_response_text(text, method)
        return json.loads(raw), rsa_verify(alipay_pub, raw, sign), (raw, sign)

    obj, ver, (raw, sign) = ali_call("alipay.trade.precreate", {"out_trade_no": "E2EORDER0005", "total_amount": "1.00",
                                                        "subject": "10 次对话", "timeout_express": "15m"}, with_notify=True)
    check("alipay precreate: 10000, qr_code, signature verifies over the raw response text",
          obj["code"] == "10000" and obj["qr_code"].startswith("https://qr.alipay.com/") and ver)
    check("alipay: the same payload re-serialized (other spacing) does not verify",
          not rsa_verify(alipay_pub, json.dumps(json.loads(raw), ensure_ascii=False), sign))
    obj, ver, _ = ali_call("alipay.trade.query", {"out_trade_no": "E2EORDER0005"})
    check("alipay query: WAIT_BUYER_PAY", obj["code"] == "10000" and obj["trade_status"] == "WAIT_BUYER_PAY" and ver)
    ali.pay("E2EORDER0005")
    obj, ver, _ = ali_call("alipay.trade.query", {"out_trade_no": "E2EORDER0005"})
    check("alipay query after pay: TRADE_SUCCESS 1.00", obj["trade_status"] == "TRADE_SUCCESS"
          and obj["total_amount"] == "1.00" and ver)
    obj, ver, _ = ali_call("alipay.trade.query", {"out_trade_no": "NOSUCHORDER"})
    check("alipay query unknown: 40004 ACQ.TRADE_NOT_EXIST, signed", obj["code"] == "40004"
          and obj["sub_code"] == "ACQ.TRADE_NOT_EXIST" and ver)
    obj, ver, _ = ali_call("alipay.trade.query", {"out_trade_no": "E2EORDER0005"}, key=new_rsa_key())
    check("alipay request signed with another key: 40002 isv.invalid-signature, counted",
          obj["code"] == "40002" and obj["sub_code"] == "isv.invalid-signature" and ali.bad_sign == 1)
    obj, ver, _ = ali_call("alipay.trade.refund", {"out_trade_no": "E2EORDER0005", "refund_amount": "1.00",
                                                   "out_request_no": "R1"})
    check("alipay refund: 10000 refund_fee 1.00", obj["code"] == "10000" and obj["refund_fee"] == "1.00" and ver)
    ali_call("alipay.trade.precreate", {"out_trade_no": "E2EORDER0006", "total_amount": "4.50", "subject": "x"})
    obj, ver, _ = ali_call("alipay.trade.close", {"out_trade_no": "E2EORDER0006"})
    check("alipay close: 10000, TRADE_CLOSED", obj["code"] == "10000" and ver
          and ali.trade("E2EORDER0006")["status"] == "TRADE_CLOSED")

    # In-browser payments: a receiver stands in for the daemon's notify endpoints.
    from http.server import BaseHTTPRequestHandler as _H

    received = []

    class Receiver(_H):
        def log_message(self, *a):
            pass

        def do_POST(self):
            received.append((self.path, dict(self.headers), self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "7")
            self.end_headers()
            self.wfile.write(b"success")

    rcv = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=rcv.serve_forever, daemon=True).start()
    local = f"http://127.0.0.1:{rcv.server_address[1]}"
    wx.route("https://pay.example.test", local)
    ali.route("https://pay.example.test", local)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)

    def fetch(url, data=None):
        try:
            with opener.open(urllib.request.Request(url, data=data), timeout=5) as resp:
                return resp.status, resp.headers, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    jsapi = dict(order, out_trade_no="E2EORDER0010", payer={"openid": "o-registered"})
    st, obj, _ = wx_call("POST", "/v3/pay/transactions/jsapi", jsapi)
    check("wechat jsapi with an openid unknown to the appid: 400 PARAM_ERROR", st == 400 and obj["code"] == "PARAM_ERROR")
    wx.register_openid("o-registered")
    st, obj, ver = wx_call("POST", "/v3/pay/transactions/jsapi", jsapi)
    check("wechat jsapi: prepay_id, signed", st == 200 and obj["prepay_id"].startswith("wx") and ver)
    st, obj, _ = wx_call("POST", "/v3/pay/transactions/h5", dict(order, out_trade_no="E2EORDER0011"))
    check("wechat h5 without scene_info: 400", st == 400 and obj["code"] == "PARAM_ERROR")
    h5 = dict(order, out_trade_no="E2EORDER0011",
              scene_info={"payer_client_ip": "203.0.113.7", "h5_info": {"type": "Wap"}})
    st, obj, ver = wx_call("POST", "/v3/pay/transactions/h5", h5)
    check("wechat h5: h5_url", st == 200 and "/fake/h5?prepay_id=wx" in obj["h5_url"] and ver)
    st, hdrs, _ = fetch(obj["h5_url"] + "&redirect_url=" + urllib.parse.quote("https://pay.example.test/?order=E2EORDER0011"))
    check("wechat h5 page: 302 to the routed redirect_url",
          st == 302 and hdrs["Location"] == local + "/?order=E2EORDER0011")
    n = [r for r in received if r[0] == "/pay/wechat/notify"]
    check("wechat h5 page delivered one notification, trade_type MWEB",
          len(n) == 1 and wx.decrypt_notification(n[0][2])["trade_type"] == "MWEB"
          and wx.deliveries_for("E2EORDER0011") == [(200, b"success")])
    st, obj, _ = wx_call("GET", f"/v3/pay/transactions/out-trade-no/E2EORDER0011?mchid={WECHAT['mch_id']}")
    check("wechat query of the h5 order: SUCCESS MWEB", obj["trade_state"] == "SUCCESS" and obj["trade_type"] == "MWEB")
    st, _, body = fetch(wx.url + "/fake/pay", json.dumps({"out_trade_no": "E2EORDER0010"}).encode())
    txn = wx.decrypt_notification(received[-1][2])
    check("wechat /fake/pay: JSAPI notification with payer.openid",
          st == 200 and txn["trade_type"] == "JSAPI" and txn["payer"]["openid"] == "o-registered")

    import urllib.parse
    pp = {"app_id": ALIPAY["app_id"], "method": "alipay.trade.wap.pay", "format": "JSON", "charset": "utf-8",
          "sign_type": "RSA2", "timestamp": beijing_time(), "version": "1.0",
          "notify_url": "https://pay.example.test/pay/alipay/notify",
          "return_url": "https://pay.example.test/?order=E2EORDER0012",
          "biz_content": compact({"out_trade_no": "E2EORDER0012", "total_amount": "1.00", "subject": "10 次对话",
                                  "product_code": "QUICK_WAP_WAY"})}
    good = dict(pp, sign=rsa_sign(app, request_content(pp)))
    st, _, text = fetch(ali.gateway + "?" + urlencode(dict(good, sign=rsa_sign(new_rsa_key(), request_content(pp)))))
    check("alipay wap.pay with a bad signature: 200 error page, recorded",
          st == 200 and "invalid-signature" in text and len(ali.page_failures) == 1)
    st, _, text = fetch(ali.gateway + "?" + urlencode(good))
    m = re.search(r'name="cashier_id" value="(\w+)"', text)
    check("alipay wap.pay: cashier page with 确认付款", st == 200 and "确认付款" in text and m)
    st, hdrs, _ = fetch(ali.base + "/fake/alipay/cashier", urlencode({"cashier_id": m.group(1)}).encode())
    back = urlparse(hdrs["Location"])
    rp = dict(parse_qsl(back.query))
    check("alipay cashier: 302 to return_url with signed return parameters",
          st == 302 and hdrs["Location"].startswith(local + "/?order=E2EORDER0012&")
          and rp.pop("order") == "E2EORDER0012"  # return_url's own query stays, outside the signature
          and rp["method"] == "alipay.trade.wap.pay.return" and rsa_verify(alipay_pub, notify_content(rp), rp["sign"]))
    n = [r for r in received if r[0] == "/pay/alipay/notify"]
    np_ = dict(parse_qsl(n[-1][2].decode())) if n else {}
    check("alipay cashier delivered a signed notification",
          len(n) == 1 and np_["out_trade_no"] == "E2EORDER0012" and rsa_verify(alipay_pub, notify_content(np_), np_["sign"]))
    obj, ver, _ = ali_call("alipay.trade.query", {"out_trade_no": "E2EORDER0012"})
    check("alipay query of the wap trade: TRADE_SUCCESS", obj["trade_status"] == "TRADE_SUCCESS" and ver)
    rcv.shutdown()

    wx.stop()
    ali.stop()
    failed = [w for w, ok in checks if not ok]
    print(f"\n{len(checks) - len(failed)}/{len(checks)} checks passed")
    return not failed


if __name__ == "__main__":
    raise SystemExit(0 if _self_check() else 1)
