"""The OpenAI-compatible API, driven by the official `openai` Python package."""

import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import BINARY, COST, MODEL, Daemon
from fake_openai import ANSWER, USAGE


def client(daemon, token, **kw):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key=token, **kw)


def raw_post(daemon, path, body, token=None, content_type="application/json"):
    req = urllib.request.Request(daemon.url + path, data=body, method="POST")
    req.add_header("content-type", content_type)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_non_streaming_answer_is_intact_and_metered(daemon, upstream):
    uid, token = daemon.new_user("alice", credits=10)
    res = client(daemon, token).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert res.choices[0].message.content == ANSWER
    assert res.choices[0].finish_reason == "stop"
    assert res.usage.prompt_tokens == USAGE["prompt_tokens"]
    assert res.usage.completion_tokens == USAGE["completion_tokens"]
    assert daemon.paid(uid) == 10 - COST
    # The upstream got a streaming request with our key, not the user's token.
    _, headers, body = upstream.requests[-1]
    assert headers.get("authorization") == "Bearer sk-fake-upstream-key"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_streaming_answer_is_intact_and_metered(daemon):
    uid, token = daemon.new_user("bob", credits=10)
    stream = client(daemon, token).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == ANSWER
    assert finish == "stop"
    assert usage.total_tokens == USAGE["total_tokens"]
    assert daemon.paid(uid) == 10 - COST
    entries = daemon.user(uid)["ledger"]
    assert [e["kind"] for e in entries] == ["usage", "grant"]
    assert entries[0]["paid_delta"] == -COST


def test_models_are_listed(daemon):
    _, token = daemon.new_user("carol")
    ids = [m.id for m in client(daemon, token).models.list()]
    assert ids == [MODEL]


def test_failing_upstream_gives_a_clear_error_and_costs_nothing(daemon, upstream):
    uid, token = daemon.new_user("dave", credits=10)
    before = upstream.chat_request_count()
    upstream.mode = "error"
    with pytest.raises(openai.APIStatusError) as err:
        client(daemon, token).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 502
    assert err.value.code == "upstream_error"
    # The daemon retried upstream once (max_retries = 1); the client did not retry on top.
    assert upstream.chat_request_count() - before == 2
    assert daemon.paid(uid) == 10

    upstream.mode = "hang"
    started = time.time()
    with pytest.raises(openai.APIStatusError) as err:
        client(daemon, token).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
    assert err.value.status_code == 502
    assert time.time() - started < 15, "timeouts are bounded"
    assert daemon.paid(uid) == 10
    assert daemon.user(uid)["balance"]["held"] == 0


def test_out_of_quota_is_insufficient_quota(daemon, upstream):
    _, token = daemon.new_user("erin", credits=COST - 1)
    before = upstream.chat_request_count()
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as err:
            client(daemon, token, max_retries=0).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=stream)
        assert err.value.code == "insufficient_quota"
        assert err.value.response.headers.get("x-should-retry") == "false"
    assert upstream.chat_request_count() == before, "no upstream call without credits"


def test_bad_tokens_are_refused(daemon):
    with pytest.raises(openai.AuthenticationError):
        client(daemon, "sk-cr-forged").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}])
    status, body = raw_post(daemon, "/v1/chat/completions", b"{}")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    uid, token = daemon.new_user("frank", credits=10)
    daemon.cli("token", "revoke", token)
    with pytest.raises(openai.AuthenticationError):
        client(daemon, token).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert daemon.paid(uid) == 10


def test_bad_input_gets_openai_shaped_errors_and_changes_nothing(daemon, upstream):
    uid, token = daemon.new_user("grace", credits=10)
    before = upstream.chat_request_count()
    cases = [
        (b"{not json", 400),
        (b'{"model": 5, "messages": []}', 400),
        (b'{"model": "gpt-fake", "messages": []}', 400),
        (b'{"model": "gpt-fake", "messages": [{"role": "user", "content": {"x": 1}}]}', 400),
        (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}', 404),
        (b'{"model": "gpt-fake", "messages": [{"role": "user", "content": "' + b"x" * 70000 + b'"}]}', 413),
    ]
    for body, expected in cases:
        status, err = raw_post(daemon, "/v1/chat/completions", body, token)
        assert status == expected, (body[:60], status, err)
        assert set(err["error"]) >= {"message", "type", "code"}
    with pytest.raises(openai.NotFoundError):
        client(daemon, token).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert upstream.chat_request_count() == before
    assert daemon.paid(uid) == 10
    assert daemon.audit()["mismatches"] == []


def test_admin_api_refuses_wrong_token(daemon):
    r = subprocess.run([str(BINARY), "admin", "--url", daemon.url, "--token", "wrong-token-wrong-token",
                        "user", "create", "--name", "x"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "401" in r.stderr


def test_sigterm_ends_open_streams_within_the_grace_period(upstream, tmp_path):
    d = Daemon(upstream.base_url).start()
    try:
        uid, token = d.new_user("henry", credits=10)
        upstream.mode = "slow"
        upstream.slow_interval = 0.2
        received, errors = [], []

        def consume():
            try:
                for chunk in client(d, token, max_retries=0).chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True):
                    received.append(chunk)
            except Exception as e:  # the stream must end with an error, not hang
                errors.append(e)

        t = threading.Thread(target=consume)
        t.start()
        deadline = time.time() + 10
        while len(received) < 3 and time.time() < deadline:
            time.sleep(0.05)
        assert len(received) >= 3, d.logs()
        started = time.time()
        d.proc.send_signal(signal.SIGTERM)
        code = d.proc.wait(timeout=15)
        elapsed = time.time() - started
        t.join(timeout=5)
        assert code == 0, d.logs()
        assert elapsed < 3 + 3, f"shutdown took {elapsed:.1f}s"
        assert not t.is_alive()
        assert errors, "the client saw the stream end with an error"
    finally:
        upstream.mode = "ok"
        d.stop()


def test_check_config_lists_every_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = "nowhere"\nlisen = 1\n[quota]\nfree_daily = "ten"\ntimezone = "Mars/Base"\n')
    r = subprocess.run([str(BINARY), "--config", str(bad), "check-config"], capture_output=True, text=True)
    assert r.returncode == 2
    for key in ["server.listen", "server.lisen", "quota.free_daily"]:
        assert key in r.stderr, r.stderr
    good = tmp_path / "good.toml"
    good.write_text('[server]\nadmin_token = "a-very-secret-admin-token"\n[llm]\napi_keys = ["sk-secret-key"]\n')
    r = subprocess.run([str(BINARY), "--config", str(good), "check-config"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
    assert "a-very-secret-admin-token" not in r.stdout and "sk-secret-key" not in r.stdout
