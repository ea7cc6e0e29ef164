"""A fake api.weixin.qq.com and qyapi.weixin.qq.com on 127.0.0.1: the Official Account's
stable_token and customer-service API; WeCom's gettoken, message/send and group robot webhook;
and a place for AI bot `response_url` posts.

Tokens are `tok-<appid>-<n>`. Apps listed in `no_push` answer custom/send with errcode 48001
(an unverified subscription account), as WeChat does. The group robot, like WeCom's, takes 20
messages a minute and answers errcode 45009 beyond (`robot_refused` counts those).
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakeWechat:
    def __init__(self):
        self.no_push = set()
        self.sent = []           # (appid, body) of custom/send calls that succeeded
        self.token_requests = 0
        self.wecom_sent = []     # message/send bodies
        self.robot_sent = []     # (key, body) of webhook/send
        self.robot_times = []    # when each accepted webhook/send arrived
        self.robot_refused = 0   # webhook/send refused by the 20-a-minute limit
        self.responses = []      # (path, body) posted to response URLs
        self.gettoken_requests = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, obj):
                body = json.dumps(obj, ensure_ascii=False).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                url = urlparse(self.path)
                if url.path == "/cgi-bin/gettoken":
                    q = parse_qs(url.query)
                    with fake.lock:
                        fake.gettoken_requests += 1
                        n = fake.gettoken_requests
                    self._json({"errcode": 0, "errmsg": "ok", "access_token": f"wtok-{q.get('corpid', [''])[0]}-{n}",
                                "expires_in": 7200})
                else:
                    self._json({"errcode": 40001, "errmsg": "unknown path"})

            def do_POST(self):
                url = urlparse(self.path)
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                body = json.loads(raw or b"{}")
                if url.path == "/cgi-bin/stable_token":
                    with fake.lock:
                        fake.token_requests += 1
                        n = fake.token_requests
                    self._json({"access_token": f"tok-{body['appid']}-{n}", "expires_in": 7200})
                elif url.path == "/cgi-bin/message/custom/send":
                    token = parse_qs(url.query).get("access_token", [""])[0]
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
                        fake.robot_sent.append((parse_qs(url.query).get("key", [""])[0], body))
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

    def sent_to(self, openid):
        with self.lock:
            return [b for _, b in self.sent if b.get("touser") == openid]
