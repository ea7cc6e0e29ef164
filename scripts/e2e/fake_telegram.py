"""A fake Telegram Bot API on 127.0.0.1, as the daemon's `[[telegram]] api_url` sees it.

`POST /bot<token>/<method>` with a JSON body (method names in any case, as Telegram): `getMe`,
`setMyCommands`, `deleteWebhook`, `sendChatAction`; `getUpdates` serves the updates queued with
`push()` from the requested offset (waiting up to a second when there are none, like a short
long poll); `getFile` answers `file_path` and `file_size` for the files put in `files` (an
unknown file_id gets Telegram's 400 "file not found"); `sendMessage` / `editMessageText` /
`sendVoice` are recorded in `sent` (a multipart `sendVoice` keeps its body's bytes).
`GET /file/bot<token>/<file_path>` serves the file's bytes and counts it in `downloads`.
A call with another token gets Telegram's 401 "Unauthorized"."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BOT_ID = 7000001


def _message(message_id, chat_id, **extra):
    m = {"message_id": message_id, "date": int(time.time()),
         "chat": {"id": chat_id, "type": "private", "first_name": "Ann"},
         "from": {"id": BOT_ID, "is_bot": True, "first_name": "Relay", "username": "relay_bot"}}
    m.update(extra)
    return m


class FakeTelegram:
    def __init__(self, token="123:ABC"):
        self.token = token
        self.lock = threading.Lock()
        self.updates = []
        self.next_update = 1
        self.files = {}  # file_id -> (file_path, bytes, announced size or None)
        self.downloads = []  # file paths served
        self.sent = []  # (method, dict or bytes)
        self.calls = []  # method names, in order
        self.next_message = 1000
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                prefix = f"/file/bot{fake.token}/"
                if not self.path.startswith(prefix):
                    return self._json(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
                path = self.path[len(prefix):]
                with fake.lock:
                    found = [data for (p, data, _) in fake.files.values() if p == path]
                    fake.downloads.append(path)
                if not found:
                    return self._json(404, {"ok": False, "error_code": 404, "description": "Not Found"})
                self.send_response(200)
                self.send_header("content-type", "application/octet-stream")
                self.send_header("content-length", str(len(found[0])))
                self.end_headers()
                self.wfile.write(found[0])

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                prefix = f"/bot{fake.token}/"
                if not self.path.startswith(prefix):
                    return self._json(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
                method = self.path[len(prefix):].split("?")[0]
                method = method[:1].lower() + method[1:]
                with fake.lock:
                    fake.calls.append(method)
                is_json = "json" in (self.headers.get("content-type") or "")
                body = json.loads(raw or b"{}") if is_json else {}
                status, result = fake._answer(method, body, raw)
                if status == 200:
                    return self._json(200, {"ok": True, "result": result})
                return self._json(status, {"ok": False, "error_code": status, "description": result})

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a poller gone at shutdown (broken pipe) is not news

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _answer(self, method, body, raw):
        if method == "getMe":
            return 200, {"id": BOT_ID, "is_bot": True, "first_name": "Relay", "username": "relay_bot",
                         "can_join_groups": True, "can_read_all_group_messages": False,
                         "supports_inline_queries": False, "can_connect_to_business": False,
                         "has_main_web_app": False}
        if method in ("setMyCommands", "deleteWebhook", "sendChatAction"):
            return 200, True
        if method == "getUpdates":
            offset = int(body.get("offset") or 0)
            deadline = time.time() + 1.0
            while True:
                with self.lock:
                    pending = [u for u in self.updates if u["update_id"] >= offset]
                if pending or time.time() > deadline:
                    return 200, pending
                time.sleep(0.05)
        if method == "getFile":
            with self.lock:
                found = self.files.get(body.get("file_id"))
            if not found:
                return 400, "Bad Request: invalid file_id"
            path, data, announced = found
            return 200, {"file_id": body["file_id"], "file_unique_id": "u-" + body["file_id"],
                         "file_size": announced if announced is not None else len(data), "file_path": path}
        with self.lock:
            self.next_message += 1
            message_id = self.next_message
            if method == "sendVoice":
                self.sent.append((method, raw))
            elif method in ("sendMessage", "editMessageText"):
                self.sent.append((method, body))
                if method == "editMessageText":
                    message_id = body.get("message_id", message_id)
            else:
                return 400, f"Bad Request: method {method} is not faked"
        chat = body.get("chat_id", 42) if isinstance(body.get("chat_id"), int) else 42
        if method == "sendVoice":
            return 200, _message(message_id, chat, voice={"file_id": "sent", "file_unique_id": "s", "duration": 1})
        return 200, _message(message_id, chat, text=body.get("text", ""))

    def push_voice(self, chat_id, file_id, data, seconds, announced=None):
        """Queues a voice note from user `chat_id` (a private chat) whose file is `data`."""
        with self.lock:
            self.files[file_id] = (f"voice/{file_id}.oga", data, announced)
            update = {"update_id": self.next_update, "message": {
                "message_id": self.next_update, "date": int(time.time()),
                "chat": {"id": chat_id, "type": "private", "first_name": "Ann"},
                "from": {"id": chat_id, "is_bot": False, "first_name": "Ann"},
                "voice": {"file_id": file_id, "file_unique_id": "u-" + file_id, "duration": seconds,
                          "mime_type": "audio/ogg",
                          "file_size": announced if announced is not None else len(data)}}}
            self.next_update += 1
            self.updates.append(update)

    def texts_to(self, chat_id):
        """The texts sent to `chat_id` (new messages and edits), in order."""
        with self.lock:
            return [b.get("text", "") for (m, b) in self.sent
                    if m in ("sendMessage", "editMessageText") and b.get("chat_id") == chat_id]

    def stop(self):
        self.server.shutdown()
