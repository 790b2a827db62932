"""Log shipping to Logstash over real TCP: what a server receives, and what happens when it misbehaves.

Every test talks to a real TCP server on 127.0.0.1 (:class:`LineServer`, a stand-in for
Logstash's ``tcp`` input with the ``json_lines`` codec) that records the complete lines it
receives, per connection, plus any trailing fragment a connection ended with. The fault tests use
a port nothing listens on (refused), a server that goes away and comes back on the same port, and
a server that accepts but never reads.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bakhmach_obs.conventions import LOG_DROP_REASONS
from bakhmach_obs.logs import JsonFormatter
from bakhmach_obs.logstash import LogstashHandler, pipeline_path

#: Margin on top of a deadline, for a loaded 2-core CI machine.
MARGIN = 1.0
#: Longest wait for something that happens in a background thread.
SETTLE = 10.0
SERVICE = "logstash-test-service"


class LineServer:
    """A threaded TCP server on 127.0.0.1 that records every complete line it receives.

    ``read=False`` accepts connections but never reads from them, so the sender's socket buffers
    fill up. ``stop()`` closes the listener and every connection (the server "goes away").
    """

    def __init__(self, port: int = 0, *, read: bool = True) -> None:
        self.lines: list[bytes] = []
        self.partials: list[bytes] = []
        self.connections = 0
        self._read = read
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if not read:  # small receive buffers fill sooner (inherited by accepted sockets)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="line-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        buffers: dict[socket.socket, bytearray] = {}
        held: list[socket.socket] = []
        selector.register(self._listener, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select(0.02):
                    sock: Any = key.fileobj
                    if sock is self._listener:
                        conn, _ = self._listener.accept()
                        with self._cond:
                            self.connections += 1
                            self._cond.notify_all()
                        if self._read:
                            conn.setblocking(False)
                            selector.register(conn, selectors.EVENT_READ)
                            buffers[conn] = bytearray()
                        else:
                            held.append(conn)
                        continue
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    buffer = buffers[sock]
                    if not data:
                        selector.unregister(sock)
                        del buffers[sock]
                        sock.close()
                        if buffer:
                            self.partials.append(bytes(buffer))
                        continue
                    buffer += data
                    *complete, rest = buffer.split(b"\n")
                    buffers[sock] = bytearray(rest)
                    if complete:
                        with self._cond:
                            self.lines.extend(bytes(line) for line in complete)
                            self._cond.notify_all()
        finally:
            for conn, buffer in buffers.items():
                if buffer:
                    self.partials.append(bytes(buffer))
                conn.close()
            for conn in held:
                conn.close()
            selector.close()
            self._listener.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(SETTLE)
        assert not self._thread.is_alive()

    def wait_lines(self, count: int, timeout: float = SETTLE) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.lines) >= count, timeout)

    def wait_connections(self, count: int, timeout: float = SETTLE) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.connections >= count, timeout)

    def records(self) -> list[dict[str, Any]]:
        with self._cond:
            return [json.loads(line) for line in self.lines]


class Drops:
    """An ``on_drop`` callback that remembers every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def __call__(self, reason: str, count: int) -> None:
        with self._lock:
            self.calls.append((reason, count))

    def total(self, reason: str) -> int:
        with self._lock:
            return sum(n for r, n in self.calls if r == reason)


def refused_port() -> int:
    """A loopback port nothing listens on (bound once, never listened, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = SETTLE) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def uids(records: list[dict[str, Any]]) -> list[int]:
    return [r["uid"] for r in records]


Ship = Callable[..., tuple[logging.Logger, LogstashHandler, Drops]]


@pytest.fixture
def ship() -> Iterator[Ship]:
    """Make a handler for a port and a fresh logger (propagate=False) that uses only it."""
    made: list[tuple[logging.Logger, LogstashHandler]] = []

    def make(port: int, **kwargs: Any) -> tuple[logging.Logger, LogstashHandler, Drops]:
        drops = Drops()
        kwargs.setdefault("on_drop", drops)
        kwargs.setdefault("formatter", JsonFormatter(service=SERVICE))
        kwargs.setdefault("backoff_initial", 0.01)
        kwargs.setdefault("backoff_max", 0.05)
        handler = LogstashHandler("127.0.0.1", port, **kwargs)
        logger = logging.getLogger(f"shop.logstash-test.{uuid.uuid4().hex[:8]}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        made.append((logger, handler))
        return logger, handler, drops

    yield make
    for logger, handler in made:
        logger.removeHandler(handler)
        handler.close(timeout=1.0)


@pytest.fixture
def server() -> Iterator[LineServer]:
    srv = LineServer()
    yield srv
    srv.stop()


# --- what arrives -------------------------------------------------------------------------------
def test_every_record_arrives_once_as_one_json_line_with_its_fields(ship, server, capsys):
    logger, handler, drops = ship(server.port)
    logger.info("paid %s", "order-1", extra={"uid": 0, "user_id": "user-789", "amount": 12.5})
    logger.warning("two\nlines\r\nand a tab\t", extra={"uid": 1})
    logger.info("naïve ✓ 日本語", extra={"uid": 2})
    try:
        raise ValueError("card declined")
    except ValueError:
        logger.exception("payment failed", extra={"uid": 3})
    for i in range(4, 100):
        logger.debug("bulk %d", i, extra={"uid": i})

    assert handler.flush(SETTLE)
    assert server.wait_lines(100)
    records = server.records()
    assert uids(records) == list(range(100))  # each once, in order
    first, multiline, unicode, failed = records[:4]
    assert (first["service"], first["level"], first["logger"]) == (SERVICE, "INFO", logger.name)
    assert (first["message"], first["user_id"], first["amount"]) == ("paid order-1", "user-789", 12.5)
    assert first["timestamp"].endswith("Z")
    assert multiline["message"] == "two\nlines\r\nand a tab\t"
    assert unicode["message"] == "naïve ✓ 日本語"
    assert failed["error_type"] == "ValueError"
    assert "card declined" in failed["stacktrace"]
    assert server.partials == []
    assert handler.written == 100
    assert server.connections == 1
    assert drops.calls == []

    handler.close(timeout=2.0)
    assert handler.clean_shutdown
    handler.close()  # idempotent
    logger.info("after close", extra={"uid": 100})  # counted, never raised
    assert drops.calls == [("shutdown", 1)]
    assert capsys.readouterr().err == ""


def test_a_formatter_that_emits_raw_newlines_still_gives_one_line_per_record(ship, server):
    logger, handler, _ = ship(server.port, formatter=logging.Formatter('{\n  "uid": %(uid)d,\n  "m": "%(message)s"\n}'))
    logger.info("pretty", extra={"uid": 7})
    assert handler.flush(SETTLE)
    assert server.wait_lines(1)
    assert server.records() == [{"uid": 7, "m": "pretty"}]


def test_a_record_whose_formatting_raises_is_counted_as_encoding_and_never_raises(ship, server, capsys):
    class Picky(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            if getattr(record, "boom", False):
                raise RuntimeError("cannot render this record")
            return super().format(record)

    # (JsonFormatter itself never raises: it renders a placeholder record instead.)
    logger, handler, drops = ship(server.port, formatter=Picky('{"uid": %(uid)d, "message": "%(message)s"}'))
    logger.info("boom", extra={"boom": True, "uid": 0})
    logger.info("%d items", "many", extra={"uid": 1})  # the message itself cannot be built
    logger.info("fine", extra={"uid": 2})

    assert drops.calls == [("encoding", 1), ("encoding", 1)]
    assert handler.flush(SETTLE)
    assert server.wait_lines(1)
    assert uids(server.records()) == [2]
    assert capsys.readouterr().err == ""  # logging's "--- Logging error ---" never printed


# --- Logstash down, back, slow ------------------------------------------------------------------
def test_logging_never_blocks_while_logstash_is_down_and_overflow_is_counted(ship):
    errors: list[BaseException] = []
    holder: list[logging.Logger] = []

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        holder[0].error("logstash unreachable: %s", exc)  # logs through the handler it reports on

    logger, handler, drops = ship(refused_port(), queue_size=50, on_error=on_error)
    holder.append(logger)
    handler.format(logging.makeLogRecord({"msg": "warm-up"}))  # first use builds the default runtime
    started = time.perf_counter()
    for i in range(200):
        logger.info("order %d", i, extra={"uid": i})
    elapsed = time.perf_counter() - started

    assert elapsed < 0.2, f"200 records took {elapsed:.3f} s with Logstash down"
    assert drops.total("queue_full") == 150
    assert all(call == ("queue_full", 1) for call in drops.calls)
    assert wait_until(lambda: len(errors) >= 2)
    assert all(isinstance(e, ConnectionRefusedError) for e in errors)
    # The worker's own "unreachable" records were not queued: nothing more was dropped.
    assert drops.total("queue_full") == 150
    assert not handler.flush(0.05)

    started = time.perf_counter()
    handler.close(timeout=0.3)
    assert time.perf_counter() - started < 0.3 + MARGIN
    assert drops.total("shutdown") == 50
    assert not handler.clean_shutdown


def test_records_survive_an_outage_and_none_is_written_twice(ship):
    first = LineServer()
    errors: list[BaseException] = []
    logger, handler, drops = ship(first.port, on_error=errors.append)
    for i in range(10):
        logger.info("before", extra={"uid": i})
    assert first.wait_lines(10)

    first.stop()  # Logstash goes away
    for i in range(10, 20):
        logger.info("during", extra={"uid": i})
    assert wait_until(lambda: any(isinstance(e, ConnectionRefusedError) for e in errors))
    assert not handler.flush(0.05)

    second = LineServer(first.port)  # ...and comes back on the same port
    try:
        assert second.wait_lines(10)
        for i in range(20, 30):
            logger.info("after", extra={"uid": i})
        assert handler.flush(SETTLE)
        assert second.wait_lines(20)
        time.sleep(0.1)  # a duplicate would have time to arrive
        received = uids(first.records()) + uids(second.records())
    finally:
        second.stop()

    assert received == list(range(30))  # every record once, in order
    assert Counter(received).most_common(1)[0][1] == 1
    assert first.partials == second.partials == []
    assert handler.written == 30
    assert drops.calls == []


@pytest.mark.parametrize(
    ("overflow", "survivors"),
    [("drop_oldest", list(range(5, 10))), ("drop_newest", list(range(5)))],
)
def test_overflow_policy_decides_which_records_survive(ship, overflow, survivors):
    port = refused_port()
    logger, handler, drops = ship(port, queue_size=5, overflow=overflow)
    for i in range(10):
        logger.info("queued while down", extra={"uid": i})
    assert drops.calls == [("queue_full", 1)] * 5

    srv = LineServer(port)
    try:
        assert handler.flush(SETTLE)
        assert srv.wait_lines(5)
        time.sleep(0.1)
        assert uids(srv.records()) == survivors
    finally:
        srv.stop()
    assert handler.written == 5


def test_close_returns_by_its_deadline_when_logstash_accepts_but_never_reads(ship):
    srv = LineServer(read=False)
    try:
        logger, handler, drops = ship(srv.port, queue_size=1000, formatter=logging.Formatter('{"pad": "%(message)s"}'))
        pad = "x" * 65536
        total = 300  # about 20 MB: far more than the loopback socket buffers hold
        started = time.perf_counter()
        for _ in range(total):
            logger.info(pad)
        assert time.perf_counter() - started < 0.5 + MARGIN  # logging stays non-blocking
        assert srv.wait_connections(1)
        assert not handler.flush(0.2)

        started = time.perf_counter()
        handler.close(timeout=0.5)
        elapsed = time.perf_counter() - started
        assert elapsed < 0.5 + MARGIN, f"close(timeout=0.5) took {elapsed:.2f} s"

        left = drops.total("shutdown")
        assert left > 0
        assert handler.written + left == total  # each record written or counted, never both
        assert drops.total("queue_full") == 0
        assert not handler.clean_shutdown
        handler._worker.join(SETTLE)  # the worker gives up its blocked send promptly
        assert not handler._worker.is_alive()
    finally:
        srv.stop()


# --- lifecycle ----------------------------------------------------------------------------------
def test_logging_shutdown_drains_even_when_on_error_logs_through_the_handler(ship):
    """logging.shutdown() holds the handler's lock around flush() and close(); the worker's
    on_error logging through the same handler meanwhile must not wait for that lock."""
    port = refused_port()
    errors: list[BaseException] = []
    holder: list[logging.Logger] = []

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        holder[0].error("logstash unreachable: %s", exc)

    logger, handler, drops = ship(port, on_error=on_error)
    holder.append(logger)
    for i in range(5):
        logger.info("queued while down", extra={"uid": i})
    assert wait_until(lambda: len(errors) >= 1)

    servers: list[LineServer] = []
    comes_back = threading.Timer(0.3, lambda: servers.append(LineServer(port)))
    comes_back.start()
    try:
        started = time.perf_counter()
        logging.shutdown([weakref.ref(handler)])  # what the interpreter does at exit
        elapsed = time.perf_counter() - started
        comes_back.join()
        assert servers[0].wait_lines(5)
        assert uids(servers[0].records()) == list(range(5))
    finally:
        comes_back.cancel()
        comes_back.join()
        for srv in servers:
            srv.stop()
    assert handler.clean_shutdown
    assert elapsed < 0.3 + 2 * MARGIN
    assert drops.calls == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() of a multi-threaded process
def test_a_forked_child_ships_through_its_own_worker_and_connection(ship, server):
    logger, handler, _ = ship(server.port, formatter=logging.Formatter('{"uid": "%(uid)s"}'))
    logger.info("parent", extra={"uid": "parent-1"})
    assert handler.flush(SETTLE)
    assert server.wait_lines(1)

    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 2
        try:
            logger.info("child", extra={"uid": "child"})
            code = 0 if handler.flush(5.0) else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + SETTLE
    status = None
    while status is None and time.monotonic() < deadline:
        done, raw = os.waitpid(pid, os.WNOHANG)
        status = os.waitstatus_to_exitcode(raw) if done else None
        time.sleep(0.01)
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert status == 0

    logger.info("parent again", extra={"uid": "parent-2"})
    assert handler.flush(SETTLE)
    assert server.wait_lines(3)
    assert sorted(uids(server.records())) == ["child", "parent-1", "parent-2"]
    assert server.connections == 2  # the child opened its own connection


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 0},
        {"port": 70000},
        {"host": ""},
        {"queue_size": 0},
        {"overflow": "block"},
        {"connect_timeout": 0},
        {"backoff_initial": float("nan")},
        {"backoff_initial": 2.0, "backoff_max": 1.0},
    ],
)
def test_invalid_arguments_fail_at_construction(kwargs):
    args: dict[str, Any] = {"host": "127.0.0.1", "port": 5000, **kwargs}
    with pytest.raises(ValueError):
        LogstashHandler(args.pop("host"), args.pop("port"), **args)


def test_drop_reasons_are_the_conventions_ones():
    assert LOG_DROP_REASONS == ("queue_full", "encoding", "shutdown")


def test_pipeline_path_is_the_shipped_logstash_pipeline():
    path = pipeline_path()
    assert path.is_file()
    assert path.parent.name == "assets"
    text = path.read_text(encoding="utf-8")
    for expected in (
        "port => 5000",
        "codec => json_lines",
        'match => ["timestamp", "ISO8601"]',
        'hosts => ["elasticsearch:9200"]',
        'index => "bakhmach-%{+YYYY.MM.dd}"',
    ):
        assert expected in text
    config = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("grok" in line for line in config)  # records are JSON already
