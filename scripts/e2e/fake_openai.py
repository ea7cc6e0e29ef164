"""A fake OpenAI-compatible upstream on 127.0.0.1 that speaks the real wire format.

Its behaviour is switched by the tests through `FakeOpenAI.mode`:
  ok      answer at once (streamed as real chat.completion.chunk events, or one chat.completion)
  slow    stream one piece every `slow_interval` seconds, for a long time
  error   answer HTTP 500 with an OpenAI error body
  hang    accept the request and never answer
  delayed wait `delay` seconds, then answer as `ok`

`pieces` is what `ok` streams (one piece: an answer that arrives in one chunk). `usage`, when set,
replaces the reported usage; with `honour_limit` the reported completion tokens never exceed the
request's `max_tokens` / `max_completion_tokens` (as a real upstream stops there), without it the
limit is ignored (as an upstream that does not know the field).
"""

import email.policy
import json
import threading
from email.parser import BytesParser
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER_PIECES = ["Hello", " from", " the", " fake", " upstream", " — 你好", "!"]
ANSWER = "".join(ANSWER_PIECES)
# A 1x1 PNG, served for every *.png path.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def parse_multipart(content_type, raw):
    """A multipart/form-data body as dict(fields={name: text}, filename, content_type, file), parsed
    with the standard library's MIME parser (as a server framework would); None when unparsable."""
    if not content_type.startswith("multipart/form-data"):
        return None
    msg = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    if not msg.is_multipart():
        return None
    out = {"fields": {}, "filename": None, "content_type": None, "file": None}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        body = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            out["filename"], out["content_type"], out["file"] = part.get_filename(), part.get_content_type(), body
        elif name:
            out["fields"][name] = body.decode()
    return out


def mp3_bytes(seconds):
    """An MP3 of MPEG-1 layer III frames (128 kbit/s, 44.1 kHz, 26.1 ms each, silent payload),
    the framing a TTS service sends; its length is what the frames say."""
    frame = bytes([0xFF, 0xFB, 0x90, 0x00]) + bytes(413)
    return b"ID3\x04\x00\x00\x00\x00\x00\x00" + frame * max(1, round(seconds * 44100 / 1152))


class FakeOpenAI:
    def __init__(self):
        self.mode = "ok"
        self.slow_interval = 0.5
        self.delay = 0.0
        self.pieces = list(ANSWER_PIECES)  # what `ok` streams; tests may swap in markdown
        self.piece_delay = 0.0             # pause between streamed pieces in `ok` mode
        self.usage = None                  # reported usage instead of USAGE
        self.honour_limit = False          # cap the reported completion tokens at the request's limit
        self.requests = []  # (path, headers, body) of chat requests
        self.moderations = []  # bodies of moderation requests
        self.image_requests = []  # bodies of image generation requests
        self.speech_requests = []  # bodies of /v1/audio/speech requests
        self.speech_audio = mp3_bytes(2)  # what /v1/audio/speech answers
        self.speech_status = 200   # 500: the speech upstream is down
        self.transcript = "今天天气怎么样"  # what /v1/audio/transcriptions hears
        self.transcribe_status = 200      # 500: the transcription upstream is down
        self.transcriptions = []  # parsed multipart uploads: dict(fields, filename, content_type, file)
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

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
                if self.path.endswith(".png"):
                    # A picture to fetch (an Official Account's PicUrl, a generated image).
                    self.send_response(200)
                    self.send_header("content-type", "application/octet-stream")
                    self.send_header("content-length", str(len(PNG)))
                    self.end_headers()
                    self.wfile.write(PNG)
                    return
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "gpt-fake", "object": "model", "owned_by": "fake"}]})
                else:
                    self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length)
                if self.path == "/v1/images/generations":
                    req = json.loads(raw)
                    with fake.lock:
                        fake.image_requests.append(req)
                    self._json(200, {"created": int(time.time()),
                                     "data": [{"url": f"http://127.0.0.1:{fake.port}/generated-1.png",
                                               "revised_prompt": req.get("prompt")}]})
                    return
                if self.path == "/v1/audio/speech":
                    req = json.loads(raw)
                    with fake.lock:
                        fake.speech_requests.append(req)
                    if fake.speech_status != 200:
                        self._json(fake.speech_status, {"error": {"message": "speaker exploded",
                                                                  "type": "server_error", "code": None}})
                    elif not req.get("input") or req.get("response_format") not in ("mp3", "opus", "aac", "flac", "wav", "pcm"):
                        self._json(400, {"error": {"message": "bad speech request", "type": "invalid_request_error"}})
                    else:
                        audio = fake.speech_audio
                        self.send_response(200)
                        self.send_header("Content-Type", "audio/mpeg")
                        self.send_header("Content-Length", str(len(audio)))
                        self.end_headers()
                        self.wfile.write(audio)
                    return
                if self.path == "/v1/audio/transcriptions":
                    upload = parse_multipart(self.headers.get("content-type", ""), raw)
                    with fake.lock:
                        fake.transcriptions.append(upload)
                    if fake.transcribe_status != 200:
                        self._json(fake.transcribe_status, {"error": {"message": "transcriber exploded",
                                                                      "type": "server_error", "code": None}})
                    elif upload is None or not upload.get("file"):
                        self._json(400, {"error": {"message": "no file", "type": "invalid_request_error"}})
                    else:
                        self._json(200, {"text": fake.transcript})
                    return
                if self.path == "/v1/moderations":
                    # Flags any input containing FLAGME, as OpenAI's moderation endpoint answers.
                    req = json.loads(raw)
                    with fake.lock:
                        fake.moderations.append(req)
                    flagged = "FLAGME" in req.get("input", "")
                    self._json(200, {"id": "modr-fake", "model": req.get("model") or "omni-moderation-latest",
                                     "results": [{"flagged": flagged,
                                                  "categories": {"harassment": flagged, "violence": False},
                                                  "category_scores": {"harassment": 0.9 if flagged else 0.01,
                                                                      "violence": 0.0}}]})
                    return
                if self.path != "/v1/chat/completions":
                    self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                    return
                req = json.loads(raw)
                with fake.lock:
                    fake.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, req))
                mode = fake.mode
                if mode == "error":
                    self._json(500, {"error": {"message": "upstream exploded", "type": "server_error", "code": None}})
                    return
                if mode == "429":
                    body = json.dumps({"error": {"message": "Rate limit reached", "type": "requests",
                                                 "code": "rate_limit_exceeded"}}).encode()
                    self.send_response(429)
                    self.send_header("content-type", "application/json")
                    self.send_header("retry-after-ms", "50")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if mode == "hang":
                    time.sleep(60)
                    return
                if mode == "delayed":
                    time.sleep(fake.delay)
                if req.get("stream") and mode in ("cut", "stream_error"):
                    self._broken_stream(req, mode)
                    return
                if req.get("stream"):
                    self._stream(req, slow=(mode == "slow"))
                else:
                    self._json(200, {
                        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                        "model": req["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(fake.pieces), "refusal": None},
                                     "logprobs": None, "finish_reason": "stop"}],
                        "usage": USAGE,
                    })

            def _event(self, obj):
                data = obj if isinstance(obj, str) else json.dumps(obj)
                chunk = f"data: {data}\n\n".encode()
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()

            def _broken_stream(self, req, mode):
                """A stream that breaks after two pieces: the connection is cut without [DONE]
                (`cut`), or an error object arrives inside the stream (`stream_error`)."""
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": req["model"]}
                for piece in ("Half ", "an answer "):
                    self._event(dict(base, choices=[{"index": 0, "delta": {"content": piece}, "finish_reason": None}]))
                if mode == "stream_error":
                    self._event({"error": {"message": "The server had an error while processing your request.",
                                           "type": "server_error", "code": None}})
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)

            def _stream(self, req, slow):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": req["model"], "system_fingerprint": None}

                def choice(delta, finish=None):
                    return dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])

                try:
                    self._event(choice({"role": "assistant", "content": "", "refusal": None}))
                    pieces = list(fake.pieces) if not slow else (f"tick{i} " for i in range(10_000))
                    for piece in pieces:
                        if slow:
                            time.sleep(fake.slow_interval)
                        elif fake.piece_delay:
                            time.sleep(fake.piece_delay)
                        self._event(choice({"content": piece}))
                    self._event(choice({}, "stop"))
                    if (req.get("stream_options") or {}).get("include_usage"):
                        self._event(dict(base, choices=[], usage=fake.reported_usage(req)))
                    self._event("[DONE]")
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reported_usage(self, req):
        usage = dict(self.usage or USAGE)
        limits = [req[k] for k in ("max_tokens", "max_completion_tokens") if req.get(k) is not None]
        if self.honour_limit and limits:
            usage["completion_tokens"] = min([usage["completion_tokens"], *limits])
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return usage

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()

    def chat_request_count(self):
        with self.lock:
            return len(self.requests)
