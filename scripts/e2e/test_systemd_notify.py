"""systemd integration: READY=1 when serving, WATCHDOG=1 pings at half of WATCHDOG_USEC, and
STOPPING=1 on SIGTERM, observed through a fake NOTIFY_SOCKET."""

import os
import socket
import time

from conftest import Daemon


def test_ready_watchdog_and_stopping(upstream, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    d = Daemon(upstream.base_url)
    saved = {k: os.environ.get(k) for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    os.environ["NOTIFY_SOCKET"] = path
    os.environ["WATCHDOG_USEC"] = "600000"  # 0.6 s: pings every 0.3 s
    try:
        d.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    messages = []
    deadline = time.time() + 3
    while time.time() < deadline:
        try:
            messages.append(sock.recv(4096).decode().strip())
        except socket.timeout:
            pass
    assert d.stop() == 0
    deadline = time.time() + 2
    while time.time() < deadline:
        try:
            messages.append(sock.recv(4096).decode().strip())
        except socket.timeout:
            break
    sock.close()
    assert "READY=1" in messages, messages
    pings = [m for m in messages if m == "WATCHDOG=1"]
    assert len(pings) >= 5, f"expected a ping every 0.3 s for ~3 s: {messages}"
    assert "STOPPING=1" in messages, messages
