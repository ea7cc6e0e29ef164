"""A fake api.zsxq.com on 127.0.0.1 that records what it receives.

`topics` maps topic id -> {"text", "answered", "owner"}; list requests return the unanswered
ones (or all, marked unanswered, with `list_answered_too`: a stale listing). Switches:
  token           the access token it accepts (others get HTTP 401)
  too_frequent    how many list requests get code 1059 before the normal answer
  reset_answers   topic ids whose answer POST is recorded (the answer lands) but the
                  connection is dropped before any response (an ambiguous failure)
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakeZsxq:
    def __init__(self, token="good-token"):
        self.token = token
        self.topics = {}
        self.list_answered_too = False
        self.too_frequent = 0
        self.reset_answers = set()
        self.list_requests = []   # (time, query dict, headers)
        self.answers = []         # (topic_id, body)
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, obj, status=200):
                body = json.dumps(obj, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self):
                cookie = self.headers.get("cookie", "")
                if f"zsxq_access_token={fake.token}" not in cookie:
                    self._json({"succeeded": False, "code": 401, "info": "unauthorized"}, status=401)
                    return False
                return True

            def do_GET(self):
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) == 4 and parts[:2] == ["v2", "groups"] and parts[3] == "topics":
                    with fake.lock:
                        fake.list_requests.append((time.time(), parse_qs(url.query), dict(self.headers)))
                    if not self._authorized():
                        return
                    with fake.lock:
                        if fake.too_frequent > 0:
                            fake.too_frequent -= 1
                            self._json({"succeeded": False, "code": 1059, "info": "请求过于频繁"})
                            return
                        topics = [fake._topic_json(tid, t, parts[2]) for tid, t in fake.topics.items()
                                  if fake.list_answered_too or not t["answered"]]
                    # Raw JSON so that ids beyond 2^53 are written exactly.
                    self._json({"succeeded": True, "resp_data": {"topics": topics}})
                elif len(parts) == 3 and parts[:2] == ["v2", "topics"]:
                    if not self._authorized():
                        return
                    tid = int(parts[2])
                    with fake.lock:
                        t = fake.topics.get(tid)
                    if t is None:
                        self._json({"succeeded": False, "code": 404, "info": "not found"})
                    else:
                        self._json({"succeeded": True, "resp_data": {"topic": {"topic_id": tid, "answered": t["answered"]}}})
                else:
                    self._json({"succeeded": False, "code": 404}, status=404)

            def do_POST(self):
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                if len(parts) == 4 and parts[:2] == ["v2", "topics"] and parts[3] == "answer":
                    if not self._authorized():
                        return
                    tid = int(parts[2])
                    body = json.loads(raw)
                    with fake.lock:
                        fake.answers.append((tid, body))
                        if tid in fake.topics:
                            fake.topics[tid]["answered"] = True
                        reset = tid in fake.reset_answers
                    if reset:
                        # The answer landed, but the daemon never hears so.
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    self._json({"succeeded": True, "resp_data": {"topic": {"topic_id": tid, "answered": True}}})
                else:
                    self._json({"succeeded": False, "code": 404}, status=404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _topic_json(self, tid, t, group_id):
        question = {"text": t["text"], "expired": False, "anonymous": t.get("owner") is None}
        if t.get("owner") is not None:
            question["owner"] = {"user_id": t["owner"], "name": f"user{t['owner']}"}
        return {"topic_id": tid, "group": {"group_id": int(group_id), "name": "测试星球", "type": "pay"},
                # A stale listing shows answered topics as unanswered still.
                "type": "q&a", "question": question, "answered": t["answered"] and not self.list_answered_too,
                "create_time": t.get("create_time", "2026-11-27T10:00:00.000+0800")}

    def add(self, tid, text, owner=88886666):
        with self.lock:
            self.topics[tid] = {"text": text, "answered": False, "owner": owner}

    def answers_for(self, tid):
        with self.lock:
            return [b for t, b in self.answers if t == tid]

    def stop(self):
        self.server.shutdown()
