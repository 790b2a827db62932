"""redis-py instrumentation against a real Redis on 127.0.0.1:6379 (skipped locally when absent).

Every test uses its own key prefix and deletes what it wrote; clients are closed (warnings are
errors in this suite).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanKind, StatusCode
from redis.backoff import NoBackoff
from redis.retry import Retry

import bakhmach_obs
from bakhmach_obs import metrics
from bakhmach_obs.cache import key_hash
from bakhmach_obs.redis import instrument_redis, is_instrumented, uninstrument_redis
from bakhmach_obs.testing import Capture, capture

try:  # tests/ as a rootdir-relative directory (pytest's default "prepend" import mode)
    from conftest import need
except ImportError:  # tests/ as a package
    from tests.conftest import need

pytestmark = pytest.mark.services

HOST, PORT = "127.0.0.1", 6379
DB_DURATION = "db_client_operation_duration_seconds"
DB_COUNT = DB_DURATION + "_count"
OPS = "cache_operations_total"
ERRORS = "bakhmach_obs_telemetry_errors_total"
SECRET = "sk_live_51HxSECRETxKEY"


def _redis_up() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def prefix() -> Iterator[str]:
    need(_redis_up(), f"no Redis server on {HOST}:{PORT}")
    value = f"bakhmach-obs-test:{uuid.uuid4().hex}:"
    yield value
    cleaner = redis.Redis(host=HOST, port=PORT)
    try:
        keys = list(cleaner.scan_iter(match=value + "*"))
        if keys:
            cleaner.delete(*keys)
    finally:
        cleaner.close()


@pytest.fixture
def cap() -> Iterator[Capture]:
    with capture() as c:
        yield c


@pytest.fixture
def client(prefix: str) -> Iterator[redis.Redis]:
    c = redis.Redis(host=HOST, port=PORT, db=0)
    yield c
    uninstrument_redis(c)
    c.close()


@pytest.fixture
async def aclient(prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis(host=HOST, port=PORT, db=0)
    yield c
    await c.aclose()


def hits_misses(cap: Capture, name: str) -> tuple[float, float]:
    return tuple(  # type: ignore[return-value]
        cap.sample(OPS, cache_name=name, cache_operation="get", cache_result=r) or 0.0 for r in ("hit", "miss")
    )


def db_count(cap: Capture, command: str, error_type: str = "") -> float:
    return cap.sample(DB_COUNT, db_operation_name=command, error_type=error_type) or 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --- sync -----------------------------------------------------------------------------------------
def test_scripted_sequence_matches_the_counters_exactly(cap, client, prefix):
    instrument_redis(client, cache_name="sessions")
    a, b = prefix + "a", prefix + "b"
    assert client.set(a, "1") is True
    assert client.get(a) == b"1"
    assert client.get(b) is None
    assert client.get(a) == b"1"
    assert hits_misses(cap, "sessions") == (2, 1)
    assert cap.sample(OPS, cache_name="sessions", cache_operation="set", cache_result="ok") == 1
    assert cap.sample("cache_operation_duration_seconds_count", cache_name="sessions", cache_operation="get") == 3
    assert db_count(cap, "GET") == 3 and db_count(cap, "SET") == 1
    sample = cap.sample(DB_COUNT, db_operation_name="GET")
    assert sample == 3
    text = cap.exposition()
    assert (
        'db_client_operation_duration_seconds_count{db_collection_name="",db_namespace="0",'
        'db_operation_name="GET",db_system_name="redis",error_type=""} 3.0'
    ) in text


def test_span_per_command(cap, client, prefix):
    instrument_redis(client)
    client.set(prefix + "k", "v")
    client.get(prefix + "k")
    spans = cap.spans()
    assert [s.name for s in spans] == ["SET", "GET"]
    get = spans[1]
    assert get.kind is SpanKind.CLIENT
    assert dict(get.attributes) == {
        "db.system.name": "redis",
        "db.namespace": "0",
        "db.operation.name": "GET",
        "server.address": HOST,
        "server.port": PORT,
    }
    assert get.status.status_code is StatusCode.UNSET


def test_keys_and_values_never_recorded(cap, client, prefix):
    instrument_redis(client, cache_name="secrets")
    key = prefix + SECRET
    client.set(key, "value-" + SECRET)
    client.get(key)
    client.mget([key, prefix + "other"])
    with pytest.raises(redis.exceptions.ResponseError):
        client.incr(key)
    spans = cap.spans()
    assert spans
    for span in spans:
        blob = repr(dict(span.attributes or {})) + span.name
        blob += "".join(repr(dict(e.attributes or {})) for e in span.events)
        assert SECRET not in blob, span.name
    assert spans[1].attributes["bakhmach.cache.key_hash"] == key_hash(key)
    assert SECRET not in cap.exposition()
    assert all(SECRET not in r.getMessage() for r in cap.records)


def test_response_error_is_recorded_and_reraised_unchanged(cap, client, prefix):
    instrument_redis(client, cache_name="c")
    key = prefix + "not-a-number"
    client.set(key, "abc")
    with pytest.raises(redis.exceptions.ResponseError, match="not an integer") as info:
        client.incr(key)
    assert type(info.value) is redis.exceptions.ResponseError
    raised_in = str(info.traceback[-1].path)  # raised by redis-py, passed through untouched
    assert "bakhmach_obs" not in raised_in and "redis" in raised_in
    span = cap.spans("INCRBY")[0] if cap.spans("INCRBY") else cap.spans("INCR")[0]
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "redis.exceptions.ResponseError"
    assert [e.name for e in span.events] == ["exception"]
    assert db_count(cap, span.name, "redis.exceptions.ResponseError") == 1
    assert db_count(cap, span.name) == 0


#: An error reply quoting a bearer token and a card number (both must never reach a span).
SECRET_MESSAGE = "charge failed: Bearer s3cr3t-tok, card 4111 1111 1111 1111 declined"


def _check_redacted_exception(span) -> None:
    (event,) = span.events
    attributes = event.attributes
    assert attributes["exception.type"] == "redis.exceptions.ResponseError"
    assert attributes["exception.message"] == "charge failed: Bearer [REDACTED], card [REDACTED] declined"
    assert "redis.exceptions.ResponseError: charge failed" in attributes["exception.stacktrace"]
    for value in [*attributes.values(), *span.attributes.values()]:
        assert "s3cr3t-tok" not in str(value) and "4111 1111" not in str(value)


def test_error_reply_quoting_secrets_is_redacted_on_the_span(cap, client, prefix):
    instrument_redis(client)
    with pytest.raises(redis.exceptions.ResponseError, match="s3cr3t-tok"):  # untouched for the caller
        client.eval("return redis.error_reply(ARGV[1])", 0, SECRET_MESSAGE)
    _check_redacted_exception(cap.spans("EVAL")[0])


async def test_async_error_reply_quoting_secrets_is_redacted_on_the_span(cap, aclient, prefix):
    instrument_redis(aclient)
    with pytest.raises(redis.exceptions.ResponseError, match="s3cr3t-tok"):
        await aclient.eval("return redis.error_reply(ARGV[1])", 0, SECRET_MESSAGE)
    _check_redacted_exception(cap.spans("EVAL")[0])


def test_cache_command_error_counts_error(cap, client, prefix):
    instrument_redis(client, cache_name="typed")
    key = prefix + "list"
    client.rpush(key, "x")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        client.get(key)
    assert cap.sample(OPS, cache_name="typed", cache_operation="get", cache_result="error") == 1
    assert hits_misses(cap, "typed") == (0, 0)


def test_connection_error_is_recorded_and_reraised_unchanged(cap, prefix):
    port = _free_port()
    c = redis.Redis(host=HOST, port=port, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1)
    try:
        instrument_redis(c)
        with pytest.raises(redis.exceptions.ConnectionError) as info:
            c.get(prefix + "x")
        assert type(info.value) is redis.exceptions.ConnectionError
    finally:
        c.close()
    (span,) = cap.spans()
    assert span.name == "GET"
    assert span.attributes["server.port"] == port
    assert span.attributes["error.type"] == "redis.exceptions.ConnectionError"
    assert db_count(cap, "GET", "redis.exceptions.ConnectionError") == 1


def test_multi_key_lookups_count_per_key(cap, client, prefix):
    instrument_redis(client, cache_name="multi")
    k1, k2, k3 = (prefix + k for k in "xyz")
    client.mset({k1: "1", k2: "2"})
    assert client.mget([k1, k2, k3]) == [b"1", b"2", None]  # 2 hits, 1 miss
    assert client.exists(k1, k3) == 1  # 1 hit, 1 miss
    client.hset(prefix + "h", "f", "v")
    assert client.hget(prefix + "h", "f") == b"v"  # hit
    assert client.hget(prefix + "h", "g") is None  # miss
    assert client.delete(k1, k3) == 1
    assert hits_misses(cap, "multi") == (4, 3)
    assert cap.sample(OPS, cache_name="multi", cache_operation="set", cache_result="ok") == 2
    assert cap.sample(OPS, cache_name="multi", cache_operation="delete", cache_result="ok") == 1
    # one duration per command, whatever the number of keys
    assert cap.sample("cache_operation_duration_seconds_count", cache_name="multi", cache_operation="get") == 4


def test_without_cache_name_no_cache_metrics(cap, client, prefix):
    instrument_redis(client)
    client.get(prefix + "a")
    assert cap.sample(OPS, cache_result="miss") is None
    assert "bakhmach.cache.key_hash" not in cap.spans()[0].attributes


def test_pipeline_transaction_is_one_multi_span(cap, client, prefix):
    instrument_redis(client, cache_name="pipe")
    a, b = prefix + "a", prefix + "b"
    with client.pipeline() as pipe:
        pipe.set(a, "1").get(a).get(b)
        assert pipe.execute() == [True, b"1", None]
    (span,) = cap.spans()
    assert span.name == "MULTI"
    assert span.attributes["db.operation.batch.size"] == 3
    assert span.attributes["db.operation.name"] == "MULTI"
    assert db_count(cap, "MULTI") == 1 and db_count(cap, "GET") == 0
    assert hits_misses(cap, "pipe") == (1, 1)
    assert cap.sample(OPS, cache_name="pipe", cache_operation="set", cache_result="ok") == 1


def test_pipeline_without_transaction_and_errors(cap, client, prefix):
    instrument_redis(client, cache_name="pipe2")
    key = prefix + "s"
    with client.pipeline(transaction=False) as pipe:
        pipe.set(key, "abc").incr(key).get(key)
        replies = pipe.execute(raise_on_error=False)
    assert isinstance(replies[1], redis.exceptions.ResponseError)
    assert cap.spans()[0].name == "PIPELINE"
    assert db_count(cap, "PIPELINE") == 1
    assert hits_misses(cap, "pipe2") == (1, 0)
    with client.pipeline(transaction=False) as pipe:
        pipe.incr(key)
        with pytest.raises(redis.exceptions.ResponseError):
            pipe.execute()
    failed = cap.spans()[-1]
    assert failed.name == "PIPELINE" and failed.status.status_code is StatusCode.ERROR
    assert db_count(cap, "PIPELINE", "redis.exceptions.ResponseError") == 1
    with client.pipeline() as pipe:
        assert pipe.execute() == []  # nothing queued: nothing recorded
    assert len(cap.spans()) == 2


def test_watch_and_transaction_helper(cap, client, prefix):
    instrument_redis(client)
    key = prefix + "counter"
    client.set(key, "1")
    cap.clear()

    def bump(pipe: redis.client.Pipeline) -> None:
        value = int(pipe.get(key))  # immediate: WATCH is on
        pipe.multi()
        pipe.set(key, value + 1)

    client.transaction(bump, key)
    assert client.get(key) == b"2"
    assert [s.name for s in cap.spans()] == ["WATCH", "GET", "MULTI", "GET"]


def test_idempotent_and_uninstrument(cap, client, prefix):
    assert instrument_redis(client) is client
    assert instrument_redis(client, cache_name="ignored") is client
    assert is_instrumented(client)
    client.get(prefix + "a")
    assert len(cap.spans()) == 1
    uninstrument_redis(client)
    uninstrument_redis(client)
    assert not is_instrumented(client)
    client.get(prefix + "a")
    with client.pipeline() as pipe:
        pipe.get(prefix + "a")
        pipe.execute()
    assert len(cap.spans()) == 1
    with pytest.raises(TypeError):
        instrument_redis(object())  # type: ignore[type-var]
    with pytest.raises(ValueError, match="cache_name"):
        instrument_redis(redis.Redis(), cache_name="")


def test_suppress_records_nothing(cap, client, prefix):
    instrument_redis(client, cache_name="quiet")
    with bakhmach_obs.suppress():
        client.set(prefix + "a", "1")
        client.get(prefix + "a")
    with suppress_instrumentation():
        client.get(prefix + "a")
    assert cap.spans() == []
    assert db_count(cap, "GET") == 0
    assert hits_misses(cap, "quiet") == (0, 0)


def test_follows_a_later_configure(client, prefix):
    instrument_redis(client, cache_name="rebind")
    with capture() as first:
        client.get(prefix + "a")
    with capture() as second:
        client.get(prefix + "a")
        client.get(prefix + "a")
    assert db_count(first, "GET") == 1 and db_count(second, "GET") == 2
    assert hits_misses(first, "rebind") == (0, 1) and hits_misses(second, "rebind") == (0, 2)
    with capture(disabled=True) as off:
        client.get(prefix + "a")
    assert off.spans() == [] and db_count(off, "GET") == 0


def test_telemetry_failure_commands_still_work(cap, client, prefix, monkeypatch):
    instrument_redis(client, cache_name="faulty")

    def broken(self, value):
        raise RuntimeError("cell broken")

    monkeypatch.setattr(metrics.HistogramCell, "observe", broken)
    assert client.set(prefix + "a", "1") is True
    assert client.get(prefix + "a") == b"1"
    assert cap.sample(ERRORS, component="metrics") == 2.0
    assert len(cap.spans()) == 2  # spans still recorded

    def no_spans(*args, **kwargs):
        raise RuntimeError("tracer broken")

    monkeypatch.setattr(cap.runtime, "start_span", no_spans)
    assert client.get(prefix + "a") == b"1"
    assert cap.sample(ERRORS, component="tracing") == 1.0


# --- asyncio --------------------------------------------------------------------------------------
async def test_async_scripted_sequence(cap, aclient, prefix):
    instrument_redis(aclient, cache_name="asessions")
    a, b = prefix + "a", prefix + "b"
    await aclient.set(a, "1")
    assert await aclient.get(a) == b"1"
    assert await aclient.get(b) is None
    assert await aclient.get(a) == b"1"
    assert hits_misses(cap, "asessions") == (2, 1)
    assert db_count(cap, "GET") == 3
    spans = cap.spans()
    assert [s.name for s in spans] == ["SET", "GET", "GET", "GET"]
    assert spans[1].attributes["db.system.name"] == "redis" and spans[1].kind is SpanKind.CLIENT


async def test_async_error_and_pipeline(cap, aclient, prefix):
    instrument_redis(aclient, cache_name="apipe")
    key = prefix + "n"
    await aclient.set(key, "abc")
    with pytest.raises(redis.exceptions.ResponseError) as info:
        await aclient.incr(key)
    assert type(info.value) is redis.exceptions.ResponseError
    assert cap.spans()[-1].attributes["error.type"] == "redis.exceptions.ResponseError"
    async with aclient.pipeline(transaction=True) as pipe:
        pipe.get(key).get(prefix + "missing")
        assert await pipe.execute() == [b"abc", None]
    span = cap.spans()[-1]
    assert span.name == "MULTI" and span.attributes["db.operation.batch.size"] == 2
    assert hits_misses(cap, "apipe") == (1, 1)
    async with aclient.pipeline(transaction=False) as pipe:
        pipe.get(key)
        await pipe.execute()
    assert cap.spans()[-1].name == "PIPELINE"
    with bakhmach_obs.suppress():
        await aclient.get(key)
    assert db_count(cap, "GET") == 0  # only pipelines and the failed INCRBY/SET so far


async def test_async_connection_error(cap, prefix):
    c = redis.asyncio.Redis(host=HOST, port=_free_port(), retry=Retry(NoBackoff(), 0), socket_connect_timeout=1)
    try:
        instrument_redis(c)
        with pytest.raises(redis.exceptions.ConnectionError):
            await c.get(prefix + "x")
    finally:
        await c.aclose()
    assert cap.spans()[0].attributes["error.type"] == "redis.exceptions.ConnectionError"
