"""Fixtures: the real chatrelay binary against a fake OpenAI upstream on 127.0.0.1."""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from fake_pay import ALIPAY, WECHAT, FakeAlipay, FakeWechatPay, new_rsa_key, private_pem
from fake_wechat import FakeWechat

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("CHATRELAY_BIN", ROOT / "target" / "debug" / "chatrelay"))
MODEL = "gpt-fake"
COST = 3


def psql_rows(sql):
    """One query's rows as lists of text, read with `psql` (Debian's postgresql-client) from
    the database of CHATRELAY_TEST_PG_URL (psycopg is not installed)."""
    r = subprocess.run(["psql", os.environ["CHATRELAY_TEST_PG_URL"], "-qAt", "-v", "ON_ERROR_STOP=1",
                        "-c", sql], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"psql failed: {r.stderr}"
    return [line.split("|") for line in r.stdout.splitlines()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Every daemon's data directory, removed when the whole run passed (kept for a look when
# something failed, and named at the end of the run).
DATA_DIRS = []


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0:
        for d in DATA_DIRS:
            shutil.rmtree(d, ignore_errors=True)
    elif DATA_DIRS:
        print(f"\nthe daemons' data directories are kept for a look: {tempfile.gettempdir()}/chatrelay-e2e-*")


class Daemon:
    """One running `chatrelay run` with its own data directory and config file.

    `storage_toml`: more keys for the generated `[storage]` section, which keeps its own `path`
    (the generated admin token lives there with any backend), e.g. `backend = "postgres"`,
    `url = "..."`, `schema = "..."` for a daemon sharing a PostgreSQL database.
    `server_toml`: more keys for the generated `[server]` section (e.g. `public_url = "..."`)."""

    def __init__(self, upstream_url, extra_toml="", free_daily=0, llm_timeout=2, storage_toml=None,
                 server_toml=""):
        self.dir = Path(tempfile.mkdtemp(prefix="chatrelay-e2e-"))
        DATA_DIRS.append(self.dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = "e2e-admin-token-0123456789"
        self.config = self.dir / "chatrelay.toml"
        self.config.write_text(f"""
[server]
listen = "127.0.0.1:{self.port}"
admin_token = "{self.admin_token}"
max_body_bytes = 65536
shutdown_grace_secs = 3
{server_toml}

[storage]
path = "{self.dir / 'data'}"
{storage_toml or ""}

[llm]
provider = "openai"
base_url = "{upstream_url}"
api_keys = ["sk-fake-upstream-key"]
model = "{MODEL}"
timeout_secs = {llm_timeout}
idle_timeout_secs = 2
max_retries = 1

[[llm.models]]
name = "{MODEL}"
credits = {COST}

[quota]
free_daily = {free_daily}

[bot]
rate_limit_per_minute = 0
{extra_toml}
""")
        self.log = open(self.dir / "daemon.log", "wb")
        self.proc = None

    def start(self):
        env = dict(os.environ, RUST_LOG="info,chatrelay=debug")
        self.proc = subprocess.Popen([str(BINARY), "--config", str(self.config), "run"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited early: {self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"daemon not ready: {self.logs()}")

    def logs(self, tail=4000):
        """The end of the daemon's log (`tail=None`: all of it, across restarts)."""
        self.log.flush()
        text = (self.dir / "daemon.log").read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def log_lines(self):
        """Every line the daemon logged, across restarts, without colour codes."""
        return ANSI.sub("", self.logs(tail=None)).splitlines()

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return self.proc.returncode if self.proc else None

    def cli(self, *args, check=True):
        r = subprocess.run([str(BINARY), "--config", str(self.config), "admin", *args],
                           capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise AssertionError(f"admin {args} failed ({r.returncode}): {r.stderr}")
        return r

    def new_user(self, name, credits=0):
        uid = int(self.cli("user", "create", "--name", name).stdout.strip())
        if credits:
            self.cli("grant", str(uid), str(credits), "--reason", "e2e")
        token = self.cli("token", "create", str(uid)).stdout.strip()
        return uid, token

    def user(self, uid):
        return json.loads(self.cli("--json", "user", "show", str(uid)).stdout)

    def paid(self, uid):
        return self.user(uid)["balance"]["paid"]

    def audit(self):
        return json.loads(self.cli("--json", "audit").stdout)


@pytest.fixture(scope="session")
def upstream():
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def daemon(upstream):
    d = Daemon(upstream.base_url).start()
    yield d
    code = d.stop()
    assert code == 0, f"daemon exited with {code}: {d.logs()}"


@pytest.fixture(autouse=True)
def reset_upstream(upstream):
    from fake_openai import ANSWER_PIECES
    upstream.mode = "ok"
    yield
    upstream.mode = "ok"
    upstream.pieces = list(ANSWER_PIECES)
    upstream.piece_delay = 0.0


# ---------------------------------------------------------------------------------------------
# Inside WeChat (issue 20): an Official Account with web authorization, WeChat Pay (Native, JSAPI,
# H5) and Alipay (precreate, wap, page), all on fakes. Used by test_wechat_oauth.py,
# test_pay_methods.py and the browser tests.
# ---------------------------------------------------------------------------------------------

# The account bound to the merchant (its AppID is the merchant's, so JSAPI is on by default),
# in safe mode (wechatpy encrypts the messages); and a second account with web authorization
# whose openids are not the merchant's AppID's.
OA_MAIN = dict(id="main", app_id=WECHAT["app_id"], app_secret="e2e-oa-secret-main-0123456789abcd",
               token="e2e-token-main", aes_key=base64.b64encode(bytes(range(32))).decode().rstrip("="))
OA_OTHER = dict(id="other", app_id="wxother0000000002", app_secret="e2e-oa-secret-other-0123456789abc",
                token="e2e-token-other", aes_key=None)
PUBLIC_URL_WX = "https://chat.example.test"
WX_PRODUCTS = {
    "p10": dict(id="p10", name="10 次对话", price_fen=100, credits=10),
    "p50": dict(id="p50", name="50 次对话", price_fen=450, credits=50),
}


class InWechat:
    """The fakes and keys for the in-WeChat flows: `wechat` (FakeWechat with both accounts'
    web authorization), `wxpay` (FakeWechatPay; openids FakeWechat issued codes for count as the
    AppID's users), `alipay` (FakeAlipay), the merchant and Alipay app keys under `dir`.

    `daemon(upstream, public_url=..., ...)` builds (does not start) a Daemon whose public_url is
    `public_url` and routes that origin, at every fake, to the daemon's real address, so the
    fakes' redirects and notifications reach it. Use one public_url per daemon sharing the fakes.
    """

    def __init__(self, dir):
        self.dir = Path(dir)
        self.merchant, self.app = new_rsa_key(), new_rsa_key()
        (self.dir / "merchant_key.pem").write_bytes(private_pem(self.merchant))
        (self.dir / "app_private.pem").write_bytes(private_pem(self.app))
        self.wechat = FakeWechat()
        for a in (OA_MAIN, OA_OTHER):
            self.wechat.add_oauth_app(a["app_id"], a["app_secret"])
        self.wxpay = FakeWechatPay(self.merchant.public_key(), wechat=self.wechat)
        (self.dir / "platform_pub.pem").write_bytes(self.wxpay.platform_public_pem())
        self.alipay = FakeAlipay(self.app.public_key())
        (self.dir / "alipay_public.pem").write_bytes(self.alipay.alipay_public_pem())

    def stop(self):
        self.wechat.stop()
        self.wxpay.stop()
        self.alipay.stop()

    def route(self, public_url, local_url):
        for fake in (self.wechat, self.wxpay, self.alipay):
            fake.route(public_url, local_url)

    def toml(self, oauth=True, auto_login=True, wechat_methods=None, alipay_methods=None, ttl=900,
             min_age=600, scope="snsapi_base", wechat_pay=True, alipay=True):
        """`[web]`, both `[[wechat_mp]]`, the products and `[pay]` (`*_methods` None: the defaults)."""
        out = f"""
[web]
title = "测试助手"
wechat_auto_login = {str(auto_login).lower()}
"""
        for a in (OA_MAIN, OA_OTHER):
            out += f"""
[[wechat_mp]]
id = "{a['id']}"
app_id = "{a['app_id']}"
app_secret = "{a['app_secret']}"
token = "{a['token']}"
{f'encoding_aes_key = "{a["aes_key"]}"' if a['aes_key'] else ''}
api_base = "{self.wechat.url}"
oauth = {str(oauth).lower()}
oauth_scope = "{scope}"
oauth_base = "{self.wechat.url}"
passive_wait_ms = 3000
"""
        for p in WX_PRODUCTS.values():
            out += f"""
[[products]]
id = "{p['id']}"
name = "{p['name']}"
price_fen = {p['price_fen']}
credits = {p['credits']}
"""
        out += f"""
[pay]
order_ttl_secs = {ttl}
reconcile_interval_secs = 1
reconcile_min_age_secs = {min_age}
"""
        if wechat_pay:
            out += f"""
[pay.wechat]
mch_id = "{WECHAT['mch_id']}"
app_id = "{WECHAT['app_id']}"
serial_no = "{WECHAT['serial_no']}"
private_key_file = "{self.dir / 'merchant_key.pem'}"
api_v3_key = "{WECHAT['api_v3_key']}"
platform_public_key_file = "{self.dir / 'platform_pub.pem'}"
public_key_id = "{WECHAT['public_key_id']}"
api_base = "{self.wxpay.url}"
"""
            if wechat_methods is not None:
                out += f"methods = {json.dumps(list(wechat_methods))}\n"
        if alipay:
            out += f"""
[pay.alipay]
app_id = "{ALIPAY['app_id']}"
private_key_file = "{self.dir / 'app_private.pem'}"
alipay_public_key_file = "{self.dir / 'alipay_public.pem'}"
gateway = "{self.alipay.gateway}"
"""
            if alipay_methods is not None:
                out += f"methods = {json.dumps(list(alipay_methods))}\n"
        return out

    def daemon(self, upstream, public_url=PUBLIC_URL_WX, free_daily=100, server_toml="", **toml_kwargs):
        d = Daemon(upstream.base_url, extra_toml=self.toml(**toml_kwargs), free_daily=free_daily,
                   llm_timeout=10, server_toml=f'public_url = "{public_url}"\n{server_toml}')
        d.public_url = public_url
        self.route(public_url, d.url)
        return d


@pytest.fixture(scope="module")
def inwechat(tmp_path_factory):
    """The in-WeChat fakes and keys, one set per test module."""
    fakes = InWechat(tmp_path_factory.mktemp("inwechat"))
    yield fakes
    fakes.stop()
