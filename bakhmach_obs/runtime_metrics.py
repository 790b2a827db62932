"""Runtime metrics: disk and network I/O, open connections, threads, GC pauses, asyncio tasks and loop lag.

What prometheus_client's process collector does not give, collected when Prometheus scrapes (no
thread of its own):

* ``process_disk_io_bytes_total{disk_io_direction}`` and ``process_disk_operations_total{disk_io_direction}``
  from ``/proc/<pid>/io`` (``read_bytes``/``write_bytes``: bytes that reached or came from the block
  layer, page-cache hits excluded; ``syscr``/``syscw``: read and write system calls, sockets included);
* ``process_network_io_bytes_total{network_interface_name, network_io_direction}`` from
  ``/proc/<pid>/net/dev``: every interface of the process's network namespace, i.e. the
  container's (the host's without one), at most 64 interfaces;
* ``process_open_connections{network_transport}``: the process's sockets found in ``/proc/<pid>/fd``
  and matched by inode in ``/proc/<pid>/net/{tcp,tcp6,udp,udp6,unix}``: ``tcp`` counts connections
  (listening sockets excluded), ``udp`` and ``unix`` every socket;
* ``process_threads`` from ``/proc/<pid>/status`` (every thread, not only Python's);
* ``python_gc_pause_seconds{cpython_gc_generation}``: each collection timed by a ``gc.callbacks`` hook
  (two ``perf_counter()`` calls and a few list updates; the hook never takes a lock);
* ``python_asyncio_tasks`` and ``python_asyncio_event_loop_lag_seconds`` of a watched event loop: a
  probe re-schedules itself with ``loop.call_later(interval)`` and records how late it ran; the
  gauge shows the latest lag, or how overdue the next probe is when the loop is blocked right now.

**Elsewhere than Linux** the ``/proc`` families are absent (no error); GC and asyncio work anywhere.

**Multiprocess mode** (``PROMETHEUS_MULTIPROC_DIR``): each worker writes its GC pauses to its own
file in the directory (``histogram_<pid>-gc.db``) and its probe writes the asyncio gauges
(``livesum`` tasks, ``livemax`` lag). The ``/proc`` families are read by the process serving the
scrape through :class:`MultiprocessCollector`, for every live worker found in the directory's file
names: threads and connections are summed over live workers (a socket shared by workers counts
once), network I/O is read once (workers share the namespace), and each worker's disk I/O is stored
in ``counter_<pid>-<start>-io.db`` so that the totals keep what exited workers did (up to their last
scrape) and never go backwards.

Example:
    >>> import gc
    >>> from prometheus_client import CollectorRegistry
    >>> from bakhmach_obs import runtime_metrics
    >>> registry = CollectorRegistry()
    >>> handle = runtime_metrics.register(registry)
    >>> _ = gc.collect()
    >>> registry.get_sample_value("python_gc_pause_seconds_count", {"cpython_gc_generation": "2"}) >= 1
    True
    >>> handle.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import re
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_go_float

from . import conventions as c
from ._runtime import current
from .errors import ConfigurationError
from .metrics import is_multiprocess, metric_set

__all__ = ["MultiprocessCollector", "RuntimeMetrics", "register", "watch_loop"]

_MAX_INTERFACES = 64
floatToGoString: Callable[[float], str] = _untyped_go_float
_TCP_LISTEN = "0A"
#: File names of worker files in the multiprocess directory (prometheus_client's and our GC file).
_WORKER_FILE = re.compile(r"_(\d+)(?:-gc)?\.db$")


def _mmap() -> tuple[Any, Callable[..., str]]:
    """prometheus_client's multiprocess file class and key format (untyped upstream)."""
    from prometheus_client import mmap_dict

    return mmap_dict.MmapedDict, mmap_dict.mmap_key


def _report(exc: BaseException) -> None:
    current().report_error("runtime", exc)


# --- /proc readers (each returns None when the file cannot be read: not Linux, the process is gone, or
# /proc forbids it: another user's process, hidepid, a sandbox without /proc/<pid>/io) ---
def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _proc_io(proc: str, pid: int | str) -> dict[str, int] | None:
    text = _read(f"{proc}/{pid}/io")
    if text is None:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value:
            out[key] = int(value)
    return out


def _net_dev(proc: str, pid: int | str) -> list[tuple[str, int, int]] | None:
    text = _read(f"{proc}/{pid}/net/dev")
    if text is None:
        return None
    out = []
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) >= 9:
            out.append((name.strip(), int(fields[0]), int(fields[8])))
    return out[:_MAX_INTERFACES]


def _threads(proc: str, pid: int | str) -> int | None:
    text = _read(f"{proc}/{pid}/status")
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return None


def _socket_inodes(proc: str, pid: int | str) -> set[int] | None:
    base = f"{proc}/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return None
    inodes: set[int] = set()
    for name in names:
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:  # closed between listdir and readlink
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _connections(proc: str, pid: int | str, inodes: set[int]) -> dict[str, int]:
    """Count ``inodes`` by transport using the socket tables of ``pid``'s network namespace."""
    counts = {"tcp": 0, "udp": 0, "unix": 0}
    if not inodes:
        return counts
    for table, transport, inode_col in (
        ("tcp", "tcp", 9), ("tcp6", "tcp", 9), ("udp", "udp", 9), ("udp6", "udp", 9), ("unix", "unix", 6),
    ):  # fmt: skip
        text = _read(f"{proc}/{pid}/net/{table}")
        if text is None:
            continue
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) <= inode_col:
                continue
            try:
                inode = int(fields[inode_col])
            except ValueError:
                continue
            if inode in inodes:
                if transport == "tcp" and fields[3] == _TCP_LISTEN:
                    continue
                counts[transport] += 1
    return counts


def _start_ticks(proc: str, pid: int | str) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of ``stat``): an incarnation id."""
    text = _read(f"{proc}/{pid}/stat")
    if text is None:
        return None
    return int(text.rpartition(")")[2].split()[19])


# --- families -----------------------------------------------------------------------------------
def _io_families(io: dict[str, int]) -> Iterator[Metric]:
    for spec, keys in (
        (c.PROCESS_DISK_IO, ("read_bytes", "write_bytes")),
        (c.PROCESS_DISK_OPERATIONS, ("syscr", "syscw")),
    ):
        fam = CounterMetricFamily(spec.family, spec.help, labels=spec.labels)
        for direction, key in zip(c.DISK_IO_DIRECTIONS, keys, strict=True):
            fam.add_metric([direction], float(io.get(key, 0)))
        yield fam


def _net_family(interfaces: list[tuple[str, int, int]]) -> Metric:
    spec = c.PROCESS_NETWORK_IO
    fam = CounterMetricFamily(spec.family, spec.help, labels=spec.labels)
    receive, transmit = c.NETWORK_IO_DIRECTIONS
    for name, rx, tx in interfaces:
        fam.add_metric([name, receive], float(rx))
        fam.add_metric([name, transmit], float(tx))
    return fam


def _connections_family(counts: dict[str, int]) -> Metric:
    spec = c.PROCESS_OPEN_CONNECTIONS
    fam = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
    for transport, n in counts.items():
        fam.add_metric([transport], float(n))
    return fam


def _gauge(spec: c.MetricSpec, value: float) -> Metric:
    return GaugeMetricFamily(spec.name, spec.help, value=value)


# --- GC pauses ------------------------------------------------------------------------------------
class _GcRecorder:
    """The ``gc.callbacks`` hook. It takes no lock (a collection can start while any lock is held)."""

    def __init__(self) -> None:
        self.bounds = c.GC_PAUSE_BUCKETS
        self.counts = [[0] * (len(self.bounds) + 1) for _ in range(3)]
        self.sums = [0.0, 0.0, 0.0]
        self.failure: BaseException | None = None
        self._start = 0.0
        self._file: Any = None
        self._bucket_keys: list[list[str]] = []
        self._sum_keys: list[str] = []
        self._file_pid = 0  # the process whose GC pauses the file holds
        self.installed = False

    def install(self) -> None:
        if not self.installed:
            if is_multiprocess():
                self._open_file()
            gc.callbacks.append(self)
            self.installed = True

    def uninstall(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self)
        self.installed = False

    def _open_file(self) -> None:
        MmapedDict, mmap_key = _mmap()
        spec = c.GC_PAUSE
        path = os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], f"histogram_{os.getpid()}-gc.db")
        names = (c.LABEL_GC_GENERATION, "le")
        bounds = [floatToGoString(b) for b in (*self.bounds, float("inf"))]
        self._bucket_keys = [
            [mmap_key(spec.name, spec.name + "_bucket", list(names), [str(g), b], spec.help) for b in bounds]
            for g in range(3)
        ]
        self._sum_keys = [
            mmap_key(spec.name, spec.name + "_sum", [c.LABEL_GC_GENERATION], [str(g)], spec.help) for g in range(3)
        ]
        file = MmapedDict(path)
        # A recycled pid finds the file of an exited worker: continue from its values, since the
        # aggregate sums every file and must not go backwards (a false counter reset). A file this
        # process wrote itself (installed again) already holds what ``counts`` holds.
        inherited = self._file_pid != os.getpid()
        for g in range(3):  # every key exists before the hook runs: it only overwrites values in place
            counts = self.counts[g]
            for i, key in enumerate(self._bucket_keys[g]):
                if inherited:
                    counts[i] += int(file.read_value(key)[0])
                file.write_value(key, float(counts[i]), 0.0)
            if inherited:
                self.sums[g] += file.read_value(self._sum_keys[g])[0]
            file.write_value(self._sum_keys[g], self.sums[g], 0.0)
        self._file_pid = os.getpid()
        self._file = file

    def after_fork(self) -> None:
        """In a forked child: start from zero, in a file of the child's own."""
        self.counts = [[0] * (len(self.bounds) + 1) for _ in range(3)]
        self.sums = [0.0, 0.0, 0.0]
        self._file = None
        if self.installed and is_multiprocess():
            try:
                self._open_file()
            except OSError as exc:
                self.failure = exc

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        try:
            if phase == "start":
                self._start = time.perf_counter()
                return
            pause = time.perf_counter() - self._start
            gen = info["generation"]
            i = bisect_left(self.bounds, pause)
            counts = self.counts[gen]
            counts[i] += 1
            self.sums[gen] += pause
            file = self._file
            if file is not None:
                file.write_value(self._bucket_keys[gen][i], float(counts[i]), 0.0)
                file.write_value(self._sum_keys[gen], self.sums[gen], 0.0)
        except Exception as exc:  # noqa: BLE001 - reported at the next scrape (no metric lock may be taken here)
            self.failure = exc
            self._file = None

    def family(self) -> Metric:
        spec = c.GC_PAUSE
        fam = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
        edges = [floatToGoString(b) for b in (*self.bounds, float("inf"))]
        for gen in range(3):
            counts, total = list(self.counts[gen]), self.sums[gen]
            cumulative, acc = [], 0
            for edge, n in zip(edges, counts, strict=True):
                acc += n
                cumulative.append((edge, float(acc)))
            fam.add_metric([str(gen)], cumulative, total)
        return fam


_GC = _GcRecorder()
os.register_at_fork(after_in_child=_GC.after_fork)


# --- event loop probe -------------------------------------------------------------------------------
class _LoopProbe:
    """Re-schedules itself on the watched loop and records how late it ran (no thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, registry: CollectorRegistry) -> None:
        self.loop = loop
        self.interval = interval
        self.lag = 0.0
        self.due: float | None = None
        self.stopped = False
        self._handle: asyncio.TimerHandle | None = None
        self._gauges: tuple[Any, Any] | None = None
        if is_multiprocess():
            ms = metric_set(registry)
            self._gauges = (ms.get(c.ASYNCIO_TASKS), ms.get(c.EVENT_LOOP_LAG))
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._schedule()
        else:
            loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        if self.stopped:
            return
        try:
            self.due = self.loop.time() + self.interval
            self._handle = self.loop.call_later(self.interval, self._tick)
        except RuntimeError:  # the loop is closed
            self.stopped = True

    def _tick(self) -> None:
        try:
            due = self.due
            self.lag = max(self.loop.time() - due, 0.0) if due is not None else 0.0
            if self._gauges is not None:
                tasks, lag = self._gauges
                tasks.set(len(asyncio.all_tasks(self.loop)))
                lag.set(self.lag)
        except Exception as exc:  # noqa: BLE001
            _report(exc)
        self._schedule()

    def current_lag(self) -> float | None:
        """The latest lag, or how overdue the next probe is (the loop is blocked now); None if not running."""
        loop = self.loop
        if self.stopped or loop.is_closed() or not loop.is_running():
            return None
        due = self.due
        overdue = loop.time() - due if due is not None else 0.0
        return max(self.lag, overdue, 0.0)

    def tasks(self) -> int | None:
        loop = self.loop
        if self.stopped or loop.is_closed():
            return None
        return len(asyncio.all_tasks(loop))

    def stop(self) -> None:
        self.stopped = True
        handle = self._handle
        if handle is not None:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(handle.cancel)
        if self._gauges is not None:
            self._gauges[0].set(0)
            self._gauges[1].set(0)


# --- the collectors ---------------------------------------------------------------------------------
class RuntimeMetrics(Collector):
    """Runtime metrics of this process on one registry (returned by :func:`register`)."""

    def __init__(self, registry: CollectorRegistry, proc_root: str, interval: float) -> None:
        self.registry = registry
        self.proc_root = proc_root
        self.interval = interval
        self.multiprocess = is_multiprocess()
        self.probe: _LoopProbe | None = None
        self._lock = threading.Lock()
        self.linux = os.path.isfile(f"{proc_root}/self/io") or os.path.isfile(f"{proc_root}/self/status")

    def watch_loop(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Measure ``loop`` (default: the running one): its lag and unfinished tasks. Replaces the previous loop."""
        if loop is None:
            loop = asyncio.get_running_loop()
        with self._lock:
            if self.probe is not None:
                if self.probe.loop is loop and not self.probe.stopped:
                    return
                self.probe.stop()
            self.probe = _LoopProbe(loop, self.interval, self.registry)

    def close(self) -> None:
        """Stop the loop probe and unregister; the GC hook stays while another registry uses it."""
        with self._lock:
            if self.probe is not None:
                self.probe.stop()
                self.probe = None
        with _HANDLES_LOCK:
            if _HANDLES.get(self.registry) is self:
                del _HANDLES[self.registry]
            if not _HANDLES:
                _GC.uninstall()
        if not self.multiprocess:
            with contextlib.suppress(KeyError):
                self.registry.unregister(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        if _GC.failure is not None:
            failure, _GC.failure = _GC.failure, None
            _report(failure)
        yield _GC.family()
        try:
            yield from self._probe_families()
            if self.linux:
                yield from self._proc_families()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail on one collector
            _report(exc)

    def _probe_families(self) -> Iterator[Metric]:
        probe = self.probe
        if probe is None:
            return
        lag, tasks = probe.current_lag(), probe.tasks()
        if tasks is not None:
            yield _gauge(c.ASYNCIO_TASKS, float(tasks))
        if lag is not None:
            yield _gauge(c.EVENT_LOOP_LAG, lag)

    def _proc_families(self) -> Iterator[Metric]:
        proc, pid = self.proc_root, "self"
        io = _proc_io(proc, pid)
        if io is not None:
            yield from _io_families(io)
        interfaces = _net_dev(proc, pid)
        if interfaces is not None:
            yield _net_family(interfaces)
        inodes = _socket_inodes(proc, pid)
        if inodes is not None:
            yield _connections_family(_connections(proc, pid, inodes))
        threads = _threads(proc, pid)
        if threads is not None:
            yield _gauge(c.PROCESS_THREAD_COUNT, float(threads))


class MultiprocessCollector(Collector):
    """The ``/proc`` families of every live worker of a multiprocess directory, for the scraping process.

    Register it, before prometheus_client's ``MultiProcessCollector``, in the registry that serves
    the aggregate. Workers are the pids in the directory's file names that are alive and started
    before their files were last written (a recycled pid is not mistaken for a worker). Disk I/O is
    stored per worker in ``counter_<pid>-<start>-io.db`` files that ``MultiProcessCollector`` sums.

    Example:
        >>> import os, tempfile
        >>> from prometheus_client import CollectorRegistry
        >>> from prometheus_client.multiprocess import MultiProcessCollector
        >>> path = tempfile.mkdtemp()
        >>> registry = CollectorRegistry()
        >>> registry.register(MultiprocessCollector(path))
        >>> _ = MultiProcessCollector(registry, path=path)
        >>> registry.get_sample_value("process_threads")  # no worker yet
        0.0
        >>> os.rmdir(path)
    """

    def __init__(self, path: str, *, proc_root: str = "/proc", lock_timeout: float = 1.0) -> None:
        self.path = path
        self.proc_root = proc_root
        self.lock_timeout = lock_timeout

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def workers(self) -> dict[int, int]:
        """Live worker pids found in the directory, with their start time (clock ticks since boot)."""
        newest: dict[int, float] = {}
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return {}
        for entry in entries:
            match = _WORKER_FILE.search(entry.name)
            if match is None:
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            pid = int(match.group(1))
            newest[pid] = max(newest.get(pid, 0.0), st.st_mtime)
        boot = self._boot_time()
        tick = os.sysconf("SC_CLK_TCK")
        out: dict[int, int] = {}
        for pid, written in newest.items():
            start = _start_ticks(self.proc_root, pid)
            if start is None or boot is None:
                continue
            if boot + start / tick <= written + 2.0:  # 2 s: btime is whole seconds and drifts
                out[pid] = start
        return out

    def _boot_time(self) -> float | None:
        text = _read(f"{self.proc_root}/stat")
        if text is None:
            return None
        for line in text.splitlines():
            if line.startswith("btime"):
                return float(line.split()[1])
        return None

    def collect(self) -> Iterator[Metric]:
        try:
            if not os.path.isfile(f"{self.proc_root}/self/status"):
                return
            workers = self.workers()
            self._store_disk_io(workers)
            interfaces = _net_dev(self.proc_root, "self")
            if interfaces is not None:
                yield _net_family(interfaces)
            threads = 0
            inodes: set[int] = set()
            for pid in workers:
                threads += _threads(self.proc_root, pid) or 0
                inodes |= _socket_inodes(self.proc_root, pid) or set()
            yield _gauge(c.PROCESS_THREAD_COUNT, float(threads))
            yield _connections_family(_connections(self.proc_root, "self", inodes))
        except Exception as exc:  # noqa: BLE001
            _report(exc)

    def _store_disk_io(self, workers: dict[int, int]) -> None:
        """Write each live worker's ``/proc/<pid>/io`` into its own counter file (under a file lock)."""
        MmapedDict, mmap_key = _mmap()
        readings = {}
        for pid, start in workers.items():
            io = _proc_io(self.proc_root, pid)
            if io is not None:
                readings[(pid, start)] = io
        if not readings:
            return
        keys = []
        for spec, names in (
            (c.PROCESS_DISK_IO, ("read_bytes", "write_bytes")),
            (c.PROCESS_DISK_OPERATIONS, ("syscr", "syscw")),
        ):
            for direction, name in zip(c.DISK_IO_DIRECTIONS, names, strict=True):
                keys.append((mmap_key(spec.family, spec.name, list(spec.labels), [direction], spec.help), name))
        with _file_lock(os.path.join(self.path, "runtime-io.lock"), self.lock_timeout) as locked:
            if not locked:
                return  # another process is storing the same readings right now
            for (pid, start), io in readings.items():
                file = MmapedDict(os.path.join(self.path, f"counter_{pid}-{start}-io.db"))
                try:
                    for key, name in keys:
                        old = file.read_value(key)[0]
                        file.write_value(key, max(old, float(io.get(name, 0))), 0.0)
                finally:
                    file.close()


@contextlib.contextmanager
def _file_lock(path: str, timeout: float) -> Iterator[bool]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.005)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


_HANDLES: weakref.WeakKeyDictionary[CollectorRegistry, RuntimeMetrics] = weakref.WeakKeyDictionary()
_HANDLES_LOCK = threading.Lock()


def register(
    registry: CollectorRegistry | None = None,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    interval: float = 0.5,
    proc_root: str = "/proc",
) -> RuntimeMetrics:
    """Collect runtime metrics into ``registry`` (default: the configured one); idempotent per registry.

    ``loop`` is the event loop to watch (default: the running one, if called inside it; otherwise call
    :func:`watch_loop` from the application's startup). ``interval`` is the probe period in seconds.
    ``proc_root`` is where ``/proc`` is mounted (an empty directory behaves like a non-Linux system).

    Raises:
        ConfigurationError: ``interval`` is not a positive number of seconds.
    """
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval <= 60:
        raise ConfigurationError("interval", interval, "a number of seconds in (0, 60]")
    registry = current().registry if registry is None else registry
    with _HANDLES_LOCK:
        handle = _HANDLES.get(registry)
        if handle is None:
            handle = RuntimeMetrics(registry, proc_root, float(interval))
            if not handle.multiprocess:
                registry.register(handle)
            _HANDLES[registry] = handle
        _GC.install()
    if loop is None:
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
    if loop is not None:
        handle.watch_loop(loop)
    return handle


def watch_loop(loop: asyncio.AbstractEventLoop | None = None, registry: CollectorRegistry | None = None) -> None:
    """Watch ``loop`` (default: the running one) on the runtime metrics of ``registry`` (registering them).

    Call it from the application's startup (an ASGI lifespan handler, ``main()``), inside the loop.
    """
    register(registry, loop=loop if loop is not None else asyncio.get_running_loop())
