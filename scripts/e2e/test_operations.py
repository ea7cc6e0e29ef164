"""Operations against the real binary: configuration reload (SIGHUP and `admin reload`, good and
bad files, with an answer streaming through it), the admin CLI (find, show, ban with a reason,
revoke, link/unlink, stats as tables and JSON), and the metrics catalogue."""

import hashlib
import json
import re
import secrets
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import xmltodict

from conftest import MODEL, Daemon
from fake_openai import FakeOpenAI

MP = dict(id="ops", app_id="wxops0000000000001", token="e2e-token-ops")
PIECES = [f"piece{i} " for i in range(10)]


def mp_section(title, help_text):
    return f"""
[web]
title = "{title}"

[[wechat_mp]]
id = "{MP['id']}"
app_id = "{MP['app_id']}"
token = "{MP['token']}"
passive_wait_ms = 3000
retry_window_ms = 4500

[bot.texts]
help = "{help_text}"
"""


class OpsDaemon(Daemon):
    def __init__(self, upstream_url):
        super().__init__(upstream_url, extra_toml=mp_section("Before", "HELP-BEFORE"), free_daily=100)
        self.base = self.config.read_text()

    def rewrite(self, title, help_text, prompt=None, extra=""):
        text = self.base.replace('title = "Before"', f'title = "{title}"').replace(
            'help = "HELP-BEFORE"', f'help = "{help_text}"')
        if prompt:
            text = text.replace("[[llm.models]]", f'system_prompt = "{prompt}"\n\n[[llm.models]]', 1)
        self.config.write_text(text + extra)

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return r.read().decode()

    def title(self):
        return json.loads(self.get("/api/config"))["title"]


def mp_post(daemon, openid, fields):
    """Posts a plaintext Official Account message as WeChat does (signed query, the XML with
    `fields` after the sender); returns the passive reply's text, or None for `success`."""
    ts, nonce = str(int(time.time())), secrets.token_hex(4)
    sig = hashlib.sha1("".join(sorted([MP["token"], ts, nonce])).encode()).hexdigest()
    q = urllib.parse.urlencode({"signature": sig, "timestamp": ts, "nonce": nonce, "openid": openid})
    xml = (f"<xml><ToUserName><![CDATA[gh_ops]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>"
           f"<CreateTime>{ts}</CreateTime>{fields}<MsgId>{secrets.randbits(50)}</MsgId></xml>")
    req = urllib.request.Request(f"{daemon.url}/wechat/mp/{MP['id']}?{q}", data=xml.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read().decode()
    if body in ("", "success"):
        return None
    return xmltodict.parse(body)["xml"]["Content"]


def mp_send(daemon, openid, content):
    """A text message."""
    return mp_post(daemon, openid, f"<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>")


@pytest.fixture(scope="module")
def fake():
    f = FakeOpenAI().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def ops(fake):
    d = OpsDaemon(fake.base_url).start()
    yield d
    d.stop()


def stream_chat(daemon, token, out):
    body = json.dumps({"model": MODEL, "stream": True,
                       "messages": [{"role": "user", "content": "long answer please"}]}).encode()
    req = urllib.request.Request(daemon.url + "/v1/chat/completions", data=body, method="POST")
    req.add_header("content-type", "application/json")
    req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as r:
        for line in r:
            out.append(line.decode())


def test_sighup_reload_applies_new_config_and_keeps_streams(ops, fake):
    uid, token = ops.new_user("reload-streamer", credits=50)
    fake.pieces, fake.piece_delay = PIECES, 0.25
    lines = []
    t = threading.Thread(target=stream_chat, args=(ops, token, lines))
    t.start()
    deadline = time.time() + 5
    while not any("piece0" in l for l in lines) and time.time() < deadline:
        time.sleep(0.02)
    assert any("piece0" in l for l in lines), "the stream started"
    assert ops.title() == "Before"

    ops.rewrite("After", "HELP-AFTER", prompt="PROMPT-AFTER-RELOAD")
    ops.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 5
    while ops.title() != "After" and time.time() < deadline:
        time.sleep(0.05)
    assert ops.title() == "After", ops.logs()
    assert "configuration reloaded" in ops.logs()

    t.join(timeout=20)
    fake.piece_delay = 0.0
    text = "".join(lines)
    assert all(p.strip() in text for p in PIECES), f"the stream in flight was cut: {text[-500:]}"
    assert "data: [DONE]" in text
    assert ops.proc.poll() is None, "SIGHUP must not stop the daemon"

    # New messages use the new texts and the new system prompt.
    assert mp_send(ops, "o_reload", "帮助") == "HELP-AFTER"
    before = fake.chat_request_count()
    answer = mp_send(ops, "o_reload", "what is new?")
    assert answer and "piece0" in answer
    assert fake.chat_request_count() == before + 1
    system = fake.requests[-1][2]["messages"][0]
    assert system == {"role": "system", "content": "PROMPT-AFTER-RELOAD"}, system


def test_invalid_config_is_refused_and_the_old_one_stays(ops):
    ops.rewrite("Broken", "HELP-BROKEN", extra='\n[bot.nonsense]\nx = 1\n[pay]\norder_ttl_secs = "many"\n')
    # SIGHUP: refused, logged with the reason; still serving the old configuration.
    ops.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 5
    while "configuration reload refused" not in ops.logs() and time.time() < deadline:
        time.sleep(0.05)
    assert "configuration reload refused" in ops.logs()
    assert ops.title() == "After"
    assert ops.proc.poll() is None

    # The admin API: 422 with every problem and its key.
    req = urllib.request.Request(ops.url + "/admin/reload", data=b"", method="POST")
    req.add_header("authorization", f"Bearer {ops.admin_token}")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 422
    problems = json.loads(e.value.read())["problems"]
    joined = "\n".join(problems)
    assert "bot.nonsense" in joined and "pay.order_ttl_secs" in joined, problems

    # The CLI, which cannot read the broken file itself, reaches the daemon with --url/--token.
    r = ops.cli("--url", ops.url, "--token", ops.admin_token, "reload", check=False)
    assert r.returncode != 0
    assert "the running one stays" in r.stderr and "bot.nonsense" in r.stderr, r.stderr
    assert ops.title() == "After"
    assert mp_send(ops, "o_reload", "帮助") == "HELP-AFTER"

    # A fixed file applies; a listen change is reported as needing a restart.
    ops.rewrite("Fixed", "HELP-FIXED", prompt="PROMPT-AFTER-RELOAD")
    ops.config.write_text(ops.config.read_text().replace(f"127.0.0.1:{ops.port}", "127.0.0.1:1", 1))
    r = ops.cli("--url", ops.url, "--token", ops.admin_token, "reload")
    assert "applied: " in r.stdout and "web" in r.stdout and "server.listen" in r.stdout, r.stdout
    assert ops.title() == "Fixed"
    ops.rewrite("Fixed", "HELP-FIXED", prompt="PROMPT-AFTER-RELOAD")
    report = json.loads(ops.cli("--json", "reload").stdout)
    assert report["restart_needed"] == [] and report["applied"] == [], report
    metrics = ops.get("/metrics")
    assert re.search(r"^chatrelay_config_reload_failures_total \d+", metrics, re.M), "failures counted"


def test_admin_cli_finds_shows_bans_revokes_and_counts(ops, fake):
    openid = "o_ops_" + secrets.token_hex(3)
    assert mp_send(ops, openid, "第一个问题 first question"), "answered"
    found = json.loads(ops.cli("--json", "user", "find", openid).stdout)
    assert len(found) == 1 and f"mp:ops:{openid}" in found[0]["identities"], found
    uid = found[0]["uid"]

    table = ops.cli("user", "find", openid[-6:]).stdout
    assert table.splitlines()[0].split()[:3] == ["UID", "NAME", "AVAILABLE"], table
    assert f"mp:ops:{openid}" in table

    shown = ops.cli("user", "show", str(uid)).stdout
    assert "recent conversations" in shown and "第一个问题 first question" in shown, shown
    assert f"mp:ops:{openid}" in shown

    # Ban with a reason (required), seen by the next message and by other admins.
    assert ops.cli("user", "ban", str(uid), check=False).returncode != 0, "--reason is required"
    out = ops.cli("user", "ban", str(uid), "--reason", "spam test").stdout
    assert "banned: spam test" in out
    assert "BANNED: spam test" in ops.cli("user", "show", str(uid)).stdout
    before = fake.chat_request_count()
    reply = mp_send(ops, openid, "still there?")
    assert fake.chat_request_count() == before, "a banned user costs no LLM call"
    assert reply and "停用" in reply, reply
    ops.cli("user", "unban", str(uid))
    assert ops.user(uid)["user"]["banned"] is False

    # Grant, revoke (idempotent on its reference), and a revoke beyond the balance refused.
    ops.cli("grant", str(uid), "10", "--reason", "ops test")
    out = ops.cli("revoke", str(uid), "4", "--reason", "mistake", "--reference", f"rv-{uid}").stdout
    assert "-4" in out and "→ 6" in out, out
    ops.cli("revoke", str(uid), "4", "--reason", "mistake", "--reference", f"rv-{uid}")
    assert ops.paid(uid) == 6, "the same reference takes credits once"
    r = ops.cli("revoke", str(uid), "100", "--reason", "too much", check=False)
    assert r.returncode != 0 and "not enough credits" in r.stderr, r.stderr
    assert ops.paid(uid) == 6

    # Link and unlink another identity.
    ops.cli("user", "link", str(uid), "tg:bot:424242")
    assert "tg:bot:424242" in ops.user(uid)["identities"]
    assert "unlinked" in ops.cli("user", "unlink", str(uid), "tg:bot:424242").stdout
    assert "tg:bot:424242" not in ops.user(uid)["identities"]
    r = ops.cli("user", "unlink", str(uid), "tg:bot:424242", check=False)
    assert r.returncode != 0 and "belongs to no user" in r.stderr

    # Per-day statistics: this daemon answered on mp and api today.
    stats = json.loads(ops.cli("--json", "stats", "--days", "1").stdout)
    today = stats[-1]
    assert today["active_users"] >= 2, today
    assert today["messages"]["mp"]["answered"] >= 2, today
    assert today["messages"]["mp"]["banned"] >= 1, today
    assert today["messages"]["api"]["answered"] >= 1, today
    assert sum(today["prompt_tokens"].values()) > 0 and today["credits_charged"] > 0, today
    table = ops.cli("stats", "--days", "3").stdout
    header = table.splitlines()[0]
    assert header.split()[:5] == ["DAY", "ACTIVE", "NEW", "USERS", "MESSAGES"], table
    assert "MP" in header.split() and "GRANTED" in header.split(), table
    assert len(table.splitlines()) == 4, table
    bad = ops.cli("stats", "--from", "yesterday", check=False)
    assert bad.returncode != 0 and "not a date" in bad.stderr


def test_admin_user_list_pages_and_sorts(ops):
    # Three fresh users: one rich and idle, one active, one with nothing.
    uids = [int(ops.cli("user", "create", "--name", f"list-{secrets.token_hex(2)}-{i}").stdout)
            for i in range(3)]
    rich, active, idle = uids
    ops.cli("grant", str(rich), "100000", "--reason", "list test")
    time.sleep(0.01)
    ops.cli("grant", str(active), "1", "--reason", "list test, later")

    by_balance = json.loads(ops.cli("--json", "user", "list", "--sort", "balance", "--limit", "1").stdout)
    assert by_balance["users"][0]["uid"] == rich, by_balance
    assert by_balance["total"] >= 3 and by_balance["limit"] == 1

    by_activity = json.loads(ops.cli("--json", "user", "list", "--limit", "500").stdout)
    order = [u["uid"] for u in by_activity["users"]]
    assert order.index(active) < order.index(rich) < order.index(idle), order
    assert next(u for u in by_activity["users"] if u["uid"] == idle)["last_active_ms"] is None

    # Pages: every user once, in uid order, across pages of two.
    seen, offset = [], 0
    while True:
        page = json.loads(ops.cli("--json", "user", "list", "--sort", "uid", "--limit", "2",
                                  "--offset", str(offset)).stdout)
        seen += [u["uid"] for u in page["users"]]
        offset += 2
        if offset >= page["total"]:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == page["total"], seen
    assert set(uids) <= set(seen)

    table = ops.cli("user", "list", "--sort", "balance", "--limit", "2").stdout
    assert table.splitlines()[0].split()[:5] == ["UID", "NAME", "AVAILABLE", "PAID", "LAST"], table
    assert "next page: --offset 2" in table, table
    bad = ops.cli("user", "list", "--sort", "wealth", check=False)
    assert bad.returncode != 0 and "not one of" in bad.stderr, bad.stderr


def test_logs_written_to_a_file_carry_no_colour_codes(ops):
    # The daemon's stderr is a file here, as under journald: escape codes would be noise there.
    raw = ops.logs(tail=None)
    assert "INFO" in raw or "info" in raw.lower(), raw[-500:]
    assert "\x1b[" not in raw, [l for l in raw.splitlines() if "\x1b[" in l][:3]


def glibc_arena_heaps(pid):
    """How many of glibc's secondary arena heaps the process has: anonymous mappings that
    start on a 64 MiB boundary and, with the reserved (---p) mapping right after, span exactly
    64 MiB."""
    anon = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) == 5:  # no path: not a file, the stack or [heap]
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            anon.append((lo, hi, fields[1]))
    mib64 = 64 << 20
    heaps = 0
    for i, (lo, hi, _) in enumerate(anon):
        if lo % mib64:
            continue
        if hi - lo == mib64:
            heaps += 1
        elif i + 1 < len(anon):
            nlo, nhi, perms = anon[i + 1]
            if nlo == hi and nhi == lo + mib64 and perms == "---p":
                heaps += 1
    return heaps


def test_the_allocator_keeps_two_arenas(ops):
    # By now the daemon's threads (async workers, the store's lane, blocking pool) have all
    # allocated; with glibc's default each would have an arena of its own (up to 8 per core).
    for i in range(20):
        mp_send(ops, f"o_arena_{i}", "hello")
    pid = ops.proc.pid
    assert glibc_arena_heaps(pid) <= 2, Path(f"/proc/{pid}/maps").read_text()


def test_metrics_catalogue(ops):
    mp_send(ops, "o_metrics", "count me")
    metrics = ops.get("/metrics")
    for pattern in [
        r'chatrelay_messages_total\{[^}]*platform="mp"[^}]*\} \d+',
        r'chatrelay_messages_total\{[^}]*outcome="answered"[^}]*\} \d+',
        r'chatrelay_llm_tokens_total\{[^}]*kind="prompt"[^}]*\} \d+',
        r'chatrelay_llm_seconds_bucket\{le="0.5"\} \d+',
        r"chatrelay_config_reloads_total \d+",
        r"chatrelay_http_responses_total\{",
    ]:
        assert re.search(pattern, metrics), f"{pattern} missing from /metrics"
