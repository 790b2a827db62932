"""Fuzzing the health probes: any request, any failing check, never a 500 and never a leaked secret.

The probes are driven through httpx's ASGI transport, through raw ASGI scopes (bytes httpx would
refuse to send) and through the WSGI app called with a bare environ. Every check that fails does so
with an exception whose message holds a connection string with a password, and whose class name is
distinctive: neither may appear in any response body or header.
"""

from __future__ import annotations

import asyncio
import errno
import json
import re
from importlib import resources
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from bakhmach_obs.health import CheckResult, HealthChecks

PROPERTY = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SECRET = "postgresql://user:SECRET@db.internal:5432/app"
TOKEN = "verbose-token-1"
MARKERS = (b"SECRET", b"db.internal", b"LeakyDriverError", b"Traceback", b"SecretRepr")

SEED_SCHEMA = json.loads(resources.files("bakhmach_obs").joinpath("assets/health_seed.schema.json").read_text())
IETF_SCHEMA = json.loads(resources.files("bakhmach_obs").joinpath("assets/health_json.schema.json").read_text())


class LeakyDriverError(RuntimeError):
    """A driver error whose message carries the DSN, password included."""


class SecretRepr:
    def __repr__(self) -> str:
        return f"SecretRepr({SECRET})"


def _raise_sync() -> bool:
    raise LeakyDriverError(f"could not connect to {SECRET}")


async def _raise_async() -> bool:
    raise ConnectionRefusedError(errno.ECONNREFUSED, f"refused: {SECRET}")


def _raise_chained() -> bool:
    try:
        raise KeyError(SECRET)
    except KeyError as exc:
        raise OSError(errno.EHOSTUNREACH, f"no route to {SECRET}") from exc


def _odd_value() -> Any:
    return SecretRepr()  # not a valid check answer: a failure, never its repr


def _warn() -> CheckResult:
    return CheckResult("warn", observed_value=0.93, observed_unit="ratio", measurement="utilization")


def _health() -> HealthChecks:
    # results cached for the whole run: this fuzzes requests; the next-but-last test fuzzes check runs
    health = HealthChecks(deadline=0.5, timeout=0.3, cache_interval=3600.0, verbose=TOKEN, registry=CollectorRegistry())
    health.add("database", _raise_sync)
    health.add("cache", _raise_async, critical=False)
    health.add("network", _raise_chained, critical=False)
    health.add("odd", _odd_value, critical=False)
    health.add("disk", _warn, critical=False)
    health.add("migrations", _raise_sync, startup=True)
    return health


HEALTH = _health()
ASGI = HEALTH.asgi_app()
WSGI = HEALTH.wsgi_app()
# what each probe answers with the checks above: live always passes, ready and startup fail
EXPECTED = {"live": 200, "ready": 503, "startup": 503}
PROBE_PATH = re.compile(r"^(?:/health)?/(live|ready|startup)/*$")

# --- strategies --------------------------------------------------------------------------------------------

PATHS = st.sampled_from(
    ["/live", "/ready", "/startup", "/health/ready", "/health/live/", "/ready//", "/READY", "/ready%20", "/", "",
     "/health", "/health/", "/health/health/ready", "/ready/x", "//ready", "/ready\x00", "/réady", "/../ready"]
) | st.text(max_size=40)  # fmt: skip
FORMAT_VALUES = ["health+json", "health%2Bjson", "health json", "ietf", "IETF", "application/health%2Bjson", "json"]
QUERY_PART = st.one_of(
    st.tuples(st.sampled_from(["format", "FORMAT", " format", "verbose", "Verbose"]),
              st.sampled_from([*FORMAT_VALUES, "", "0", "false", "no", "off", "1", "yes", "%zz", "%", "%ff%fe"])),
    st.tuples(st.text(max_size=10), st.text(max_size=10)).map(lambda kv: (quote(kv[0]), quote(kv[1]))),
    st.tuples(st.text(max_size=10), st.text(max_size=10)),
).map(lambda kv: f"{kv[0]}={kv[1]}" if kv[1] or kv[0] else "")  # fmt: skip
QUERIES = st.lists(QUERY_PART, max_size=5).map("&".join)
ACCEPTS = st.sampled_from(
    ["", "application/health+json", "application/health+json;q=0", "application/health+json; q=0.5", "*/*",
     "application/json", "text/html, application/health+json;q=0.9", "APPLICATION/HEALTH+JSON", ";;;,,,", "a" * 5000]
) | st.text(max_size=60)  # fmt: skip
AUTHORIZATIONS = st.sampled_from(["", f"Bearer {TOKEN}", f"bearer  {TOKEN} ", f"Bearer {TOKEN}x", "Basic Zm9vOmJhcg==",
                                  "Bearer", "Bearer ", TOKEN]) | st.text(max_size=40)  # fmt: skip
METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get", "PATCH", "TRACE", "BREW"])
PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
RAW = st.binary(max_size=300) | st.sampled_from([b"\xff" * 20000, b"\x00\r\n", "é".encode(), "Bearer é".encode()])

# --- checks on one response --------------------------------------------------------------------------------


def _check_response(
    path: str, method: str, status: int, headers: dict[str, str], body: bytes, authorized: bool
) -> None:
    for marker in MARKERS:
        assert marker not in body, (marker, body[:300])
        assert all(marker.decode() not in f"{k}: {v}" for k, v in headers.items())
    match = PROBE_PATH.match(path)
    if match is None:
        assert status == 404, (path, status)
        return
    if method not in ("GET", "HEAD"):
        assert status == 405 and headers["allow"] == "GET, HEAD"
        return
    probe = match.group(1)
    assert status == EXPECTED[probe], (path, status, body)
    assert headers["cache-control"] == "no-store"
    if method == "HEAD":
        assert body == b""
        return
    assert int(headers["content-length"]) == len(body)
    data = json.loads(body)
    if headers["content-type"] == "application/health+json":
        jsonschema.validate(data, IETF_SCHEMA)
        assert data["status"] == ("pass" if probe == "live" else "fail")
        for entries in data["checks"].values():
            assert all(
                e.get("output", "connected") in ("connected", "disconnected", "error", "timeout") for e in entries
            )
        return
    assert headers["content-type"] == "application/json"
    if probe == "live":
        assert data["status"] == "alive"
        return
    jsonschema.validate(data, SEED_SCHEMA)
    assert set(data["services"].values()) <= {"connected", "disconnected", "error", "timeout"}
    if probe == "ready":
        assert data["services"]["database"] == "error" and data["services"]["disk"] == "connected"
        assert data["services"]["cache"] == "disconnected" and data["services"]["network"] == "disconnected"
        assert data["services"]["odd"] == "error"
    assert "details" not in data or authorized  # verbose only with the token


def _authorized(authorization: str) -> bool:
    scheme, _, token = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and token.strip() == TOKEN


# --- ASGI through httpx ------------------------------------------------------------------------------------


async def _httpx(method: str, url: str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ASGI), base_url="http://app") as client:
        return await client.request(method, url, headers=headers)


@PROPERTY
@given(path=PATHS, query=QUERIES, method=METHODS, accept=PRINTABLE | ACCEPTS.filter(str.isprintable),
       authorization=AUTHORIZATIONS.filter(str.isprintable), extra=PRINTABLE)  # fmt: skip
def test_any_request_through_httpx_gets_a_documented_answer_and_no_secret(path, query, method, accept, authorization,
                                                                         extra):  # fmt: skip
    url = quote(path, safe="/%") + ("?" + quote(query, safe="=&%+;,/") if query else "")  # httpx refuses raw controls
    headers = {"accept": accept, "authorization": authorization, "x-junk": extra}
    headers = {k: v for k, v in headers.items() if v.isascii() and v == v.strip()}  # what httpx sends as-is
    response = asyncio.run(_httpx(method, url, headers))
    sent_path = response.request.url.path
    _check_response(sent_path, method.upper(), response.status_code, dict(response.headers), response.content,
                    _authorized(headers.get("authorization", "")))  # fmt: skip


# --- raw ASGI scopes: bytes httpx would not send ----------------------------------------------------------


async def _asgi(scope: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await ASGI(scope, receive, send)
    start, body = sent
    assert start["type"] == "http.response.start" and body["type"] == "http.response.body"
    headers = {}
    for key, value in start["headers"]:
        assert isinstance(key, bytes) and isinstance(value, bytes)
        headers[key.decode("latin-1")] = value.decode("latin-1")
    return start["status"], headers, body["body"]


@PROPERTY
@given(path=PATHS, root=st.sampled_from(["", "/health", "/x"]), query=st.binary(max_size=200) | QUERIES.map(str.encode),
       method=METHODS, accept=RAW | ACCEPTS.map(str.encode), authorization=RAW | AUTHORIZATIONS.map(str.encode),
       junk=st.lists(st.tuples(RAW, RAW), max_size=4))  # fmt: skip
def test_any_raw_asgi_scope_gets_a_documented_answer_and_no_secret(path, root, query, method, accept, authorization,
                                                                  junk):  # fmt: skip
    headers = [(b"accept", accept), (b"Authorization", authorization), *junk]
    scope = {"type": "http", "method": method, "path": root + path, "root_path": root, "query_string": query,
             "headers": headers}  # fmt: skip
    status, response_headers, body = asyncio.run(_asgi(scope))
    # the app reads the last Authorization header it was given (headers are folded into a dict)
    last = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
    _check_response(path, method, status, response_headers, body, _authorized(last.get("authorization", "")))


# --- WSGI ----------------------------------------------------------------------------------------------------

LATIN1 = st.text(st.characters(max_codepoint=255), max_size=100)


def _latin1(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """PEP 3333: environ values are native strings holding latin-1 (what every WSGI server passes)."""
    return strategy.filter(lambda v: all(ord(ch) < 256 for ch in v)) | LATIN1


@PROPERTY
@given(path=_latin1(PATHS), query=_latin1(QUERIES), method=METHODS | LATIN1, accept=st.none() | _latin1(ACCEPTS),
       authorization=st.none() | _latin1(AUTHORIZATIONS))  # fmt: skip
def test_the_wsgi_app_answers_any_environ_without_a_secret(path, query, method, accept, authorization):
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query}
    for key, value in (("HTTP_ACCEPT", accept), ("HTTP_AUTHORIZATION", authorization)):
        if value is not None:  # PEP 3333: latin-1 native strings (LATIN1 and the ASCII lists only)
            environ[key] = value
    started: list[tuple[str, list[tuple[str, str]]]] = []
    body = b"".join(WSGI(environ, lambda status, headers, exc_info=None: started.append((status, headers))))
    [(status_line, headers)] = started
    assert re.fullmatch(r"(200 OK|404 Not Found|405 Method Not Allowed|503 Service Unavailable)", status_line)
    for key, value in headers:  # PEP 3333: native strings, latin-1
        key.encode("latin-1"), value.encode("latin-1")
    folded = {k.lower(): v for k, v in headers}
    _check_response(
        path, method, int(status_line[:3]), folded, body, _authorized(environ.get("HTTP_AUTHORIZATION", ""))
    )


def test_a_bare_environ_is_a_404_and_a_probe_with_nothing_else_answers():
    started: list[str] = []
    assert WSGI({}, lambda status, headers, exc_info=None: started.append(status)) == [b"not found\n"]
    body = b"".join(WSGI({"PATH_INFO": "/ready"}, lambda status, headers, exc_info=None: started.append(status)))
    assert started == ["404 Not Found", "503 Service Unavailable"]
    assert json.loads(body)["services"]["database"] == "error"


# --- any failing check: its state, never its text ---------------------------------------------------------

EXCEPTIONS = st.sampled_from([
    LeakyDriverError, ValueError, RuntimeError, KeyError, TypeError, ConnectionError, ConnectionResetError,
    TimeoutError, OSError, PermissionError, AssertionError, NotImplementedError, ZeroDivisionError, UnicodeError,
])  # fmt: skip
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.just(SecretRepr()),
    st.builds(
        CheckResult,
        status=st.sampled_from(["pass", "warn", "fail", "FAIL", "", SECRET]),
        observed_value=st.none() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=5)
        | st.just(SecretRepr()),
        observed_unit=st.none() | st.sampled_from(["ms", "bytes", ""]),
        measurement=st.none() | st.sampled_from(["utilization", "responseTime", ""]),
        state=st.none() | st.sampled_from(["connected", "disconnected", "error", "timeout", "bogus", SECRET]),
    ),
)  # fmt: skip


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(behaviours=st.lists(st.tuples(st.booleans(), EXCEPTIONS | ANY_VALUE, st.booleans()), min_size=1, max_size=5),
       ietf=st.booleans(), verbose=st.booleans())  # fmt: skip
def test_whatever_the_checks_raise_or_return_the_body_is_json_without_their_text(behaviours, ietf, verbose):
    health = HealthChecks(deadline=0.5, timeout=0.3, cache_interval=0.0, verbose=True, registry=CollectorRegistry())
    expect_fail = False
    for i, (is_async, behaviour, critical) in enumerate(behaviours):
        raises = isinstance(behaviour, type) and issubclass(behaviour, BaseException)

        def sync(b: Any = behaviour, r: bool = raises) -> Any:
            if r:
                raise b(f"{SECRET} in {b.__name__}")
            return b

        async def asynchronous(b: Any = behaviour, r: bool = raises) -> Any:
            return sync(b, r)

        health.add(f"check{i}", asynchronous if is_async else sync, critical=critical)
        answer_ok = isinstance(behaviour, CheckResult) and behaviour.status in ("pass", "warn")
        passes = not raises and (behaviour is True or behaviour is None or answer_ok)
        expect_fail = expect_fail or (critical and not passes)
    app = health.wsgi_app()
    query = "&".join([*(["format=health+json"] if ietf else []), *(["verbose=1"] if verbose else [])])
    started: list[str] = []
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/ready", "QUERY_STRING": query},
                        lambda status, headers, exc_info=None: started.append(status)))  # fmt: skip
    health.close()
    assert started == ["503 Service Unavailable" if expect_fail else "200 OK"]
    for marker in MARKERS:
        assert marker not in body, (marker, body[:300])
    data = json.loads(body)  # strict JSON: no NaN, no repr
    jsonschema.validate(data, IETF_SCHEMA if ietf else SEED_SCHEMA)
    json.dumps(data, allow_nan=False)
