"""Pictures users send are fetched only from public addresses (SSRF): a PicUrl aimed at the
daemon's own network, in any spelling of the address or through a redirect from an allowed
host, is refused before any request reaches it; a trusted host is fetched."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import Daemon
from fake_openai import ANSWER, PNG, FakeOpenAI
from test_operations import MP, mp_post

# The "trusted" object store of this test, and the only address the daemon may fetch from.
TRUSTED = "127.0.0.3"


class Server:
    """Counts requests; answers a PNG, or a redirect to `redirect_to` when set."""

    def __init__(self, host):
        self.hits = []
        self.redirect_to = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits.append(self.path)
                if outer.redirect_to:
                    self.send_response(302)
                    self.send_header("location", outer.redirect_to)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def setup():
    upstream = FakeOpenAI().start()
    internal = Server("0.0.0.0")  # reachable as 127.0.0.1, 127.0.0.2, localhost ...
    trusted = Server(TRUSTED)
    d = Daemon(upstream.base_url, free_daily=100, extra_toml=f"""
picture_trusted_hosts = ["{TRUSTED}"]

[[llm.models]]
name = "gpt-eyes"
credits = 1
vision = true

[[scopes]]
scope = "wechat_mp:{MP['id']}"
model = "gpt-eyes"

[[wechat_mp]]
id = "{MP['id']}"
app_id = "{MP['app_id']}"
token = "{MP['token']}"
""").start()
    yield d, upstream, internal, trusted
    d.stop()
    upstream.stop()
    internal.stop()
    trusted.stop()


def send_picture(daemon, openid, url):
    return mp_post(daemon, openid, f"<MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[{url}]]></PicUrl>"
                                   "<MediaId><![CDATA[media-1]]></MediaId>")


def test_internal_addresses_are_refused_in_every_spelling(setup):
    daemon, upstream, internal, _ = setup
    port = internal.port
    before = upstream.chat_request_count()
    for host in ["127.0.0.1", "127.0.0.2", "2130706433", "0x7f000001", "0x7F.0.0.1", "0177.0.0.1",
                 "017700000001", "127.1", "127.0.1", "0", "0.0.0.0", "localhost", "[::1]",
                 "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]"]:
        answer = send_picture(daemon, "o_ssrf", f"http://{host}:{port}/secret.png")
        assert answer == "图片没有收到，请重新发送。", (host, answer)
    assert internal.hits == [], f"the internal server was reached: {internal.hits}"
    assert upstream.chat_request_count() == before, "nothing went to the model"
    logs = "\n".join(daemon.log_lines())
    assert "is not a public address" in logs, "the refusal is logged with its reason"
    uid = json.loads(daemon.cli("--json", "user", "find", "o_ssrf").stdout)[0]["uid"]
    assert not [e for e in daemon.user(uid)["ledger"] if e["kind"] == "usage"], "nothing charged"


def test_a_trusted_host_is_fetched_but_its_redirects_are_checked(setup):
    daemon, upstream, internal, trusted = setup
    # Trusted: fetched, and the picture reaches the model.
    assert send_picture(daemon, "o_trusted", f"http://{TRUSTED}:{trusted.port}/cat.png") == ANSWER
    parts = upstream.requests[-1][2]["messages"][-1]["content"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,"), parts
    # Its redirects to internal addresses are refused, in any spelling.
    hop = Server(TRUSTED)
    try:
        for target in [f"http://127.0.0.1:{internal.port}/meta", f"http://2130706433:{internal.port}/meta",
                       f"http://localhost:{internal.port}/meta", f"http://[::ffff:127.0.0.2]:{internal.port}/meta"]:
            hop.redirect_to = target
            answer = send_picture(daemon, "o_redirect", f"http://{TRUSTED}:{hop.port}/start.png")
            assert answer == "图片没有收到，请重新发送。", (target, answer)
        assert len(hop.hits) == 4, "each redirect was asked for"
        assert internal.hits == [], f"a redirect reached the internal server: {internal.hits}"
        # A redirect to the trusted host itself is followed.
        hop.redirect_to = f"http://{TRUSTED}:{trusted.port}/moved.png"
        assert send_picture(daemon, "o_redirect", f"http://{TRUSTED}:{hop.port}/again.png") == ANSWER
        assert trusted.hits[-1] == "/moved.png"
    finally:
        hop.stop()
