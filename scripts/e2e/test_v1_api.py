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


# ---------------------------------------------------------------------------------------------
# Issue 18: delivery, metering, numeric games, crash timing, /v1 rough edges
# ---------------------------------------------------------------------------------------------

PER_TOKEN = "gpt-per-token"


@pytest.fixture(autouse=True)
def reset_usage(upstream):
    yield
    upstream.usage = None
    upstream.honour_limit = False


def raw(daemon, method, path, body=None, token=None, headers=None):
    """(status, headers, parsed body) of one request, errors included."""
    req = urllib.request.Request(daemon.url + path, data=body, method=method)
    if body is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def chat_body(**fields):
    return json.dumps(dict({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, **fields)).encode()


@pytest.mark.parametrize("pieces", [["Yes"], ["Y", "es"], ["a", "b", "c"], []])
def test_a_non_streamed_answer_of_any_number_of_pieces_is_whole_and_charged_once(daemon, upstream, pieces):
    uid, token = daemon.new_user("whole", credits=10)
    upstream.pieces = pieces
    before = upstream.chat_request_count()
    res = client(daemon, token).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Is it?"}])
    assert res.choices[0].message.content == "".join(pieces)
    assert upstream.chat_request_count() - before == 1, "one upstream call, no client retries"
    assert daemon.paid(uid) == 10 - COST
    assert [e["kind"] for e in daemon.user(uid)["ledger"]] == ["usage", "grant"]


@pytest.mark.parametrize("field,value", [
    ("n", 2.0), ("n", "2"), ("n", 1e9), ("n", 1.0), ("n", 0), ("n", True),
    ("temperature", "1"), ("temperature", 9), ("top_p", 2), ("max_tokens", 10.0), ("max_tokens", "5"),
    ("max_tokens", 0), ("max_completion_tokens", 1e5), ("presence_penalty", 3), ("frequency_penalty", "0"),
    ("seed", 1.5), ("logprobs", 1), ("top_logprobs", 99), ("stream", "yes"),
])
def test_numeric_type_games_are_400_naming_the_field_and_cost_nothing(daemon, upstream, field, value):
    uid, token = daemon.new_user("games", credits=10)
    before = upstream.chat_request_count()
    status, headers, body = raw(daemon, "POST", "/v1/chat/completions", chat_body(**{field: value}), token)
    assert status == 400, (field, value, body)
    assert body["error"]["param"] == field
    assert body["error"]["type"] == "invalid_request_error"
    assert headers.get("x-should-retry") == "false"
    with pytest.raises(openai.BadRequestError):
        client(daemon, token).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={field: value})
    assert upstream.chat_request_count() == before
    assert daemon.paid(uid) == 10


@pytest.fixture(scope="module")
def priced(upstream):
    d = Daemon(upstream.base_url, extra_toml=f"""
[[llm.models]]
name = "{PER_TOKEN}"
credits = 1
credits_per_1k_tokens = 10
""").start()
    yield d
    d.stop()


def test_max_tokens_cannot_buy_more_than_the_balance(priced, upstream):
    # 2 credits: 1 flat + 10 per started 1,000 tokens = at most 100 tokens of prompt and answer.
    uid, token = priced.new_user("poor", credits=2)
    upstream.usage = {"prompt_tokens": 5, "completion_tokens": 100_000, "total_tokens": 100_005}
    upstream.honour_limit = True
    res = client(priced, token).chat.completions.create(
        model=PER_TOKEN, messages=[{"role": "user", "content": "write a lot"}], max_tokens=100_000)
    assert res.choices[0].message.content
    _, _, sent = upstream.requests[-1]
    assert "max_completion_tokens" not in sent, sent
    assert 1 <= sent["max_tokens"] < 100, f"the upstream was asked for {sent['max_tokens']} tokens"
    assert res.usage.completion_tokens == sent["max_tokens"]
    user = priced.user(uid)
    assert user["balance"]["paid"] >= 0 and user["balance"]["held"] == 0
    # What the answer cost is what its usage costs: nothing was given away by a cap on the charge.
    charged = -user["ledger"][0]["paid_delta"]
    assert charged == 1 + -(-10 * (5 + sent["max_tokens"]) // 1000)
    assert priced.audit()["mismatches"] == []
    # The attack's variant: a tiny reserved limit beside a huge `max_tokens`.
    uid, token = priced.new_user("poor2", credits=2)
    upstream.honour_limit = False  # an upstream that would write all it may
    client(priced, token).chat.completions.create(
        model=PER_TOKEN, messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=1, max_tokens=100_000)
    _, _, sent = upstream.requests[-1]
    assert sent.get("max_completion_tokens") == 1 and "max_tokens" not in sent, sent
    assert priced.paid(uid) >= 0


def test_the_smallest_limit_the_client_sent_goes_upstream_in_one_field(priced, upstream):
    _, token = priced.new_user("rich", credits=10_000)
    for kwargs, field, limit in [
        (dict(max_tokens=100_000, max_completion_tokens=50), "max_completion_tokens", 50),
        (dict(max_tokens=40, max_completion_tokens=90), "max_completion_tokens", 40),
        (dict(max_tokens=30), "max_tokens", 30),
    ]:
        client(priced, token).chat.completions.create(
            model=PER_TOKEN, messages=[{"role": "user", "content": "hi"}], **kwargs)
        _, _, sent = upstream.requests[-1]
        assert sent.get(field) == limit, (kwargs, sent)
        other = "max_tokens" if field == "max_completion_tokens" else "max_completion_tokens"
        assert other not in sent, (kwargs, sent)
    # A flat-priced model passes the client's cap through as asked (cost does not grow with it).
    client(priced, token).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=100_000)
    _, _, sent = upstream.requests[-1]
    assert sent["max_tokens"] == 100_000 and "max_completion_tokens" not in sent


def test_models_can_be_read_one_by_one_with_a_real_timestamp(daemon):
    _, token = daemon.new_user("models")
    c = client(daemon, token)
    m = c.models.retrieve(MODEL)
    assert m.id == MODEL and m.object == "model"
    assert m.created > 1_600_000_000
    assert all(x.created == m.created for x in c.models.list())
    with pytest.raises(openai.NotFoundError) as err:
        c.models.retrieve("no-such-model")
    assert err.value.body["param"] == "model"


def test_every_404_and_405_under_v1_is_openai_shaped(daemon):
    _, token = daemon.new_user("paths")
    for method, path, body, expected in [
        ("GET", "/v1/nope", None, 404),
        ("POST", "/v1/embeddings", b"{}", 404),
        ("GET", "/v1", None, 404),
        ("GET", "/v1/chat/completions", None, 405),
        ("DELETE", "/v1/models", None, 405),
        ("POST", "/v1/models/gpt-fake", b"{}", 405),
    ]:
        status, headers, err = raw(daemon, method, path, body, token)
        assert status == expected, (method, path, status, err)
        assert headers.get("content-type", "").startswith("application/json")
        assert set(err["error"]) >= {"message", "type", "param", "code"}, err
        assert err["error"]["type"] == "invalid_request_error"


def test_error_messages_use_one_language_per_request(daemon):
    _, token = daemon.new_user("lang")  # no credits
    cjk = lambda s: any("\u4e00" <= c <= "\u9fff" for c in s)  # noqa: E731
    cases = [
        (chat_body(), 429),                         # the engine's configured (Chinese) text
        (chat_body(n=2), 400),
        (chat_body(model="no-such-model"), 404),
        (b"{oops", 400),
    ]
    for body, expected in cases:
        for lang, chinese in [("en-US,en;q=0.9", False), ("zh-CN,zh;q=0.9", True), (None, True)]:
            headers = {"accept-language": lang} if lang else {}
            status, _, err = raw(daemon, "POST", "/v1/chat/completions", body, token, headers)
            assert status == expected, (body[:40], status, err)
            assert cjk(err["error"]["message"]) == chinese, (lang, err)
    status, _, err = raw(daemon, "GET", "/v1/nope", None, None, {"accept-language": "en"})
    assert status == 404 and not cjk(err["error"]["message"])
    status, _, err = raw(daemon, "GET", "/v1/models", None, "sk-cr-forged", {"accept-language": "zh"})
    assert status == 401 and cjk(err["error"]["message"])


def test_answers_delivered_right_before_sigkill_are_all_charged(upstream):
    d = Daemon(upstream.base_url).start()
    try:
        for round_ in range(3):
            uid, token = d.new_user(f"crash{round_}", credits=100)
            results = []

            def ask():
                try:
                    r = client(d, token, max_retries=0).chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": "hi"}])
                    results.append(r.choices[0].message.content)
                except Exception as e:  # noqa: BLE001 - counted below
                    results.append(e)

            threads = [threading.Thread(target=ask) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=20)
            d.proc.kill()  # at once, after the last answer arrived
            d.proc.wait(timeout=10)
            delivered = len([r for r in results if r == ANSWER])
            assert delivered == 8, results
            d.start()
            user = d.user(uid)
            usage = [e for e in user["ledger"] if e["kind"] == "usage"]
            assert len(usage) == delivered, f"round {round_}: {delivered} answers delivered, {len(usage)} charged"
            assert user["balance"]["paid"] == 100 - COST * delivered
            assert d.audit()["mismatches"] == []
    finally:
        d.stop()


def test_streams_ended_by_shutdown_cost_nothing(upstream):
    d = Daemon(upstream.base_url).start()
    try:
        uid, token = d.new_user("stopped", credits=100)
        upstream.mode = "slow"
        upstream.slow_interval = 0.1
        received = [0] * 8
        errors = []

        def consume(i):
            try:
                for _ in client(d, token, max_retries=0).chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True):
                    received[i] += 1
            except Exception as e:  # noqa: BLE001 - the stream must end with an error
                errors.append(e)

        threads = [threading.Thread(target=consume, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.time() + 10
        while min(received) < 3 and time.time() < deadline:
            time.sleep(0.05)
        assert min(received) >= 3, d.logs()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=15) == 0, d.logs()
        for t in threads:
            t.join(timeout=5)
        assert len(errors) == 8, errors
        upstream.mode = "ok"
        d.start()
        user = d.user(uid)
        assert user["balance"]["paid"] == 100, user["ledger"][:3]
        assert user["balance"]["held"] == 0
        lines = "\n".join(d.log_lines())
        assert "ended by the server's shutdown" in lines
        assert "stopped by the reader" not in lines
    finally:
        upstream.mode = "ok"
        d.stop()
