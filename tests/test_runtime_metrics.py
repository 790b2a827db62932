"""Runtime metrics against the real process: disk writes, sockets, threads, collections, a blocked loop."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from bakhmach_obs import conventions as c
from bakhmach_obs import runtime_metrics
from bakhmach_obs.testing import capture
from tests.conftest import need, need_binary

LINUX = os.path.isfile("/proc/self/io")
linux_only = pytest.mark.skipif(not LINUX, reason="reads /proc")


@pytest.fixture
def rm(registry):
    handle = runtime_metrics.register(registry)
    yield handle
    handle.close()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    v = registry.get_sample_value(name, labels)
    assert v is not None, (name, labels)
    return v


def telemetry_errors(registry: CollectorRegistry) -> float:
    return registry.get_sample_value(c.TELEMETRY_ERRORS.name, {"component": "runtime"}) or 0.0


# --- disk ---------------------------------------------------------------------------------------------
@linux_only
def test_disk_bytes_and_operations_follow_real_writes_and_reads(registry, rm, tmp_path):
    path = tmp_path / "blob"
    chunk = os.urandom(64 * 1024)
    chunks = 64  # 4 MiB
    write_bytes = value(registry, "process_disk_io_bytes_total", disk_io_direction="write")
    write_ops = value(registry, "process_disk_operations_total", disk_io_direction="write")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for _ in range(chunks):
            os.write(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    size = chunks * len(chunk)
    written = value(registry, "process_disk_io_bytes_total", disk_io_direction="write") - write_bytes
    need(written > 0, "this filesystem does not account write_bytes (tmpfs?)")
    assert size <= written < size * 1.5
    ops = value(registry, "process_disk_operations_total", disk_io_direction="write") - write_ops
    assert chunks <= ops < chunks + 100

    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache: the next read hits the disk
        read_bytes = value(registry, "process_disk_io_bytes_total", disk_io_direction="read")
        read_ops = value(registry, "process_disk_operations_total", disk_io_direction="read")
        got = 0
        while block := os.read(fd, 1 << 20):
            got += len(block)
    finally:
        os.close(fd)
    assert got == size
    assert value(registry, "process_disk_io_bytes_total", disk_io_direction="read") - read_bytes >= size
    assert value(registry, "process_disk_operations_total", disk_io_direction="read") - read_ops >= 5


# --- network ------------------------------------------------------------------------------------------
def tcp_pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    return listener, client, server


@linux_only
def test_network_bytes_of_the_loopback_interface(registry, rm):
    listener, client, server = tcp_pair()
    rx = value(registry, "process_network_io_bytes_total", network_interface_name="lo", network_io_direction="receive")
    tx = value(registry, "process_network_io_bytes_total", network_interface_name="lo", network_io_direction="transmit")
    payload = b"x" * (4 << 20)
    try:
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        got = 0
        while got < len(payload):
            got += len(server.recv(1 << 20))
        sender.join(10)
    finally:
        for s in (listener, client, server):
            s.close()
    # other processes use loopback too: at least our payload went through, in both directions
    d_rx = value(
        registry, "process_network_io_bytes_total", network_interface_name="lo", network_io_direction="receive"
    )
    d_tx = value(
        registry, "process_network_io_bytes_total", network_interface_name="lo", network_io_direction="transmit"
    )
    assert d_rx - rx >= len(payload)
    assert d_tx - tx >= len(payload)


# --- connections and threads ------------------------------------------------------------------------------
@linux_only
def test_open_connections_by_transport(registry, rm):
    def counts() -> dict[str, float]:
        return {t: value(registry, "process_open_connections", network_transport=t) for t in ("tcp", "udp", "unix")}

    before = counts()
    listener = socket.create_server(("127.0.0.1", 0))
    pairs = []
    for _ in range(20):
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        pairs.append((client, server))
    udp = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for u in udp:
        u.bind(("127.0.0.1", 0))  # an unbound UDP socket is in no table yet
    unix = socket.socketpair()
    try:
        during = counts()
    finally:
        for s in (listener, *[s for p in pairs for s in p], *udp, *unix):
            s.close()
    assert during["tcp"] - before["tcp"] == 40  # both ends of 20 connections; the listener is not one
    assert during["udp"] - before["udp"] == 3
    assert during["unix"] - before["unix"] == 2
    assert counts() == before


@linux_only
def test_scrape_cost_with_a_thousand_open_sockets(registry, rm):
    pairs = [socket.socketpair() for _ in range(250)]
    listener = socket.create_server(("127.0.0.1", 0))
    tcp = []
    for _ in range(250):
        client = socket.create_connection(listener.getsockname())
        tcp.append((client, listener.accept()[0]))
    try:
        assert len(os.listdir("/proc/self/fd")) >= 1000
        list(registry.collect())  # warm
        start = time.perf_counter()
        rounds = 5
        for _ in range(rounds):
            list(registry.collect())
        cost = (time.perf_counter() - start) / rounds
        assert value(registry, "process_open_connections", network_transport="tcp") >= 500
        assert value(registry, "process_open_connections", network_transport="unix") >= 500
    finally:
        for s in (listener, *[s for p in pairs + tcp for s in p]):
            s.close()
    print(f"\nruntime collect() with 1,000+ socket fds: {cost * 1000:.1f} ms")
    assert cost < 0.25


@linux_only
def test_thread_count_counts_real_threads(registry, rm):
    before = value(registry, "process_threads")
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait) for _ in range(5)]
    for t in threads:
        t.start()
    try:
        assert value(registry, "process_threads") - before == 5
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    # join() returns when Python is done with a thread; the kernel task may linger a moment longer
    deadline = time.monotonic() + 5
    while value(registry, "process_threads") != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert value(registry, "process_threads") == before


# --- garbage collector -----------------------------------------------------------------------------------
def make_cycles(n: int) -> None:
    for _ in range(n):
        a: list[object] = []
        b = [a]
        a.append(b)


def test_gc_pauses_are_counted_per_generation_and_timed(registry, rm):
    gc.disable()
    try:
        count = {g: value(registry, "python_gc_pause_seconds_count", cpython_gc_generation=str(g)) for g in range(3)}
        total = value(registry, "python_gc_pause_seconds_sum", cpython_gc_generation="2")
        for _ in range(3):
            gc.collect(2)
        gc.collect(0)
        gc.collect(1)
        after = {g: value(registry, "python_gc_pause_seconds_count", cpython_gc_generation=str(g)) for g in range(3)}
        assert {g: after[g] - count[g] for g in range(3)} == {0: 1, 1: 1, 2: 3}

        make_cycles(300_000)  # garbage the next collection has to trace and free
        total = value(registry, "python_gc_pause_seconds_sum", cpython_gc_generation="2")
        start = time.perf_counter()
        freed = gc.collect(2)
        outer = time.perf_counter() - start
    finally:
        gc.enable()
    assert freed >= 600_000
    pause = value(registry, "python_gc_pause_seconds_sum", cpython_gc_generation="2") - total
    assert 0.5 * outer <= pause <= outer
    # the pause landed in the first bucket at or above it
    bounds = c.GC_PAUSE_BUCKETS
    le = next(b for b in bounds if b >= pause) if pause <= bounds[-1] else float("inf")
    assert (
        registry.get_sample_value(
            "python_gc_pause_seconds_bucket",
            {"cpython_gc_generation": "2", "le": str(le) if le != float("inf") else "+Inf"},
        )
        >= 1
    )


def test_gc_hook_is_removed_when_the_last_registry_closes(registry, monkeypatch):
    import weakref

    # Registries configure() registered in earlier tests keep the hook; this one must be the last.
    was_installed = runtime_metrics._GC in gc.callbacks
    monkeypatch.setattr(runtime_metrics, "_HANDLES", weakref.WeakKeyDictionary())
    runtime_metrics._GC.uninstall()
    try:
        handle = runtime_metrics.register(registry)
        assert runtime_metrics._GC in gc.callbacks
        assert runtime_metrics.register(registry) is handle  # idempotent
        handle.close()
        assert runtime_metrics._GC not in gc.callbacks
        assert not [m for m in registry.collect() if m.name == c.GC_PAUSE.name]
    finally:
        if was_installed:
            runtime_metrics._GC.install()


# --- event loop -----------------------------------------------------------------------------------------
async def test_event_loop_lag_of_a_blocked_loop_and_task_count(registry):
    handle = runtime_metrics.register(registry, interval=0.02)  # inside the loop: it is watched
    try:
        await asyncio.sleep(0.1)
        assert value(registry, "python_asyncio_event_loop_lag_seconds") < 0.05

        gate = asyncio.Event()
        tasks = [asyncio.create_task(gate.wait()) for _ in range(10)]
        await asyncio.sleep(0)
        assert value(registry, "python_asyncio_tasks") == len(asyncio.all_tasks())
        assert value(registry, "python_asyncio_tasks") >= 11  # ours and the 10 waiting
        gate.set()
        await asyncio.gather(*tasks)

        # a scrape from another thread while the loop is blocked sees the block as it happens
        seen: list[float] = []

        def scrape_later() -> None:
            time.sleep(0.2)
            seen.append(value(registry, "python_asyncio_event_loop_lag_seconds"))

        scraper = threading.Thread(target=scrape_later)
        scraper.start()
        time.sleep(0.4)  # blocks the event loop
        scraper.join(5)
        assert 0.15 <= seen[0] <= 0.4

        await asyncio.sleep(0.001)  # the overdue probe runs first and records how late it was
        assert 0.3 <= value(registry, "python_asyncio_event_loop_lag_seconds") <= 0.6
        await asyncio.sleep(0.2)
        assert value(registry, "python_asyncio_event_loop_lag_seconds") < 0.1  # the loop is healthy again
    finally:
        handle.close()


def test_a_loop_that_stopped_reports_no_lag(registry, rm):
    loop = asyncio.new_event_loop()
    try:
        rm.watch_loop(loop)
        loop.run_until_complete(asyncio.sleep(0.05))
        assert registry.get_sample_value("python_asyncio_event_loop_lag_seconds") is None  # not running
        assert value(registry, "python_asyncio_tasks") == 0
    finally:
        loop.close()
    assert registry.get_sample_value("python_asyncio_tasks") is None


# --- elsewhere than Linux ----------------------------------------------------------------------------------
def test_without_proc_the_proc_families_are_absent_without_errors(registry, tmp_path):
    with capture(registry=registry):
        handle = runtime_metrics.register(registry, proc_root=str(tmp_path))
        try:
            names = {m.name for m in registry.collect()}
            mp = list(runtime_metrics.MultiprocessCollector(str(tmp_path), proc_root=str(tmp_path)).collect())
        finally:
            handle.close()
        assert c.GC_PAUSE.name in names
        for spec in (c.PROCESS_DISK_IO, c.PROCESS_DISK_OPERATIONS, c.PROCESS_NETWORK_IO):
            assert spec.family not in names
        assert c.PROCESS_OPEN_CONNECTIONS.name not in names and c.PROCESS_THREAD_COUNT.name not in names
        assert mp == []
        assert telemetry_errors(registry) == 0


def test_unreadable_proc_files_are_absent_without_errors(registry, tmp_path):
    """/proc that forbids a file (another user's process, hidepid, a sandbox) costs that family only."""
    me = tmp_path / "self"
    me.mkdir()
    (me / "status").write_text("Name:\tpython\nThreads:\t7\n")
    (me / "io").mkdir()  # open() fails with an OSError that is not FileNotFoundError (as EACCES would)
    (me / "fd").write_text("")  # not a directory
    with capture(registry=registry):
        handle = runtime_metrics.register(registry, proc_root=str(tmp_path))
        try:
            assert value(registry, "process_threads") == 7
            names = {m.name for m in registry.collect()}
        finally:
            handle.close()
        assert c.PROCESS_DISK_IO.family not in names and c.PROCESS_OPEN_CONNECTIONS.name not in names
        assert telemetry_errors(registry) == 0


GC_FILE_WORKER = textwrap.dedent("""
    import gc
    from bakhmach_obs import runtime_metrics

    gc.disable()
    exited = runtime_metrics._GcRecorder()  # a worker that ran under this pid before, and exited
    exited.install()
    for _ in range(3):
        gc.collect(2)
    exited.uninstall()
    recycled = runtime_metrics._GcRecorder()  # the new worker the pid was given to
    recycled.install()
    gc.collect(2)
    recycled.uninstall()
    recycled.install()  # installed again in the same process: its own file, nothing to inherit
    gc.collect(2)
    recycled.uninstall()
""")


def test_a_recycled_pid_continues_the_gc_file_of_the_exited_worker(tmp_path):
    """The aggregate sums every worker's file: a recycled pid must not reset what the exited worker counted."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", GC_FILE_WORKER], env=env, check=True, timeout=60)
    assert len(list(tmp_path.glob("histogram_*-gc.db"))) == 1
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert value(registry, "python_gc_pause_seconds_count", cpython_gc_generation="2") == 3 + 1 + 1
    assert value(registry, "python_gc_pause_seconds_bucket", cpython_gc_generation="2", le="+Inf") == 5
    assert value(registry, "python_gc_pause_seconds_count", cpython_gc_generation="0") == 0


def test_register_rejects_a_bad_interval():
    with pytest.raises(runtime_metrics.ConfigurationError):
        runtime_metrics.register(CollectorRegistry(), interval=0)


@linux_only
def test_exposition_passes_promtool(registry, rm):
    promtool = need_binary("promtool")
    body = generate_latest(registry)
    text = body.decode()
    for spec in (c.PROCESS_DISK_IO, c.PROCESS_NETWORK_IO, c.GC_PAUSE, c.PROCESS_THREAD_COUNT):
        assert f"# TYPE {spec.name} {spec.kind}" in text
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


# --- multiprocess ----------------------------------------------------------------------------------------
WORKER = textwrap.dedent("""
    import asyncio, gc, os, socket, sys, threading
    from prometheus_client import CollectorRegistry
    from bakhmach_obs import runtime_metrics

    write_bytes, collections, threads = (int(a) for a in sys.argv[1:4])
    path = os.path.join(sys.argv[4], f"blob-{os.getpid()}")

    async def main():
        runtime_metrics.register(CollectorRegistry(), interval=0.02)  # watches this loop
        with open(path, "wb") as f:
            f.write(b"x" * write_bytes)
            f.flush()
            os.fsync(f.fileno())
        for _ in range(collections):
            gc.collect(2)
        stop = threading.Event()
        for _ in range(threads):
            threading.Thread(target=stop.wait, daemon=True).start()
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        listener.close()
        gate = asyncio.Event()
        waiting = [asyncio.create_task(gate.wait()) for _ in range(4)]
        reader = asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # one more thread
        await asyncio.sleep(0.1)  # a few probes: they write the task and lag gauges
        print("ready", flush=True)
        await reader
        stop.set()

    asyncio.run(main())
""")


@linux_only
def test_multiprocess_workers_are_aggregated_and_counters_survive_exits(tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    specs = [(1 << 20, 2, 3), (2 << 20, 3, 5)]  # bytes written, gen-2 collections, extra threads
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *map(str, spec), str(tmp_path)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for spec in specs
    ]
    try:
        for w in workers:
            assert w.stdout is not None and w.stdout.readline().strip() == "ready"

        def scrape() -> CollectorRegistry:
            registry = CollectorRegistry()
            registry.register(runtime_metrics.MultiprocessCollector(str(metrics_dir)))
            MultiProcessCollector(registry, path=str(metrics_dir))
            return registry

        registry = scrape()
        pids = {w.pid for w in workers}
        assert set(runtime_metrics.MultiprocessCollector(str(metrics_dir)).workers()) == pids
        # the executor thread of run_in_executor is one more per worker
        expected_threads = sum(1 + 1 + t for _, _, t in specs)
        assert value(registry, "process_threads") == expected_threads
        assert value(registry, "process_open_connections", network_transport="tcp") == 4
        written = value(registry, "process_disk_io_bytes_total", disk_io_direction="write")
        assert written >= sum(b for b, _, _ in specs)
        assert value(registry, "python_gc_pause_seconds_count", cpython_gc_generation="2") >= sum(
            g for _, g, _ in specs
        )
        assert value(registry, "python_asyncio_tasks") == 2 * (4 + 1)  # livesum over workers
        assert 0 <= value(registry, "python_asyncio_event_loop_lag_seconds") < 1
        assert value(registry, "process_network_io_bytes_total", network_interface_name="lo",
                     network_io_direction="receive") > 0  # fmt: skip

        # the first worker exits; gunicorn's child_exit marks it dead
        first = workers[0]
        assert first.stdin is not None
        first.stdin.write("exit\n")
        first.stdin.flush()
        assert first.wait(timeout=30) == 0
        mark_process_dead(first.pid, str(metrics_dir))

        registry = scrape()
        assert set(runtime_metrics.MultiprocessCollector(str(metrics_dir)).workers()) == {workers[1].pid}
        assert value(registry, "process_threads") == 1 + 1 + specs[1][2]
        assert value(registry, "process_open_connections", network_transport="tcp") == 2
        assert value(registry, "process_disk_io_bytes_total", disk_io_direction="write") >= written  # kept
        assert value(registry, "python_asyncio_tasks") == 4 + 1
        text = generate_latest(registry).decode()
        assert "pid=" not in text
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(10)
            for stream in (w.stdin, w.stdout):
                if stream is not None:
                    stream.close()


@linux_only
def test_a_recycled_pid_is_not_mistaken_for_a_worker(tmp_path):
    mine = tmp_path / f"counter_{os.getpid()}.db"
    mine.write_bytes(b"")
    collector = runtime_metrics.MultiprocessCollector(str(tmp_path))
    assert collector.workers().keys() == {os.getpid()}
    hour_ago = time.time() - 3600  # written an hour ago: not by this process, started seconds ago
    os.utime(mine, (hour_ago, hour_ago))
    assert collector.workers() == {}
    (tmp_path / "gauge_livesum_999999999.db").write_bytes(b"")  # no such process
    assert collector.workers() == {}


# --- wiring: configure() and the ASGI middleware ------------------------------------------------


def test_configure_collects_runtime_metrics_and_the_asgi_middleware_watches_its_loop():
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    import bakhmach_obs
    from bakhmach_obs.asgi import ObservabilityMiddleware

    def names(registry):
        return {m.name for m in registry.collect()}

    registry = CollectorRegistry()
    bakhmach_obs.configure(service_name="t", registry=registry, log_format="none", tracing_enabled=False)
    assert c.PROCESS_THREAD_COUNT.name in names(registry)
    assert c.EVENT_LOOP_LAG.name not in names(registry)  # no loop is watched yet

    async def hello(request):
        await asyncio.sleep(0.3)  # the probe (0.5 s period) ticks at least once while this runs
        return PlainTextResponse("ok")

    app = ObservabilityMiddleware(Starlette(routes=[Route("/", hello)]))

    async def call():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            assert (await client.get("/")).text == "ok"
            return names(registry)

    seen = asyncio.run(call())
    assert {c.EVENT_LOOP_LAG.name, c.ASYNCIO_TASKS.name} <= seen
    first = app._loop_watched[1]
    seen = asyncio.run(call())  # a new serving loop (a restarted server): the probe follows it
    assert {c.EVENT_LOOP_LAG.name, c.ASYNCIO_TASKS.name} <= seen
    assert app._loop_watched[1] is not first

    off = CollectorRegistry()
    bakhmach_obs.configure(
        service_name="t", registry=off, log_format="none", tracing_enabled=False, runtime_metrics=False
    )
    assert c.PROCESS_THREAD_COUNT.name not in names(off)
