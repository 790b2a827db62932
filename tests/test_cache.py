"""The mapping-cache wrapper and ``cache_lookup``: exact counts, pass-through, keys never recorded."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import cachetools
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

import bakhmach_obs
from bakhmach_obs.cache import (
    CacheLookup,
    InstrumentedCache,
    cache_lookup,
    instrument_cache,
    key_hash,
    uninstrument_cache,
)
from bakhmach_obs.testing import Capture, capture

OPS = "cache_operations_total"
DURATION_COUNT = "cache_operation_duration_seconds_count"
SECRET_KEY = "user:4111-1111-1111-1111:sk_live_SECRET"


@pytest.fixture
def cap() -> Iterator[Capture]:
    with capture() as c:
        yield c


def count(cap: Capture, name: str, operation: str, result: str) -> float:
    return cap.sample(OPS, cache_name=name, cache_operation=operation, cache_result=result) or 0.0


def durations(cap: Capture, name: str, operation: str) -> float:
    return cap.sample(DURATION_COUNT, cache_name=name, cache_operation=operation) or 0.0


MAPPINGS = {
    "dict": dict,
    "LRUCache": lambda: cachetools.LRUCache(maxsize=100),
    "TTLCache": lambda: cachetools.TTLCache(maxsize=100, ttl=60),
}


@pytest.mark.parametrize("make", MAPPINGS.values(), ids=MAPPINGS.keys())
def test_scripted_sequence_counts_exactly(cap, make):
    cache = instrument_cache(make(), name="profiles")
    cache["a"] = 1  # set ok
    assert cache["a"] == 1  # hit
    assert cache.get("b") is None  # miss
    assert cache.get("a") == 1  # hit
    with pytest.raises(KeyError):
        cache["b"]  # miss, re-raised
    assert cache.get("b", "fallback") == "fallback"  # miss
    del cache["a"]  # delete ok
    assert count(cap, "profiles", "get", "hit") == 2
    assert count(cap, "profiles", "get", "miss") == 3
    assert count(cap, "profiles", "get", "error") == 0
    assert count(cap, "profiles", "set", "ok") == 1
    assert count(cap, "profiles", "delete", "ok") == 1
    assert durations(cap, "profiles", "get") == 5
    assert durations(cap, "profiles", "set") == 1
    assert durations(cap, "profiles", "delete") == 1
    assert cap.spans() == []  # in-process caches: no spans by default


def test_brief_sequence_set_a_get_a_get_b_get_a(cap):
    cache = instrument_cache({}, name="seq")
    cache["a"] = "x"
    cache.get("a"), cache.get("b"), cache.get("a")
    assert (count(cap, "seq", "get", "hit"), count(cap, "seq", "get", "miss")) == (2, 1)


def test_only_relevant_series_exist_at_zero_from_the_start(cap):
    instrument_cache({}, name="fresh")
    text = cap.exposition()
    assert 'cache_operations_total{cache_name="fresh",cache_operation="get",cache_result="hit"} 0.0' in text
    assert 'cache_operations_total{cache_name="fresh",cache_operation="get",cache_result="miss"} 0.0' in text
    assert 'cache_operation="set",cache_result="hit"' not in text


def test_delete_and_pop(cap):
    cache = instrument_cache({"a": 1, "b": 2}, name="d")
    assert cache.pop("a") == 1
    assert cache.pop("zz", None) is None
    with pytest.raises(KeyError):
        cache.pop("zz")
    with pytest.raises(KeyError):
        del cache["zz"]
    # An absent key deleted is "ok" (only lookups hit or miss, so the hit ratio stays a lookup ratio).
    assert count(cap, "d", "delete", "ok") == 4
    assert count(cap, "d", "get", "miss") == 0
    assert dict(cache) == {"b": 2}


def test_cache_error_is_counted_and_reraised_unchanged(cap):
    backend = cachetools.LRUCache(maxsize=10, getsizeof=len)
    cache = instrument_cache(backend, name="sized")
    with pytest.raises(ValueError, match="value too large") as info:
        cache["big"] = "x" * 11
    assert type(info.value) is ValueError
    assert count(cap, "sized", "set", "error") == 1
    assert count(cap, "sized", "set", "ok") == 0


def test_cachetools_cached_decorator_uses_the_proxy(cap):
    calls = []
    cache = instrument_cache(cachetools.TTLCache(maxsize=10, ttl=60), name="fib")

    @cachetools.cached(cache=cache)
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    assert [square(3), square(3), square(4), square(3)] == [9, 9, 16, 9]
    assert calls == [3, 4]
    assert count(cap, "fib", "get", "hit") == 2
    assert count(cap, "fib", "get", "miss") == 2
    assert count(cap, "fib", "set", "ok") == 2


def test_pass_through_is_not_counted(cap):
    backend = cachetools.LRUCache(maxsize=3)
    cache = instrument_cache(backend, name="pt")
    cache.update({"a": 1, "b": 2})  # two counted sets
    assert "a" in cache and "zz" not in cache
    assert len(cache) == 2 and sorted(cache) == ["a", "b"]
    assert sorted(cache.keys()) == ["a", "b"] and sorted(cache.values()) == [1, 2]
    assert dict(cache.items()) == {"a": 1, "b": 2}
    assert cache.maxsize == 3 and cache.currsize == 2  # attributes of the wrapped cache
    assert cache.wrapped is backend and uninstrument_cache(cache) is backend
    assert uninstrument_cache(backend) is backend
    assert count(cap, "pt", "get", "hit") == 0 and count(cap, "pt", "get", "miss") == 0
    assert count(cap, "pt", "set", "ok") == 2
    assert cache.setdefault("c", 3) == 3  # MutableMapping: a miss, then a set
    assert count(cap, "pt", "get", "miss") == 1 and count(cap, "pt", "set", "ok") == 3
    cache.clear()
    assert len(backend) == 0
    assert "InstrumentedCache(" in repr(cache) and "name='pt'" in repr(cache)


def test_wrapping_is_idempotent_and_validates_the_name():
    cache = instrument_cache({}, name="x")
    assert instrument_cache(cache, name="y") is cache
    assert isinstance(cache, InstrumentedCache)
    with pytest.raises(ValueError, match="name"):
        instrument_cache({}, name="")


def test_spans_opt_in_carry_a_key_hash_never_the_key(cap):
    cache = instrument_cache({}, name="secure", spans=True)
    cache[SECRET_KEY] = "v"
    assert cache.get(SECRET_KEY) == "v"
    assert cache.get("other") is None
    with pytest.raises(KeyError):
        cache["other"]
    del cache[SECRET_KEY]
    spans = cap.spans()
    assert [s.name for s in spans] == ["set secure", "get secure", "get secure", "get secure", "delete secure"]
    assert [s.attributes["bakhmach.cache.result"] for s in spans] == ["ok", "hit", "miss", "miss", "ok"]
    assert spans[1].attributes["bakhmach.cache.key_hash"] == key_hash(SECRET_KEY)
    assert all(s.kind is SpanKind.INTERNAL for s in spans)
    for s in spans:
        assert SECRET_KEY not in repr(dict(s.attributes or {})) and SECRET_KEY not in s.name
    assert SECRET_KEY not in cap.exposition()
    assert count(cap, "secure", "get", "hit") == 1 and count(cap, "secure", "get", "miss") == 2


def test_spans_opt_in_error(cap):
    cache = instrument_cache(cachetools.LRUCache(maxsize=1, getsizeof=len), name="e", spans=True)
    with pytest.raises(ValueError, match="too large"):
        cache["k"] = "xx"
    (span,) = cap.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "ValueError"
    assert span.attributes["bakhmach.cache.result"] == "error"
    assert count(cap, "e", "set", "error") == 1


def test_suppress_records_nothing(cap):
    cache = instrument_cache({}, name="quiet", spans=True)
    with bakhmach_obs.suppress():
        cache["a"] = 1
        cache.get("a"), cache.get("b")
        with cache_lookup("quiet") as lookup:
            lookup.hit()
    assert count(cap, "quiet", "get", "hit") == 0 and count(cap, "quiet", "set", "ok") == 0
    assert cap.spans() == []


def test_disabled_and_metrics_off_record_nothing_and_still_work():
    for settings in ({"disabled": True}, {"metrics_enabled": False, "tracing_enabled": False}):
        with capture(**settings) as cap:
            cache = instrument_cache({}, name="off")
            cache["a"] = 1
            assert cache["a"] == 1 and cache.get("b") is None
            with cache_lookup("off") as lookup:
                lookup.hit()
            assert cap.sample(OPS, cache_name="off", cache_result="hit") is None
            assert cap.spans() == []


def test_follows_a_later_configure():
    cache = instrument_cache({}, name="rebind")  # wrapped before any capture/configure
    with capture() as first:
        cache["a"] = 1
        cache.get("a")
    with capture() as second:
        cache.get("a")
        cache.get("a")
    assert count(first, "rebind", "get", "hit") == 1
    assert count(second, "rebind", "get", "hit") == 2


def test_telemetry_failure_is_counted_and_the_cache_still_works(cap, monkeypatch):
    cache = instrument_cache({}, name="faulty")
    cache["warm"] = 0  # binds the site under this runtime
    monkeypatch.setattr(cache._site.get, "bounds", None)  # bisect now raises TypeError
    cache["a"] = 1
    assert cache["a"] == 1
    assert cache.get("b") is None
    assert cap.sample("bakhmach_obs_telemetry_errors_total", component="metrics") == 2.0
    assert count(cap, "faulty", "set", "ok") == 2


def test_concurrent_threads_count_exactly(cap):
    cache = instrument_cache({"a": 1}, name="threads")
    n, threads = 2000, 8

    def work() -> None:
        for i in range(n):
            cache.get("a" if i % 2 else "missing")

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert count(cap, "threads", "get", "hit") == n * threads / 2
    assert count(cap, "threads", "get", "miss") == n * threads / 2
    assert durations(cap, "threads", "get") == n * threads


# --- cache_lookup ---------------------------------------------------------------------------------
def test_cache_lookup_results(cap):
    backend = {"u1": "Ada"}
    for user in ("u1", "u2", "u1"):
        with cache_lookup("profiles", key=user) as lookup:
            value = backend.get(user)
            lookup.hit() if value is not None else lookup.miss()
        assert lookup.result == ("hit" if value else "miss")
    with cache_lookup("profiles", "set") as lookup:
        backend["u2"] = "Bob"
    assert lookup.result == "ok"
    assert count(cap, "profiles", "get", "hit") == 2
    assert count(cap, "profiles", "get", "miss") == 1
    assert count(cap, "profiles", "set", "ok") == 1
    assert durations(cap, "profiles", "get") == 3
    spans = cap.spans()
    assert [s.name for s in spans] == ["get profiles"] * 3 + ["set profiles"]
    assert spans[0].attributes["bakhmach.cache.key_hash"] == key_hash("u1")
    assert "bakhmach.cache.key_hash" not in spans[3].attributes


def test_cache_lookup_error_is_reraised_unchanged(cap):
    boom = ConnectionError("backend down")
    lookup = cache_lookup("remote")

    def failing() -> None:
        with lookup:
            lookup.hit()
            raise boom

    with pytest.raises(ConnectionError) as info:
        failing()
    assert info.value is boom
    assert lookup.result == "error"
    assert count(cap, "remote", "get", "error") == 1
    assert count(cap, "remote", "get", "hit") == 0
    (span,) = cap.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "ConnectionError"


def test_cache_lookup_span_is_current_inside_the_block(cap):
    tracer = cap.runtime.tracer
    with cache_lookup("nested") as lookup:
        with tracer.start_as_current_span("backend call"):
            pass
        lookup.miss()
    child, parent = cap.spans()
    assert parent.name == "get nested" and child.parent.span_id == parent.context.span_id
    assert not trace.get_current_span().get_span_context().is_valid


def test_cache_lookup_without_spans(cap):
    with cache_lookup("nospan", spans=False) as lookup:
        lookup.miss()
    assert cap.spans() == []
    assert count(cap, "nospan", "get", "miss") == 1
    assert isinstance(lookup, CacheLookup)


async def test_cache_lookup_async_with(cap):
    async with cache_lookup("aio") as lookup:
        lookup.hit()
    assert count(cap, "aio", "get", "hit") == 1


def test_importing_the_sdk_imports_no_cache_library():
    code = (
        "import sys, bakhmach_obs, bakhmach_obs.cache, bakhmach_obs.redis\n"
        "bad = [m for m in ('redis', 'cachetools') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- exception events -----------------------------------------------------------------------------
#: An exception message quoting the key, a bearer token and a card number: none may reach a span.
SECRET_TEXT = "Bearer s3cr3t-tok, card 4111 1111 1111 1111"


def _check_exception_event(span, error_type: str, key: str) -> dict:
    (event,) = span.events
    attributes = dict(event.attributes)
    assert attributes["exception.type"] == error_type
    assert f"<key {key_hash(key)}>" in attributes["exception.message"]
    assert "Bearer [REDACTED], card [REDACTED]" in attributes["exception.message"]
    assert attributes["exception.stacktrace"].startswith("Traceback (most recent call last):")
    for value in attributes.values():
        text = str(value)
        assert key not in text and "sk_live_SECRET" not in text
        assert "s3cr3t-tok" not in text and "4111 1111" not in text
    return attributes


class RefusingBackend(dict):
    """A backend whose writes fail with a message quoting the key and credentials."""

    def __setitem__(self, key, value):
        raise PermissionError(f"cannot store {key}: {SECRET_TEXT}")


def test_instrumented_cache_exception_event_hides_key_and_secrets(cap):
    cache = instrument_cache(RefusingBackend(), name="vault", spans=True)
    with pytest.raises(PermissionError, match="s3cr3t-tok"):  # the caller's exception is untouched
        cache[SECRET_KEY] = "v"
    (span,) = cap.spans()
    attributes = _check_exception_event(span, "PermissionError", SECRET_KEY)
    assert attributes["exception.message"].startswith("cannot store <key ")


def test_cache_lookup_exception_event_hides_key_and_secrets_in_chained_causes(cap):
    key = "session:" + SECRET_KEY

    def fetch() -> None:
        try:
            raise KeyError(key)
        except KeyError as missing:
            raise ConnectionError(f"backend refused {key} ({SECRET_TEXT})") from missing

    with pytest.raises(ConnectionError), cache_lookup("remote", key=key):
        fetch()
    (span,) = cap.spans()
    attributes = _check_exception_event(span, "ConnectionError", key)
    stack = attributes["exception.stacktrace"]
    assert f"KeyError: '<key {key_hash(key)}>'" in stack  # the cause is kept, without the key
    assert "ConnectionError: backend refused <key " in stack
