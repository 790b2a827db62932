"""Ship log records to Logstash over TCP without ever blocking the application.

:class:`LogstashHandler` is a :class:`logging.Handler` for the ``tcp`` input of the pipeline in
``assets/logstash.conf`` (:func:`pipeline_path`). ``emit()`` formats the record (by default with
:class:`bakhmach_obs.logs.JsonFormatter`) into one UTF-8 line ending in ``\\n`` and appends it to a
bounded in-memory queue; it never does I/O, never waits for the network and never raises. A daemon
worker thread connects, writes the queued lines in batches and reconnects with capped exponential
backoff and full jitter when Logstash is down or goes away. While it is away, records wait in the
queue; once the queue is full, the overflow policy discards one record per new record
(``drop_oldest``, the default, or ``drop_newest``). Every discarded record is reported to
``on_drop(reason, count)`` with a reason of
:data:`bakhmach_obs.conventions.LOG_DROP_REASONS`: ``queue_full``, ``encoding`` (formatting
raised) or ``shutdown`` (still unsent when :meth:`~LogstashHandler.close`'s deadline passed).

Delivery: at most once per complete record, in order.
    A line leaves the queue only when every byte of it has been handed to the kernel on a live
    connection; it is never written again after that. The worker sends with ``send()`` (not
    ``sendall()``), so it knows exactly how many bytes were accepted. When a connection fails in
    the middle of a batch, the lines that were fully written stay written, and the rest, including
    a line that was only partly written, are sent whole, in order, on the next connection. A complete
    record is therefore never written twice. What TCP cannot tell us is whether the bytes the
    kernel accepted just before a connection died reached Logstash: those records can be lost
    (the usual at-most-once risk of plain TCP shipping; Logstash sends no acknowledgements). Two
    things narrow that window: before each batch the worker checks whether Logstash has closed
    the connection (a restart closes it cleanly), and a connection that accepts nothing for
    ``stall_timeout`` seconds is abandoned. When a line was cut mid-way, Logstash may see the
    truncated fragment when that connection closes; ``json_lines`` turns it into one event tagged
    ``_jsonparsefailure``, and the full record still arrives once on the next connection.

Memory: at most ``queue_size`` lines wait in the queue, plus the one batch (at most 1000 lines,
256 KiB unless a single line is larger) that the worker is writing. Records logged from the worker
thread itself, for example by an ``on_error`` callback that logs, and records from the
``bakhmach_obs.logstash`` logger are never shipped, so the handler cannot feed on itself.

Example:
    >>> from bakhmach_obs.logstash import LogstashHandler, pipeline_path
    >>> handler = LogstashHandler("logstash", 5000, queue_size=1000, overflow="drop_newest")
    >>> handler.address
    ('logstash', 5000)
    >>> handler.close()  # nothing was queued: returns at once
    >>> "codec => json_lines" in pipeline_path().read_text(encoding="utf-8")
    True
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import itertools
import logging
import math
import os
import random
import socket
import threading
import time
import weakref
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from .context import SUPPRESSED
from .conventions import LOG_DROP_REASONS
from .logs import JsonFormatter

__all__ = ["DEFAULT_TIMEOUT", "OVERFLOW_POLICIES", "LogstashHandler", "pipeline_path"]

#: What to discard when the queue is full: the oldest queued record, or the one being logged.
OVERFLOW_POLICIES = ("drop_oldest", "drop_newest")
#: Seconds ``flush()`` (without a timeout) and ``close()`` wait at most.
DEFAULT_TIMEOUT = 5.0

_QUEUE_FULL, _ENCODING, _SHUTDOWN = LOG_DROP_REASONS
_LOGGER_NAME = "bakhmach_obs.logstash"
#: Longest a single socket call blocks the worker, so it notices close() and its deadline.
_IO_TIMEOUT = 0.25
#: Longest the idle worker sleeps before looking at the queue again (emit() wakes it earlier).
_IDLE_WAIT = 1.0
_BATCH_LINES = 1000
_BATCH_BYTES = 256 * 1024
#: True while this handler runs an on_drop callback: a callback that logs must not re-enter emit().
_IN_CALLBACK: contextvars.ContextVar[bool] = contextvars.ContextVar("bakhmach_obs_logstash_callback", default=False)


def pipeline_path() -> Path:
    """The Logstash pipeline shipped with the package (``bakhmach_obs/assets/logstash.conf``).

    It listens on TCP port 5000 with the ``json_lines`` codec, sets ``@timestamp`` from the
    records' ``timestamp`` and writes to Elasticsearch at ``elasticsearch:9200``, one
    ``bakhmach-YYYY.MM.dd`` index per day. Copy it next to your Logstash, or mount it as
    ``/usr/share/logstash/pipeline/logstash.conf`` in the official image.

    Example:
        >>> pipeline_path().name
        'logstash.conf'
    """
    resource = resources.files("bakhmach_obs") / "assets" / "logstash.conf"
    if isinstance(resource, Path):
        return resource
    return Path(__file__).resolve().parent / "assets" / "logstash.conf"  # pragma: no cover - zipped install


class LogstashHandler(logging.Handler):
    """Send each record as one JSON line to a Logstash ``tcp`` input, from a worker thread.

    Args:
        host: Logstash's host name or address.
        port: the ``tcp`` input's port (5000 in the shipped pipeline).
        formatter: renders a record as one line (default :class:`~bakhmach_obs.logs.JsonFormatter`).
            Raw CR and LF in its output are replaced by spaces, which keeps valid JSON valid.
        queue_size: records held while Logstash is slow or away.
        overflow: ``"drop_oldest"`` (keep the newest records) or ``"drop_newest"`` (keep the
            oldest) when the queue is full.
        connect_timeout: seconds one connection attempt may take.
        backoff_initial: upper bound of the first delay before reconnecting, in seconds; it
            doubles with each consecutive failure up to ``backoff_max``, and the actual delay is
            drawn uniformly between 0 and that bound (full jitter).
        backoff_max: cap of the reconnection delay, in seconds.
        stall_timeout: a connection that accepts no byte for this many seconds while lines wait
            is abandoned and re-opened (a half-open connection or a wedged Logstash).
        on_drop: called with ``(reason, count)`` for records that will never be sent; reasons are
            ``queue_full``, ``encoding`` and ``shutdown``. Called on the logging thread (or the
            one calling :meth:`close`); it must be quick and must not raise.
        on_error: called on the worker thread with each connection or write failure.

    Raises:
        ValueError: an argument is out of range.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        formatter: logging.Formatter | None = None,
        queue_size: int = 10000,
        overflow: str = "drop_oldest",
        connect_timeout: float = 2.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 30.0,
        stall_timeout: float = 30.0,
        on_drop: Callable[[str, int], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, not {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be an integer in 1..65535, not {port!r}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive integer, not {queue_size!r}")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, not {overflow!r}")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("backoff_initial", backoff_initial),
            ("backoff_max", backoff_max),
            ("stall_timeout", stall_timeout),
        ):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if backoff_max < backoff_initial:
            raise ValueError(f"backoff_max ({backoff_max}) must not be below backoff_initial ({backoff_initial})")
        super().__init__()
        self.setFormatter(formatter if formatter is not None else JsonFormatter())
        #: ``(host, port)`` the worker connects to.
        self.address: tuple[str, int] = (host, port)
        #: Python 3.12+ ``logging.shutdown()`` then skips ``flush()``: ``close()`` flushes itself.
        self.flushOnClose = False
        #: True once ``close()`` wrote everything queued and stopped the worker within its deadline.
        self.clean_shutdown = False
        self._max = queue_size
        self._drop_oldest = overflow == "drop_oldest"
        self._connect_timeout = float(connect_timeout)
        self._backoff_initial = float(backoff_initial)
        self._backoff_max = float(backoff_max)
        self._stall_timeout = float(stall_timeout)
        self._on_drop = on_drop
        self._on_error = on_error
        self._closed = False
        self._sock: socket.socket | None = None
        self._init_state()
        self._start_worker()
        ref = weakref.WeakMethod(self._after_fork_in_child)
        os.register_at_fork(after_in_child=lambda: (m := ref()) and m())

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        #: Encoded lines waiting for the worker.
        self._queue: collections.deque[bytes] = collections.deque()
        #: Lines the worker took from the queue and has not fully written yet (in order).
        self._pending: list[bytes] = []
        #: Lines ever queued, and lines that left for good (written or dropped): flush() compares them.
        self._accepted = 0
        self._finished = 0
        self._written = 0
        self._flush_waiters = 0
        self._failures = 0
        self._wake = threading.Event()
        self._stop = threading.Event()  # close() started: no more idling, one backoff cut short
        self._abort = threading.Event()  # close()'s deadline passed: give up at once
        self._deadline = math.inf
        self._worker_ident: int | None = None

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._run, name="bakhmach-obs-logstash", daemon=True)
        self._worker.start()
        self._worker_ident = self._worker.ident

    def _after_fork_in_child(self) -> None:
        """Start over in a forked child: fresh locks, an empty queue and a worker of its own.

        The parent's queued records stay the parent's to send. The child's copy of the parent's
        socket is closed, which leaves the parent's connection untouched.
        """
        inherited = self._sock
        self._sock = None
        self._init_state()
        if inherited is not None:
            with contextlib.suppress(OSError):
                inherited.close()
        if not self._closed:
            self._start_worker()

    # --- hot path (the application's threads) -----------------------------------------------------
    def handle(self, record: logging.LogRecord) -> Any:
        """Filter, then :meth:`emit`, without taking the handler's I/O lock.

        ``emit()`` is thread-safe on its own and only appends to the queue. Not taking
        ``self.lock`` also means that a record logged on the worker thread (by ``on_error``) can
        never wait for a thread that holds that lock while it waits for the worker, such as
        ``logging.shutdown()`` calling :meth:`close`.
        """
        if threading.get_ident() == self._worker_ident or _IN_CALLBACK.get():
            return False
        result: Any = self.filter(record)
        if isinstance(result, logging.LogRecord):  # Python 3.12+: a filter may return a replacement
            record = result
        if result:
            self.emit(record)
        return result

    def emit(self, record: logging.LogRecord) -> None:
        """Queue ``record`` as one line. Never blocks on the network and never raises."""
        if threading.get_ident() == self._worker_ident or _IN_CALLBACK.get() or record.name.startswith(_LOGGER_NAME):
            return
        try:
            line = self.format(record)
            if "\n" in line or "\r" in line:
                line = line.replace("\r", " ").replace("\n", " ")
            data = line.encode("utf-8", "backslashreplace") + b"\n"
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is counted, never raised
            self._dropped(_ENCODING, 1)
            return
        reason: str | None = None
        with self._lock:
            queue = self._queue
            if self._closed:
                reason = _SHUTDOWN
            elif len(queue) < self._max:
                queue.append(data)
                self._accepted += 1
            else:
                reason = _QUEUE_FULL
                if self._drop_oldest:
                    queue.popleft()
                    queue.append(data)
                    self._accepted += 1
                    self._finished += 1
                    if self._flush_waiters:
                        self._drained.notify_all()
        if reason is not None:
            self._dropped(reason, 1)
        if reason is None or (reason == _QUEUE_FULL and self._drop_oldest):  # something new was queued
            wake = self._wake
            if not wake.is_set():
                wake.set()

    def _dropped(self, reason: str, count: int) -> None:
        callback = self._on_drop
        if callback is None:
            return
        token = _IN_CALLBACK.set(True)
        try:
            callback(reason, count)
        except Exception:  # noqa: BLE001 - a failing counter must never reach the application
            pass
        finally:
            _IN_CALLBACK.reset(token)

    def _report(self, exc: BaseException) -> None:
        callback = self._on_error
        if callback is None:
            return
        with contextlib.suppress(Exception):
            callback(exc)

    # --- worker -----------------------------------------------------------------------------------
    def _run(self) -> None:
        self._worker_ident = threading.get_ident()
        # This thread's own context: nothing it does is recorded by the SDK.
        SUPPRESSED.set(True)
        try:
            while not self._abort.is_set() and time.monotonic() < self._deadline:
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001 - the worker must outlive its own bugs
                    self._lost(exc)
        finally:
            self._disconnect()

    def _step(self) -> None:
        if not self._pending and not self._queue:
            if self._stop.is_set():
                self._abort.set()  # everything was written: the worker is done
                return
            self._wake.wait(_IDLE_WAIT)
            self._wake.clear()
            return
        if self._sock is not None and not self._pending and _peer_closed(self._sock):
            self._lost(ConnectionResetError(f"Logstash at {_where(self.address)} closed the connection"))
            return
        if self._sock is None and not self._connect():
            return
        if self._pending or self._take():
            self._send()

    def _connect(self) -> bool:
        timeout = min(self._connect_timeout, max(self._deadline - time.monotonic(), 0.001))
        try:
            sock = socket.create_connection(self.address, timeout=timeout)
        except OSError as exc:
            self._failures += 1
            self._report(exc)
            self._backoff()
            return False
        for level, option in ((socket.SOL_SOCKET, socket.SO_KEEPALIVE), (socket.IPPROTO_TCP, socket.TCP_NODELAY)):
            with contextlib.suppress(OSError):
                sock.setsockopt(level, option, 1)
        with self._lock:
            if self._abort.is_set():  # close() gave up while we were connecting
                sock.close()
                return False
            self._sock = sock
        return True

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _lost(self, exc: BaseException) -> None:
        """The connection failed: report, close it, back off. Unwritten lines stay pending."""
        self._failures += 1
        self._report(exc)
        self._disconnect()
        self._backoff()

    def _backoff(self) -> None:
        bound = min(self._backoff_max, self._backoff_initial * 2.0 ** min(self._failures - 1, 64))
        delay = random.random() * bound  # full jitter
        if self._stop.is_set():  # closing: keep trying until the deadline, without spinning
            self._abort.wait(min(delay, max(self._deadline - time.monotonic(), 0.0)))
        else:
            self._stop.wait(delay)  # close() cuts the wait short for one last prompt attempt

    def _take(self) -> bool:
        """Move the next batch from the queue to ``_pending``; False if there was none."""
        with self._lock:
            if self._abort.is_set():
                return False
            queue, pending, size = self._queue, self._pending, 0
            while queue and len(pending) < _BATCH_LINES and (not pending or size + len(queue[0]) <= _BATCH_BYTES):
                line = queue.popleft()
                pending.append(line)
                size += len(line)
            return bool(pending)

    def _send(self) -> None:
        """Write ``_pending`` on the current connection, retiring each line once fully written."""
        sock = self._sock
        if sock is None:  # pragma: no cover - _step() connects first
            return
        with self._lock:
            lines = list(self._pending)
        ends = list(itertools.accumulate(len(line) for line in lines))
        data = memoryview(b"".join(lines))
        offset = done = 0
        last_progress = time.monotonic()
        while offset < len(data):
            remaining = self._deadline - time.monotonic()
            if self._abort.is_set() or remaining <= 0:
                return
            sock.settimeout(min(_IO_TIMEOUT, remaining))
            try:
                sent = sock.send(data[offset:])
            except TimeoutError:
                stalled = time.monotonic() - last_progress
                if stalled >= self._stall_timeout:
                    self._lost(TimeoutError(f"Logstash at {_where(self.address)} accepted nothing for {stalled:.0f} s"))
                    return
                continue
            except OSError as exc:
                self._lost(exc)  # lines not fully written stay pending and go whole on the next connection
                return
            offset += sent
            last_progress = time.monotonic()
            self._failures = 0
            finished = done
            while finished < len(ends) and ends[finished] <= offset:
                finished += 1
            if finished > done:
                with self._lock:
                    if self._abort.is_set():  # close() already counted them as dropped
                        return
                    count = finished - done
                    del self._pending[:count]
                    self._finished += count
                    self._written += count
                    self._drained.notify_all()
                done = finished

    # --- lifecycle --------------------------------------------------------------------------------
    @property
    def written(self) -> int:
        """Records fully handed to the operating system so far (not an acknowledgement from Logstash)."""
        return self._written

    def flush(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        """Wait until every record queued before the call was written or dropped.

        Returns True if that happened within ``timeout`` seconds (default :data:`DEFAULT_TIMEOUT`),
        False otherwise (for instance while Logstash is unreachable). "Written" means handed to
        the operating system; TCP gives no application-level acknowledgement.
        """
        timeout = DEFAULT_TIMEOUT if timeout is None else max(timeout, 0.0)
        with self._lock:
            target = self._accepted
            if self._finished >= target:
                return True
            if self._closed or threading.get_ident() == self._worker_ident:
                return False
            self._wake.set()
            self._flush_waiters += 1
            try:
                return self._drained.wait_for(lambda: self._finished >= target, timeout)
            finally:
                self._flush_waiters -= 1

    def close(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Write what is queued within ``timeout`` seconds, then stop the worker. Idempotent.

        Returns within the deadline even when Logstash is unreachable or accepts the connection
        but never reads. Records still unsent then are reported as ``("shutdown", count)``;
        :attr:`clean_shutdown` tells whether everything was written. Records logged afterwards
        are dropped with reason ``shutdown``.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._deadline = time.monotonic() + max(timeout, 0.0)
        try:
            self._stop.set()
            self._wake.set()
            worker = self._worker
            if worker is not threading.current_thread():
                worker.join(max(self._deadline - time.monotonic(), 0.0))
            stopped = not worker.is_alive()
            self._abort.set()
            with self._lock:
                left = len(self._queue) + len(self._pending)
                self._queue.clear()
                self._finished += left
                self._drained.notify_all()
            self.clean_shutdown = stopped and not left
            if left:
                self._dropped(_SHUTDOWN, left)
        finally:
            super().close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {_where(self.address)} ({logging.getLevelName(self.level)})>"


def _where(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer_closed(sock: socket.socket) -> bool:
    """True if the peer closed or reset the connection (Logstash never writes to us).

    Catching a clean close before writing keeps a batch from vanishing into a connection that is
    already gone: the first write after the peer's FIN still succeeds locally.
    """
    try:
        sock.settimeout(0.0)
        # Bytes Logstash should never send are read and discarded; the connection is alive.
        return any(not sock.recv(65536) for _ in range(16))
    except BlockingIOError:
        return False
    except OSError:
        return True
