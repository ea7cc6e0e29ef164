"""Fixtures: the real chatrelay binary against a fake OpenAI upstream on 127.0.0.1."""

import json
import os
import re
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

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("CHATRELAY_BIN", ROOT / "target" / "debug" / "chatrelay"))
MODEL = "gpt-fake"
COST = 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Daemon:
    """One running `chatrelay run` with its own data directory and config file.

    `storage_toml`: more keys for the generated `[storage]` section, which keeps its own `path`
    (the generated admin token lives there with any backend), e.g. `backend = "postgres"`,
    `url = "..."`, `schema = "..."` for a daemon sharing a PostgreSQL database."""

    def __init__(self, upstream_url, extra_toml="", free_daily=0, llm_timeout=2, storage_toml=None):
        self.dir = Path(tempfile.mkdtemp(prefix="chatrelay-e2e-"))
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
