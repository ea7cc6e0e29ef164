"""Addresses, login and the listener's limits, against the real binary.

- The login lockout attack: many addresses (through X-Forwarded-For from the trusted local
  proxy) send wrong codes; a user with a right code from another address still gets in.
- Header spoofing: a client's own X-Forwarded-For / X-Real-IP, passed through a proxy that
  appends the real peer, does not get it out of its per-address limits.
- The listener: too many requests in flight (503 + Retry-After, health still answers),
  oversized heads and targets (431/414), a request body trickled past the timeout (408) and a
  head that never ends (the connection is dropped).

The test client is on 127.0.0.1, which `server.trusted_proxies` trusts by default: it plays
the reverse proxy, writing X-Forwarded-For as nginx's `$proxy_add_x_forwarded_for` does."""

import json
import re
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import Daemon
from test_wechat_mp import LOGIN_CODE, MAIN, WeChat

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def wrong_code():
    return "".join(secrets.choice(ALPHABET) for _ in range(8))


def post_json(d, path, body, headers=None, timeout=5):
    req = urllib.request.Request(d.url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null"), r.headers
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else None), e.headers


def get(d, path, timeout=5):
    try:
        with urllib.request.urlopen(d.url + path, timeout=timeout) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def raw(d, data, timeout=5):
    """Sends raw bytes on a new connection; the status code of the answer, or None when the
    server closed the connection without one."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=timeout) as s:
        s.sendall(data)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                return None
            head += chunk
        return int(head.split(b" ", 2)[1])


def with_server_keys(daemon, keys):
    """Adds keys to the generated config's [server] section (before start)."""
    text = daemon.config.read_text()
    daemon.config.write_text(text.replace("[server]\n", "[server]\n" + keys + "\n", 1))
    return daemon


@pytest.fixture
def login_daemon(upstream):
    extra = f"""
[web]
guest_credits = 1

[[wechat_mp]]
id = "{MAIN['id']}"
app_id = "{MAIN['app_id']}"
token = "{MAIN['token']}"
encoding_aes_key = "{MAIN['aes_key']}"
passive_wait_ms = 3000
"""
    d = Daemon(upstream.base_url, extra_toml=extra).start()
    yield d
    assert d.stop() == 0, d.logs()


def fresh_code(d, openid):
    _, reply = WeChat(d, MAIN).send_text(openid, "验证码", timeout=5)
    return re.search(LOGIN_CODE, reply["Content"]).group(0)


def test_wrong_codes_from_many_addresses_do_not_lock_out_a_user(login_daemon):
    d = login_daemon
    # 40 attackers x 10 wrong codes, well past the old global limit of 300 failures.
    for n in range(40):
        attacker = {"x-forwarded-for": f"198.18.{n}.7"}
        statuses = [post_json(d, "/api/login", {"code": wrong_code()}, attacker)[0] for _ in range(10)]
        # Every address has its first tries checked (all ten before the attack shows, two
        # once it does)...
        assert statuses[:2] == [401, 401] and set(statuses) <= {401, 429}, (n, statuses)
        # ...and then each attacker is throttled itself.
        status, body, _ = post_json(d, "/api/login", {"code": wrong_code()}, attacker)
        assert status == 429, body
    # ...but a user with a genuine code, from an address that has not failed, gets in.
    code = fresh_code(d, "o_lockout_victim")
    status, body, _ = post_json(d, "/api/login", {"code": code.lower()},
                                {"x-forwarded-for": "203.0.113.200"})
    assert status == 200, body
    assert body["token"].startswith("sk-")
    # Under attack, a fresh address that fails twice waits; a right code then is refused too.
    for _ in range(2):
        assert post_json(d, "/api/login", {"code": wrong_code()}, {"x-forwarded-for": "203.0.114.9"})[0] == 401
    code = fresh_code(d, "o_lockout_other")
    assert post_json(d, "/api/login", {"code": code}, {"x-forwarded-for": "203.0.114.9"})[0] == 429


def test_a_networks_addresses_share_one_allowance(login_daemon):
    d = login_daemon
    # Every address of an IPv6 /64 is one client: ten failures spread over ten addresses.
    for i in range(10):
        post_json(d, "/api/login", {"code": wrong_code()}, {"x-forwarded-for": f"2001:db8:77:1::{i + 1}"})
    status, _, _ = post_json(d, "/api/login", {"code": wrong_code()},
                             {"x-forwarded-for": "2001:db8:77:1:abcd::1"})
    assert status == 429


def test_a_spoofed_forwarded_header_does_not_escape_the_per_address_limits(login_daemon):
    d = login_daemon
    real = "198.51.100.77"

    def through_proxy():
        # The client writes its own headers; the proxy passes them on and appends the peer
        # address it saw (nginx: proxy_add_x_forwarded_for), leaving X-Real-IP alone.
        return {"x-real-ip": f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.1",
                "x-forwarded-for": f"10.9.{secrets.randbelow(250)}.{secrets.randbelow(250)}, {real}"}

    statuses = [post_json(d, "/api/login", {"code": wrong_code()}, through_proxy())[0] for _ in range(12)]
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429], statuses
    # Guest sign-ups: 3 per address per hour, whatever the client claims to be.
    guests = [post_json(d, "/api/guest", {}, through_proxy())[0] for _ in range(4)]
    assert guests == [200, 200, 200, 429], guests


@pytest.fixture(scope="module")
def limited(upstream):
    d = with_server_keys(Daemon(upstream.base_url), """
request_timeout_secs = 10
max_concurrent_requests = 4
max_headers = 40
""")
    d.start()
    yield d
    assert d.stop() == 0, d.logs()


def hold_open(d, path):
    """A POST whose body never comes: it stays in flight until the request timeout."""
    s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
    s.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              f"content-length: 100\r\n\r\n{{".encode())
    return s


def inflight(d):
    """The daemon's own count of requests in flight (its /metrics gauge), or None."""
    _, body, _ = get(d, "/metrics")
    m = re.search(rb"^chatrelay_http_inflight (\S+)$", body, re.M)
    return float(m.group(1)) if m else None


def test_too_many_requests_in_flight_get_a_clear_503(limited):
    d = limited
    held = [hold_open(d, "/api/login") for _ in range(4)]
    try:
        # Wait until the daemon has taken all four in (a loaded machine may take a moment to
        # accept them), by its own gauge rather than by guessing a time.
        deadline = time.time() + 8
        while inflight(d) != 4 and time.time() < deadline:
            time.sleep(0.05)
        assert inflight(d) == 4, (inflight(d), d.logs())
        status, body, headers = get(d, "/api/config")
        assert status == 503, (status, body, inflight(d), d.logs())
        assert json.loads(body)["error"]["code"] == "overloaded"
        assert int(headers["Retry-After"]) >= 1
        # The daemon can still be watched.
        assert get(d, "/healthz")[0] == 200
        assert get(d, "/readyz")[0] == 200
        assert get(d, "/metrics")[0] == 200
    finally:
        for s in held:
            s.close()
    deadline = time.time() + 5
    while get(d, "/api/config")[0] != 200:
        assert time.time() < deadline, "slots were not given back when the clients left"
        time.sleep(0.05)


def test_oversized_heads_and_targets_are_refused(limited):
    d = limited
    base = b"GET /api/config HTTP/1.1\r\nhost: x\r\n"
    assert raw(d, base + b"\r\n") == 200
    # 20 KiB of headers (default server.max_header_bytes: 16 KiB).
    assert raw(d, base + b"x-big: " + b"a" * 20_000 + b"\r\n\r\n") == 431
    # 41 header lines (server.max_headers = 40 here).
    many = b"".join(b"x-h%d: 1\r\n" % i for i in range(41))
    assert raw(d, base + many + b"\r\n") == 431
    # A 10 KB target (default server.max_uri_bytes: 8 KiB): 414, with a JSON reason.
    status, body, _ = get(d, "/api/config?q=" + "a" * 10_000)
    assert status == 414
    assert json.loads(body)["error"]["code"] == "uri_too_long"


def trickle(d, path, results, key):
    """Sends a request head, then one byte of body a second; records the status and when."""
    started = time.time()
    try:
        with socket.create_connection(("127.0.0.1", d.port), timeout=25) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                      f"authorization: Bearer sk-nothing\r\ncontent-length: 60\r\n\r\n".encode())
            s.settimeout(1)
            answer = b""
            for _ in range(24):
                try:
                    s.sendall(b" ")
                    answer += s.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if answer:
                    break
            results[key] = (answer.split(b" ", 2)[1] if answer else None, time.time() - started)
    except OSError as e:
        results[key] = (repr(e), time.time() - started)


def slow_head(d, results):
    """Sends half a request head and nothing more: the server must drop the connection."""
    started = time.time()
    with socket.create_connection(("127.0.0.1", d.port), timeout=25) as s:
        s.sendall(b"GET /api/config HTTP/1.1\r\nhost: x\r\n")
        try:
            data = s.recv(4096)
            results["head"] = ("closed" if not data else data[:12], time.time() - started)
        except socket.timeout:
            results["head"] = ("still open", time.time() - started)
        except OSError:
            results["head"] = ("closed", time.time() - started)


def test_a_trickled_request_runs_into_the_timeout(limited):
    d = limited
    results = {}
    threads = [threading.Thread(target=trickle, args=(d, "/api/login", results, "login")),
               threading.Thread(target=trickle, args=(d, "/v1/chat/completions", results, "v1")),
               threading.Thread(target=slow_head, args=(d, results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    # request_timeout_secs = 10: answered 408 then, not after the client gives up (24 s).
    for key in ("login", "v1"):
        status, took = results[key]
        assert status == b"408", (key, results)
        assert 9 < took < 20, (key, results)
    what, took = results["head"]
    assert what == "closed" and took < 20, results
