from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import io
import json
import logging
import sys
import threading
from importlib.resources import files

import jsonschema
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

import bakhmach_obs
from bakhmach_obs.logs import ConsoleFormatter, JsonFormatter, sole_json_handler

SCHEMA = json.loads(files("bakhmach_obs").joinpath("assets/log_record.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


@pytest.fixture(params=["orjson", "stdlib"])
def encoder(request, monkeypatch):
    """Every formatter test runs with the orjson fast path and with the standard encoder."""
    from bakhmach_obs import logs

    if request.param == "stdlib":
        monkeypatch.setattr(logs, "_orjson", None)
    elif logs._orjson is None:
        pytest.skip("orjson is not installed (pip install bakhmach-obs[orjson])")
    return request.param


@pytest.fixture
def emit(encoder):
    """A logger writing through the JSON formatter into a buffer; returns the parsed records."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(service="backend"))
    logger = logging.getLogger("tests.logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)

    def records():
        lines = stream.getvalue().splitlines()
        parsed = [json.loads(line) for line in lines]
        for record in parsed:
            VALIDATOR.validate(record)
        return parsed

    yield logger, records
    logger.handlers[:] = []


def tracer(sampler):
    return TracerProvider(sampler=sampler).get_tracer("tests")


def test_record_outside_any_span_has_no_trace_ids(emit):
    logger, records = emit
    logger.info("hello %s", "world", extra={"user_id": "user-789", "action": "payment_processing"})
    (r,) = records()
    assert r["message"] == "hello world"
    assert r["service"] == "backend" and r["logger"] == "tests.logs" and r["level"] == "INFO"
    assert r["correlation_id"] is None
    assert "trace_id" not in r and "span_id" not in r
    assert r["user_id"] == "user-789" and r["action"] == "payment_processing"
    assert r["timestamp"].endswith("Z") and len(r["timestamp"]) == 24


def test_record_inside_sampled_span_carries_its_ids(emit):
    logger, records = emit
    with tracer(ALWAYS_ON).start_as_current_span("work") as span:
        logger.warning("inside")
    (r,) = records()
    ctx = span.get_span_context()
    assert r["trace_id"] == f"{ctx.trace_id:032x}"
    assert r["span_id"] == f"{ctx.span_id:016x}"
    assert int(r["trace_flags"], 16) & 1 == 1  # sampled (OTel also sets W3C level 2's "random" bit)
    assert r["level"] == "WARNING"


def test_record_inside_unsampled_span_carries_ids_flagged_unsampled(emit):
    logger, records = emit
    with tracer(ALWAYS_OFF).start_as_current_span("work") as span:
        logger.info("inside")
    (r,) = records()
    assert not span.is_recording()
    assert r["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert int(r["trace_flags"], 16) & 1 == 0


def test_invalid_span_context_never_logs_zero_ids(emit):
    from opentelemetry import trace

    logger, records = emit
    with trace.use_span(trace.INVALID_SPAN):
        logger.info("x", extra={"trace_id": "0" * 32, "span_id": "0" * 16})
    (r,) = records()
    assert "trace_id" not in r and "span_id" not in r


def test_every_level_validates(emit):
    logger, records = emit
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        logger.log(level, "m")
    assert [r["level"] for r in records()] == ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def test_exception_becomes_error_fields_and_stacktrace_without_locals(emit):
    logger, records = emit

    def charge():
        password = "hunter2-local-variable"  # noqa: F841 - must never be logged
        raise ValueError("Insufficient funds")

    try:
        charge()
    except ValueError:
        logger.exception("payment failed", extra={"error_code": "PAYMENT_001", "duration_ms": 245})
    (r,) = records()
    assert r["error"] == "Insufficient funds"
    assert r["error_type"] == "ValueError"
    assert r["error_code"] == "PAYMENT_001" and r["duration_ms"] == 245
    assert "Traceback" in r["stacktrace"] and "in charge" in r["stacktrace"]
    assert "hunter2-local-variable" not in json.dumps(r)


def test_log_injection_stays_one_record(emit):
    logger, records = emit
    logger.info('legit\r\n{"level":"CRITICAL","message":"forged"}\x00\x1b[31m\x7f\u2028end')
    (r,) = records()
    assert r["level"] == "INFO"
    assert r["message"].startswith('legit\r\n{"level":"CRITICAL"')
    assert r["message"].endswith("\u2028end")


def test_reserved_fields_cannot_be_overwritten(emit):
    logger, records = emit
    with bakhmach_obs.log_context(service="evil", timestamp="1970", level="DEBUG", correlation_id="forged"):
        logger.info("m", extra={"logger": "evil", "level": "CRITICAL", "service": "evil", "span_id": "x"})
    (r,) = records()
    assert r["service"] == "backend" and r["level"] == "INFO" and r["logger"] == "tests.logs"
    assert r["correlation_id"] is None
    assert "span_id" not in r


def test_unserialisable_values_are_rendered_safely(emit):
    logger, records = emit

    class Unprintable:
        def __str__(self):
            raise RuntimeError("no str")

        def __repr__(self):
            raise RuntimeError("no repr")

    logger.info(
        "m",
        extra={
            "when": datetime.datetime(2026, 1, 2, 19, 30, tzinfo=datetime.timezone.utc),
            "amount": decimal.Decimal("12.50"),
            "tags": {"a"},
            "blob": b"\x00\xff",
            "obj": object(),
            "broken": Unprintable(),
        },
    )
    (r,) = records()
    assert r["when"].startswith("2026-01-02T19:30:00")
    assert r["amount"] == "12.50"
    assert isinstance(r["obj"], str)


def test_redaction_applies_to_fields_messages_and_exceptions(emit):
    logger, records = emit
    try:
        raise PermissionError("token rejected: Bearer abcdefghijklmnopqrstuvwxyz123456")
    except PermissionError:
        logger.exception(
            "paying with 4111 1111 1111 1111",
            extra={"password": "hunter2", "request": {"headers": {"Authorization": "Basic dXNlcjpwYXNz"}}},
        )
    (r,) = records()
    text = json.dumps(r)
    for secret in (
        "hunter2",
        "4111 1111 1111 1111",
        "4111111111111111",
        "dXNlcjpwYXNz",
        "abcdefghijklmnopqrstuvwxyz123456",
    ):
        assert secret not in text, secret
    assert r["password"] == "[REDACTED]"


def test_bound_context_and_correlation_id_reach_records(emit):
    logger, records = emit
    with bakhmach_obs.correlation_scope("req-12345"), bakhmach_obs.log_context(user_id="user-789", tenant="acme"):
        logger.info("m", extra={"tenant": "override"})
    (r,) = records()
    assert r["correlation_id"] == "req-12345"
    assert r["user_id"] == "user-789"
    assert r["tenant"] == "override"  # the call site is more specific than the bound context


def test_context_is_isolated_between_asyncio_tasks_and_threads(emit):
    logger, records = emit

    async def task(i):
        with bakhmach_obs.correlation_scope(f"task-{i}"), bakhmach_obs.log_context(user_id=f"user-{i}"):
            for _ in range(3):
                await asyncio.sleep(0)
                logger.info("step", extra={"expect": i})

    async def main():
        await asyncio.gather(*(task(i) for i in range(100)))

    def thread(i):
        bakhmach_obs.bind(user_id=f"user-t{i}")
        bakhmach_obs.context.set_correlation_id(f"thread-{i}")
        for _ in range(20):
            logger.info("step", extra={"expect": f"t{i}"})

    asyncio.run(main())
    threads = [threading.Thread(target=thread, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = records()
    assert len(out) == 300 + 160
    for r in out:
        expect = r["expect"]
        if isinstance(expect, int):
            assert r["user_id"] == f"user-{expect}" and r["correlation_id"] == f"task-{expect}"
        else:
            assert r["user_id"] == f"user-{expect}" and r["correlation_id"] == f"thread-{expect[1:]}"
    assert bakhmach_obs.correlation_id() is None
    assert "user_id" not in bakhmach_obs.bound_fields()


def test_log_context_restores_previous_fields():
    with bakhmach_obs.log_context(a=1):
        with bakhmach_obs.log_context(a=2, b=3):
            assert dict(bakhmach_obs.bound_fields()) == {"a": 2, "b": 3}
        assert dict(bakhmach_obs.bound_fields()) == {"a": 1}
    assert dict(bakhmach_obs.bound_fields()) == {}


def test_instrument_failure_log_validates_and_carries_span_ids():
    stream = io.StringIO()
    bakhmach_obs.configure(service_name="backend", log_format="json", log_stream=stream, traces_exporter="memory",
                           traces_sampler="always_on")  # fmt: skip

    class PaymentError(Exception):
        error_code = "PAYMENT_001"

    @bakhmach_obs.instrument(action="payment_processing")
    def charge():
        raise PaymentError("Insufficient funds")

    @bakhmach_obs.instrument
    def lines():
        yield 1
        raise PaymentError("mid-stream")

    with bakhmach_obs.correlation_scope("req-12345"), bakhmach_obs.log_context(user_id="user-789"):
        with pytest.raises(PaymentError):
            charge()
        with pytest.raises(PaymentError):
            list(lines())
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(records) == 2
    for r in records:
        VALIDATOR.validate(r)
        assert r["level"] == "ERROR" and r["service"] == "backend"
        assert r["correlation_id"] == "req-12345" and r["user_id"] == "user-789"
        assert r["error_code"] == "PAYMENT_001" and "trace_id" in r and "span_id" in r
    assert records[0]["action"] == "payment_processing" and records[0]["error"] == "Insufficient funds"


def test_configure_twice_installs_one_handler():
    root = logging.getLogger()
    before = len(root.handlers)
    bakhmach_obs.configure(service_name="a", log_format="json", log_stream=io.StringIO())
    bakhmach_obs.configure(service_name="b", log_format="console", log_stream=io.StringIO())
    bakhmach_obs.configure(service_name="c", log_format="json", log_stream=io.StringIO(), log_level="warn")
    assert len(root.handlers) == before + 1
    assert root.level == logging.WARNING
    bakhmach_obs.configure(service_name="d", log_format="none")
    assert len(root.handlers) == before


def test_console_format_is_readable_redacted_and_single_line():
    record = logging.LogRecord("shop", logging.INFO, __file__, 1, "paid\r\nforged", (), None)
    record.password = "hunter2"
    with bakhmach_obs.correlation_scope("req-1"):
        line = ConsoleFormatter().format(record)
    assert "\n" not in line and "\r" not in line
    assert "INFO" in line and "shop: paid" in line and "correlation_id=req-1" in line
    assert "hunter2" not in line and "password=[REDACTED]" in line


def test_configure_ships_to_logstash_and_shutdown_flushes(registry):
    """configure(logstash_address=...) end to end against a real TCP listener."""
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received = bytearray()

    def accept():
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(65536):
                received.extend(chunk)

    reader = threading.Thread(target=accept, daemon=True)
    reader.start()
    try:
        bakhmach_obs.configure(
            service_name="shipper", registry=registry, log_format="none", logstash_address=f"127.0.0.1:{port}",
            traces_exporter="none",
        )  # fmt: skip
        log = logging.getLogger("tests.shipping")
        for i in range(5):
            log.warning("shipped %d", i, extra={"seq": i, "api_key": "k-secret"})
        assert bakhmach_obs.shutdown(timeout=5.0) is True
        reader.join(5)
    finally:
        server.close()
    lines = bytes(received).decode().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    for r in records:
        VALIDATOR.validate(r)
        assert r["service"] == "shipper" and r["api_key"] == "[REDACTED]"
    assert registry.get_sample_value("bakhmach_obs_log_records_dropped_total", {"reason": "queue_full"}) is None


def test_logstash_down_never_blocks_and_counts_drops(registry):
    import socket
    import time

    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connections are refused
    bakhmach_obs.configure(
        service_name="shipper", registry=registry, log_format="none", logstash_address=f"127.0.0.1:{port}",
        logstash_queue_size=10, traces_exporter="none",
    )  # fmt: skip
    log = logging.getLogger("tests.shipping.down")
    start = time.monotonic()
    for i in range(100):
        log.warning("record %d", i)
    assert time.monotonic() - start < 0.5
    assert bakhmach_obs.shutdown(timeout=0.5) is False  # the queued records could not be delivered
    assert time.monotonic() - start < 2.0

    def dropped(reason):
        return registry.get_sample_value("bakhmach_obs_log_records_dropped_total", {"reason": reason})

    deadline = time.monotonic() + 5
    while dropped("shutdown") != 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert dropped("queue_full") == 90
    assert dropped("shutdown") == 10


# --- records rendered without a LogRecord (the access log's direct path) ------------------------


@contextlib.contextmanager
def bare_root():
    """The root logger without pytest's capture handlers (added per test phase), as in a served application."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = []
    try:
        yield root
    finally:
        root.handlers[:] = saved


def _access_like_record(created: float, msecs: float, extra: dict) -> logging.LogRecord:
    record = logging.LogRecord("bakhmach_obs.access", logging.INFO, __file__, 0, "%s %s %s",
                               ("GET", "/users/{user_id}", 200), None)  # fmt: skip
    record.created, record.msecs = created, msecs
    record.__dict__.update(extra)
    return record


@pytest.mark.parametrize(
    "extra",
    [
        {"http_method": "GET", "http_route": "/users/{user_id}", "http_status": 200, "duration_ms": 1.5,
         "path": "/users/42", "user_agent": "ua/1"},
        {"http_method": "GET", "http_route": "/users/{user_id}", "http_status": 200, "duration_ms": 0.0,
         "path": "/reset/eyJhbGciOiJI.eyJzdWIiOjF9.sgn?sig=abc", "user_agent": "evil\r\n{\"level\":\"CRITICAL\"}\u2028",
         "error": "bad value", "error_type": "builtins.ValueError"},
        {"http_method": "GET", "http_route": "/", "http_status": 200, "duration_ms": 2.0, "path": "/",
         "user_agent": None, "authorization": "Bearer abc"},
    ],
)  # fmt: skip
def test_format_fields_renders_exactly_what_format_renders_for_the_record(extra):
    formatter = JsonFormatter(service="backend")
    tracer = TracerProvider(sampler=ALWAYS_ON).get_tracer("t")
    with (
        bakhmach_obs.correlation_scope("req-1"),
        bakhmach_obs.log_context(tenant="acme", password="hunter2"),
        tracer.start_as_current_span("request"),
    ):
        record = _access_like_record(1_764_201_600.25, 250.0, extra)
        expected = formatter.format(record)
        message = "GET /users/{user_id} 200"
        got = formatter.format_fields(1_764_201_600.25, 250.0, "INFO", "bakhmach_obs.access", message, dict(extra))
    assert got == expected
    assert "hunter2" not in got and "\n" not in got and 'CRITICAL"}' not in got.replace('\\"', "")
    data = json.loads(got)
    VALIDATOR.validate(data)
    assert data["password"] == "[REDACTED]" and data["trace_id"] and data["correlation_id"] == "req-1"


def test_format_fields_never_raises():
    class Unprintable:
        def __str__(self):
            raise RuntimeError("no")

        __repr__ = __str__

    line = JsonFormatter(service="b").format_fields(0.0, 0.0, "INFO", "x", "m", {"v": Unprintable()})
    assert json.loads(line)["logger"] == "x"


def test_sole_json_handler_only_when_nothing_else_would_see_the_record():
    with bare_root() as root:
        _check_sole_json_handler(root)


def _check_sole_json_handler(bare_root: logging.Logger) -> None:
    access = logging.getLogger("bakhmach_obs.access")
    bakhmach_obs.configure(service_name="b", log_format="json", log_stream=io.StringIO())
    (handler,) = bare_root.handlers
    assert sole_json_handler(access, logging.INFO) == (handler, handler.formatter)

    def off(apply, undo):
        apply()
        try:
            return sole_json_handler(access, logging.INFO)
        finally:
            undo()

    passing = logging.Filter()
    extra = logging.NullHandler()
    parent = logging.getLogger("bakhmach_obs")
    assert off(lambda: handler.addFilter(passing), lambda: handler.removeFilter(passing)) is None
    assert off(lambda: access.addFilter(passing), lambda: access.removeFilter(passing)) is None
    assert off(lambda: bare_root.addHandler(extra), lambda: bare_root.removeHandler(extra)) is None
    assert off(lambda: parent.addHandler(extra), lambda: parent.removeHandler(extra)) is None
    assert off(lambda: access.addHandler(extra), lambda: access.removeHandler(extra)) is None
    assert off(lambda: setattr(access, "propagate", False), lambda: setattr(access, "propagate", True)) is None
    assert off(lambda: setattr(access, "disabled", True), lambda: setattr(access, "disabled", False)) is None
    assert off(lambda: handler.setFormatter(ConsoleFormatter()), lambda: handler.setFormatter(JsonFormatter())) is None
    factory = logging.getLogRecordFactory()
    assert off(lambda: logging.setLogRecordFactory(lambda *a, **k: factory(*a, **k)),
               lambda: logging.setLogRecordFactory(factory)) is None  # fmt: skip
    handler.setLevel(logging.ERROR)
    assert sole_json_handler(access, logging.INFO) is None
    assert sole_json_handler(access, logging.ERROR) is not None
    handler.setLevel(logging.NOTSET)

    class Sub(logging.StreamHandler):
        pass

    bare_root.removeHandler(handler)
    sub = Sub(io.StringIO())
    sub.setFormatter(JsonFormatter())
    bare_root.addHandler(sub)
    assert sole_json_handler(access, logging.INFO) is None
    bare_root.removeHandler(sub)


def test_correlation_scope_ends_what_the_unit_of_work_bound():
    with bakhmach_obs.log_context(tenant="acme"):
        with bakhmach_obs.correlation_scope("job-1"):
            bakhmach_obs.bind(user_id="alice")
            assert dict(bakhmach_obs.bound_fields()) == {"tenant": "acme", "user_id": "alice"}
        assert dict(bakhmach_obs.bound_fields()) == {"tenant": "acme"}


# --- values JSON has no type for, keys that are not str, and the schema's typed fields ---------


def _json_line(**extra) -> dict:
    record = logging.LogRecord("shop", logging.INFO, __file__, 1, "m", (), None)
    record.__dict__.update(extra)
    line = JsonFormatter(service="backend").format(record)
    assert "\n" not in line
    data = json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    VALIDATOR.validate(data)
    return data


def test_objects_are_redacted_as_the_encoder_renders_them():
    import dataclasses

    from pydantic import BaseModel

    @dataclasses.dataclass
    class Creds:
        user: str
        password: str

    class Login(BaseModel):
        user: str
        api_key: str

    class Conn:
        def __str__(self):
            return "postgres://app:Sup3rS3cret@db/x Bearer abc.def"

    data = _json_line(creds=Creds("bob", "hunter2"), login=Login(user="bob", api_key="k-123"), conn=Conn(),
                      cause=ValueError("login failed for Bearer tok123"))  # fmt: skip
    text = json.dumps(data)
    for secret in ("hunter2", "k-123", "Sup3rS3cret", "abc.def", "tok123"):
        assert secret not in text
    assert data["creds"] == {"user": "bob", "password": "[REDACTED]"}
    assert data["login"] == {"user": "bob", "api_key": "[REDACTED]"}


def test_enum_keys_never_replace_reserved_fields_nor_escape_the_denylist():
    import enum

    class Key(enum.Enum):
        LEVEL = "level"
        CID = "correlation_id"
        PASSWORD = "password"

    record = logging.LogRecord("shop", logging.INFO, __file__, 1, "m", (), None)
    record.__dict__.update({Key.LEVEL: "CRITICAL", Key.CID: "forged", Key.PASSWORD: "hunter2"})
    record.nested = {Key.PASSWORD: "hunter3"}
    line = JsonFormatter(service="backend").format(record)
    assert line.count('"level"') == 1 and "forged" not in line
    assert "hunter2" not in line and "hunter3" not in line
    assert json.loads(line)["level"] == "INFO"


def test_nan_infinity_and_huge_ints_stay_json_on_the_standard_encoder():
    data = _json_line(ratio=float("nan"), n=2**70, peak=float("inf"), nested={"x": float("-inf")})
    assert data["ratio"] is None and data["n"] == 2**70 and data["peak"] is None and data["nested"] == {"x": None}


def test_a_lone_surrogate_does_not_lose_the_record():
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(service="backend"))
    logger = logging.getLogger("tests.logs.surrogate")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("file %s", b"caf\xff".decode("utf-8", "surrogateescape"))
    finally:
        logger.removeHandler(handler)
    stream.flush()
    (line,) = stream.buffer.getvalue().decode().splitlines()
    assert json.loads(line)["message"] == "file caf\udcff"


def test_an_exception_whose_str_raises_keeps_its_record():
    class Weird(Exception):
        def __str__(self):
            raise RuntimeError("no text")

    try:
        raise Weird
    except Weird:
        record = logging.LogRecord("shop", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    data = json.loads(JsonFormatter(service="backend").format(record))
    VALIDATOR.validate(data)
    assert data["message"] == "failed" and data["error"].endswith("Weird") and "stacktrace" in data


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"user_id": None}, {}),
        ({"user_id": 1.5}, {"user_id": "1.5"}),
        ({"user_id": 42}, {"user_id": 42}),
        ({"duration_ms": float("nan")}, {}),
        ({"duration_ms": -1}, {}),
        ({"duration_ms": "12"}, {}),
        ({"duration_ms": True}, {}),
        ({"duration_ms": 12}, {"duration_ms": 12}),
        ({"error": 500}, {"error": "500"}),
        ({"error_type": "Timeout"}, {"error_type": "Timeout", "error": "Timeout"}),
        ({"error_code": 1.5}, {"error_code": "1.5"}),
        ({"action": ["a"]}, {"action": "['a']"}),
    ],
)
def test_typed_fields_always_match_the_schema(extra, expected):
    data = _json_line(**extra)
    assert {k: data[k] for k in _TYPED_KEYS if k in data} == expected


_TYPED_KEYS = ("user_id", "action", "error", "error_type", "error_code", "duration_ms", "stacktrace")


def test_custom_levels_are_written_as_the_standard_level_at_or_below():
    record = logging.LogRecord("shop", 25, __file__, 1, "m", (), None)
    assert json.loads(JsonFormatter(service="b").format(record))["level"] == "INFO"
    record = logging.LogRecord("shop", 5, __file__, 1, "m", (), None)
    assert json.loads(JsonFormatter(service="b").format(record))["level"] == "DEBUG"


def test_trace_flags_passed_by_the_sdk_must_be_hex():
    data = _json_line(trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331", trace_flags="zz")
    assert data["trace_flags"] == "01"
